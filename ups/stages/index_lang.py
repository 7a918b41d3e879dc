"""index-lang: lang_id_results.jsonl -> Parquet keyed by (tar, normalised key) + stratified LID split.

The file is read in 8 MiB runs of lines; `ups.lid_table` parses them (bad lines counted by
reason), keys them as index-vad does, resolves duplicates and draws the split; this stage writes
`lid.parquet` and the report.

`lid_split` is an 80/20 (index_lang.test_fraction) split by file, stratified by predicted label
and seeded with index_lang.seed (`ups.lid_table.stratified_split`). This mirrors the challenge
baseline's stratified 80/20 split (seed 42). Join coverage against the VAD index is reported by
`select`, which reads both indices.
"""

from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ups.atomic import atomic_dir
from ups.config import IndexLangConfig
from ups.lid_table import LID_SCHEMA, build_index, parse_lines, stratified_split
from ups.progress import bar
from ups.skips import Skips
from ups.stage_report import write_report

log = logging.getLogger(__name__)


def run(cfg: IndexLangConfig, *, lid_jsonl: Path, out_dir: Path) -> dict:
    """Read, parse, index and split every line; write lid.parquet and report.json."""
    lid_jsonl, out_dir = Path(lid_jsonl), Path(out_dir)
    log.info("index-lang: %s -> %s", lid_jsonl, out_dir)
    skips = Skips("index-lang")
    tars: list[int] = []
    paths: list[str] = []
    preds: list[str] = []
    size = lid_jsonl.stat().st_size
    with open(lid_jsonl, "rb") as fh, bar(desc="index-lang", unit="B", unit_scale=True,
                                          total=size) as pbar:
        while True:
            lines = fh.readlines(8 << 20)
            if not lines:
                break
            a, b, c = parse_lines(lines, skips)
            tars += a
            paths += b
            preds += c
            pbar.update(sum(map(len, lines)))
    table = build_index(tars, paths, preds, skips)
    labels = np.asarray(table["language"].to_pylist(), dtype=object)
    split = stratified_split(labels, cfg.test_fraction, cfg.seed)
    table = table.append_column("lid_split", pa.array(split.tolist(), pa.string()))
    table = table.cast(LID_SCHEMA)
    per_lang = Counter(labels.tolist())
    with atomic_dir(out_dir) as tmp:
        pq.write_table(table, tmp / "lid.parquet")
        write_report(tmp / "report.json", stage="index-lang", config=cfg, skips=skips,
                     input_bytes=size, n_files=len(table),
                     n_test=int((split == "test").sum()), files_per_language=dict(per_lang))
    skips.log_summary()
    log.info("index-lang: %d files, %d labels", len(table), len(per_lang))
    return {"n_files": len(table)}
