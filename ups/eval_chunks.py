"""The chunks evaluate measures on: what the shards hold, which file speaks which language,
seeded subsets, and batches of equal length as the trainer feeds them.

A shard's `json` members say each chunk's file, language and length, so the chunks are listed
without decoding any PCM. A batch holds chunks of one length only (no padding changes a frame),
and its audio is scaled exactly as the trainer's (`to_input`).
"""

from __future__ import annotations

import tarfile
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ups.skips import Skips
from ups.train_data import list_shards, read_shard

MODELS = ("init", "continued")  # the two encoders every measurement compares, in report order


def scan_shards(split_dir: Path, skips: Skips) -> list[dict[str, Any]]:
    """The `json` metadata of every sample of every shard of a split (PCM not decoded)."""
    rows: list[dict[str, Any]] = []
    for shard in list_shards(split_dir):
        try:
            with tarfile.open(shard, "r|") as tf:
                for member in tf:
                    if not member.isfile() or not member.name.endswith(".json"):
                        continue
                    fh = tf.extractfile(member)
                    try:
                        meta: Any = orjson.loads(fh.read()) if fh is not None else {}
                        row = {"chunk_id": int(meta["chunk_id"]), "tar": int(meta["tar"]),
                               "key": str(meta["key"]), "language": str(meta.get("language", "")),
                               "n_samples": int(meta["n_samples"]), "shard": shard}
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        skips.add("bad_metadata", f"{shard.name}:{member.name}")
                        continue
                    rows.append(row)
        except (tarfile.TarError, OSError, EOFError) as exc:
            skips.add("bad_shard", f"{shard.name}: {exc}")
    return rows


def read_lid(path: Path) -> dict[tuple[int, str], tuple[str, str]]:
    """(tar, key) -> (language, lid_split) from lid.parquet (the probe uses the language only)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["tar", "key", "language", "lid_split"]).to_pydict()
    return {(int(a), k): (lang, s) for a, k, lang, s in
            zip(t["tar"], t["key"], t["language"], t["lid_split"], strict=True)}


def pick(rows: list[dict[str, Any]], limit: int, seed: int, salt: int) -> list[dict[str, Any]]:
    """At most `limit` rows (0 = all), drawn without replacement by (seed, salt), in input order."""
    if limit == 0 or len(rows) <= limit:
        return list(rows)
    idx = np.sort(np.random.default_rng([seed, salt]).choice(len(rows), limit, replace=False))
    return [rows[i] for i in idx]


def iter_batches(rows: list[dict[str, Any]], batch_size: int, skips: Skips
                 ) -> Iterator[list[tuple[dict[str, Any], np.ndarray]]]:
    """Batches of (row, int16 pcm) of equal length, shard by shard (one shard's PCM in memory)."""
    by_shard: dict[Path, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_shard[r["shard"]][r["chunk_id"]] = r
    counts: dict[str, int] = defaultdict(int)
    for shard in sorted(by_shard):
        wanted = by_shard[shard]
        by_len: dict[int, list[tuple[dict[str, Any], np.ndarray]]] = defaultdict(list)
        for chunk_id, pcm in read_shard(shard, counts):  # type: ignore[arg-type]
            if chunk_id in wanted:
                by_len[len(pcm)].append((wanted[chunk_id], pcm))
        for _, items in sorted(by_len.items()):
            for s in range(0, len(items), batch_size):
                yield items[s:s + batch_size]
    for reason, n in counts.items():
        skips.add(reason, n=n)


def to_input(pcms: list[np.ndarray], normalize: bool) -> np.ndarray:
    """int16 PCM -> float32 batch exactly as the trainer feeds it (/ 32768, optional per-chunk norm)."""
    x = np.stack(pcms).astype(np.float32) / 32768.0
    if normalize:
        x = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + 1e-7)
    return x
