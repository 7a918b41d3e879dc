"""Synthetic VAD/LID indices whose per-language hours follow a given table (written directly in
index-vad's and index-lang's schemas, so select can run at a scale the JSONL path would make slow)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ups.lid_table import LID_SCHEMA
from ups.vad_table import FILES_SCHEMA, TARS_SCHEMA


def write_indices(root: Path, hours: dict[str, float], *, file_s: float = 600.0,
                  files_per_tar: int = 40, seed: int = 0) -> Path:
    """`root/vad/{files,tars}.parquet` and `root/lang/lid.parquet`: language l gets files of
    `file_s` seconds (the last one shorter) summing to hours[l] (at least one 10 s file), all
    speech; files are spread over tars in a seeded random order. Returns root."""
    langs, durs = [], []
    for lang, h in sorted(hours.items()):
        total = max(10.0, round(h * 3600.0 / 10.0) * 10.0)
        n_full = int(total // file_s)
        parts = [file_s] * n_full + ([total - n_full * file_s] if total - n_full * file_s > 0 else [])
        langs += [lang] * len(parts)
        durs += parts
    order = np.random.default_rng(seed).permutation(len(durs))
    tar = np.empty(len(durs), dtype=np.int32)
    tar[order] = np.arange(len(durs)) // files_per_tar + 1
    return write_files(root, [(int(t), lang, d) for t, lang, d in zip(tar, langs, durs, strict=True)])


def write_files(root: Path, layout: list[tuple[int, str, float]]) -> Path:
    """The three indices for files given as (tar, language, duration_s), all speech; keys
    `item<i>/<language>_<i>` by position in `layout`. Returns root."""
    tar = np.array([t for t, _, _ in layout], dtype=np.int32)
    langs = [lang for _, lang, _ in layout]
    durs = [d for _, _, d in layout]
    keys = [f"item{i}/{langs[i]}_{i}" for i in range(len(durs))]
    rows = sorted(range(len(durs)), key=lambda i: (int(tar[i]), keys[i]))
    d = np.array([durs[i] for i in rows])
    t = tar[rows]
    k = [keys[i] for i in rows]
    files = pa.table({"tar": t, "key": k, "raw_key": k, "duration_s": d, "speech_s": d,
                      "seg_start_s": [[0.0] for _ in rows], "seg_end_s": [[float(x)] for x in d]},
                     schema=FILES_SCHEMA)
    u, inv = np.unique(t, return_inverse=True)
    n = np.bincount(inv)
    dur = np.bincount(inv, weights=d)
    tars = pa.table({"tar": u.astype(np.int32), "n_files": n.astype(np.int64), "duration_s": dur,
                     "speech_s": dur, "density": np.ones(len(u))}, schema=TARS_SCHEMA)
    lid = pa.table({"tar": t, "key": k, "raw_path": [f"/data/{x}.mp3" for x in k],
                    "language": [langs[i] for i in rows], "lid_split": ["train"] * len(rows)},
                   schema=LID_SCHEMA)
    (root / "vad").mkdir(parents=True, exist_ok=True)
    (root / "lang").mkdir(parents=True, exist_ok=True)
    pq.write_table(files, root / "vad" / "files.parquet")
    pq.write_table(tars, root / "vad" / "tars.parquet")
    pq.write_table(lid, root / "lang" / "lid.parquet")
    return root
