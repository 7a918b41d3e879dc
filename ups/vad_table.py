"""The per-file VAD index as Arrow tables: its schema, a block of JSONL lines made rows, the
canonical order with the duplicate rule, and the per-tar totals. Pure functions.

A block's lines are parsed and repaired by `ups.vad_parse` (rules and counters there) and keys
normalised with `ups.keys.normalize_key` (in Arrow; Python only for keys it can change).
Duplicate rule: several lines with the same (tar, normalised key) keep the one with the most
speech, then the longest duration, then the smallest raw key, then the earliest first segment;
the others are counted as `duplicate_key_dropped`.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ups.key_batch import normalize_keys_arrow
from ups.vad_parse import parse_block, repair_segments

# counted reasons that drop a line (the others count repairs)
DROP_REASONS = ("malformed_json", "bad_schema", "bad_tar_number", "bad_duration", "bad_key",
                "duplicate_key_dropped")

FILES_SCHEMA = pa.schema([
    ("tar", pa.int32()), ("key", pa.string()), ("raw_key", pa.string()),
    ("duration_s", pa.float64()), ("speech_s", pa.float64()),
    ("seg_start_s", pa.list_(pa.float64())), ("seg_end_s", pa.list_(pa.float64())),
])
# Segment floats barely compress (random low bits), so only the strings are compressed; no
# dictionaries (keys are unique): a third of the former write time for +30 % file size.
PARQUET_OPTIONS = {"use_dictionary": False,
                   "compression": {"tar": "snappy", "key": "snappy", "raw_key": "snappy",
                                   "duration_s": "none", "speech_s": "none",
                                   "seg_start_s": "none", "seg_end_s": "none"}}
TARS_SCHEMA = pa.schema([
    ("tar", pa.int32()), ("n_files", pa.int64()), ("duration_s", pa.float64()),
    ("speech_s", pa.float64()), ("density", pa.float64()),
])


def block_table(block: bytes | memoryview, sample_rate: int, counts: Counter[str],
                examples: dict[str, list[str]]) -> tuple[pa.Table, int]:
    """Parse, repair and normalise one block; returns (rows, non-blank lines seen)."""
    pb = parse_block(block, counts, examples)
    seg = repair_segments(pb.seg_count, pb.seg_start, pb.seg_end, pb.duration_s, sample_rate, counts)
    offsets = np.zeros(len(seg.count) + 1, dtype=np.int32)
    np.cumsum(seg.count, out=offsets[1:])
    off = pa.array(offsets)
    table = pa.table({
        "tar": pa.array(pb.tar, pa.int32()),
        "key": normalize_keys_arrow(pb.keys),
        "raw_key": pb.keys,
        "duration_s": pa.array(pb.duration_s),
        "speech_s": pa.array(seg.speech_s),
        "seg_start_s": pa.ListArray.from_arrays(off, pa.array(seg.start_s)),
        "seg_end_s": pa.ListArray.from_arrays(off, pa.array(seg.end_s)),
    }, schema=FILES_SCHEMA)
    return table, pb.n_lines


def _adjacent_dups(t: pa.Table) -> np.ndarray:
    """Row i (i >= 1) repeats row i-1's (tar, key); `t` sorted by (tar, key)."""
    dup = np.zeros(len(t), dtype=bool)
    if len(t) >= 2:
        n = len(t)
        tar, key = t["tar"].combine_chunks(), t["key"].combine_chunks()
        same = pc.and_(pc.equal(tar.slice(1), tar.slice(0, n - 1)),
                       pc.equal(key.slice(1), key.slice(0, n - 1)))
        dup[1:] = same.to_numpy(zero_copy_only=False)
    return dup


def sort_and_dedupe(table: pa.Table, counts: Counter[str]) -> pa.Table:
    """Canonical order (tar, key) and one row per (tar, key) by the module's duplicate rule."""
    t = table.take(pc.sort_indices(table, sort_keys=[("tar", "ascending"), ("key", "ascending")]))
    if not _adjacent_dups(t).any():
        return t  # (tar, key) unique: the order is already canonical
    first = pc.list_element(pc.if_else(pc.greater(pc.list_value_length(table["seg_start_s"]), 0),
                                       table["seg_start_s"], pa.scalar([-1.0], pa.list_(pa.float64()))),
                            0)
    t = table.append_column("_first", first)
    idx = pc.sort_indices(t, sort_keys=[("tar", "ascending"), ("key", "ascending"),
                                        ("speech_s", "descending"), ("duration_s", "descending"),
                                        ("raw_key", "ascending"), ("_first", "ascending")])
    t = t.take(idx).drop_columns(["_first"])
    dup = _adjacent_dups(t)
    counts["duplicate_key_dropped"] += int(dup.sum())
    return t.filter(pa.array(~dup))


def tar_stats(files: pa.Table) -> pa.Table:
    g = files.group_by("tar").aggregate([("key", "count"), ("duration_s", "sum"), ("speech_s", "sum")])
    g = g.rename_columns(["tar", "n_files", "duration_s", "speech_s"]) if g.column_names[0] == "tar" \
        else g.select(["tar", "key_count", "duration_s_sum", "speech_s_sum"]).rename_columns(
            ["tar", "n_files", "duration_s", "speech_s"])
    density = pc.divide(g["speech_s"], g["duration_s"])
    return pa.table([g["tar"].cast(pa.int32()), g["n_files"].cast(pa.int64()), g["duration_s"],
                     g["speech_s"], density], schema=TARS_SCHEMA)
