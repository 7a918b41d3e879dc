"""index-vad: one streaming pass over vad_results.jsonl into a per-file and a per-tar Parquet index.

Blocks of whole lines are parsed and repaired by `ups.vad_parse` (rules and counters there),
keys normalised with `ups.keys.normalize_key`, and each block's rows are spilled to one Arrow IPC
file per bucket of 128 tars. A second pass reads one bucket at a time, sorts it by (tar, key),
drops duplicate keys and appends it to `files.parquet`. Memory therefore stays bounded by a
block plus one bucket, and the output does not depend on the line order of the input.

Duplicate rule: several lines with the same (tar, normalised key) keep the one with the most
speech, then the longest duration, then the smallest raw key, then the earliest first segment;
the others are counted as `duplicate_key_dropped`.

The stage runs in about a minute on the full 3 GB file, so it is not split into resumable units:
its output directory is built in `<out>.partial` and swapped in at the end; a killed run leaves
no output that a rerun trusts.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ups.atomic import atomic_dir
from ups.config import IndexVadConfig
from ups.key_batch import normalize_keys
from ups.progress import bar
from ups.report import Skips, write_report
from ups.vad_parse import parse_block, repair_segments

log = logging.getLogger(__name__)

BUCKET_SHIFT = 7  # 128 tars per spill bucket
DROP_REASONS = ("malformed_json", "bad_schema", "bad_tar_number", "bad_duration", "bad_key",
                "duplicate_key_dropped")

FILES_SCHEMA = pa.schema([
    ("tar", pa.int32()), ("key", pa.string()), ("raw_key", pa.string()),
    ("duration_s", pa.float64()), ("speech_s", pa.float64()),
    ("seg_start_s", pa.list_(pa.float64())), ("seg_end_s", pa.list_(pa.float64())),
])
TARS_SCHEMA = pa.schema([
    ("tar", pa.int32()), ("n_files", pa.int64()), ("duration_s", pa.float64()),
    ("speech_s", pa.float64()), ("density", pa.float64()),
])


def iter_blocks(path: Path, block_bytes: int):
    """Yield (block of whole lines, bytes read) from `path`; the last line may lack a newline."""
    rest = b""
    with open(path, "rb") as fh:
        while True:
            chunk = fh.read(block_bytes)
            if not chunk:
                if rest:
                    yield rest, 0
                return
            data = rest + chunk if rest else chunk
            cut = data.rfind(b"\n")
            if cut < 0:
                rest = data
                yield b"", len(chunk)
                continue
            rest = data[cut + 1:]
            yield data[:cut + 1], len(chunk)


def block_table(block: bytes, sample_rate: int, counts: Counter[str],
                examples: dict[str, list[str]]) -> tuple[pa.Table, int, int]:
    """Parse, repair and normalise one block; returns (rows, lines seen, lines on the fast path)."""
    pb = parse_block(block, counts, examples)
    seg = repair_segments(pb.seg_count, pb.seg_start, pb.seg_end, pb.duration_s, sample_rate, counts)
    offsets = np.zeros(len(seg.count) + 1, dtype=np.int32)
    np.cumsum(seg.count, out=offsets[1:])
    off = pa.array(offsets)
    table = pa.table({
        "tar": pa.array(pb.tar, pa.int32()),
        "key": pa.array(normalize_keys(pb.raw_key), pa.string()),
        "raw_key": pa.array(pb.raw_key, pa.string()),
        "duration_s": pa.array(pb.duration_s),
        "speech_s": pa.array(seg.speech_s),
        "seg_start_s": pa.ListArray.from_arrays(off, pa.array(seg.start_s)),
        "seg_end_s": pa.ListArray.from_arrays(off, pa.array(seg.end_s)),
    }, schema=FILES_SCHEMA)
    return table, pb.n_lines, pb.n_fast


def sort_and_dedupe(table: pa.Table, counts: Counter[str]) -> pa.Table:
    """Canonical order (tar, key) and one row per (tar, key) by the module's duplicate rule."""
    first = pc.list_element(pc.if_else(pc.greater(pc.list_value_length(table["seg_start_s"]), 0),
                                       table["seg_start_s"], pa.scalar([-1.0], pa.list_(pa.float64()))),
                            0)
    t = table.append_column("_first", first)
    idx = pc.sort_indices(t, sort_keys=[("tar", "ascending"), ("key", "ascending"),
                                        ("speech_s", "descending"), ("duration_s", "descending"),
                                        ("raw_key", "ascending"), ("_first", "ascending")])
    t = t.take(idx).drop_columns(["_first"])
    if len(t) < 2:
        return t
    tar = t["tar"].to_numpy()
    key = np.asarray(t["key"].to_pylist(), dtype=object)
    dup = np.zeros(len(t), dtype=bool)
    dup[1:] = (tar[1:] == tar[:-1]) & (key[1:] == key[:-1])
    if dup.any():
        counts["duplicate_key_dropped"] += int(dup.sum())
        t = t.filter(pa.array(~dup))
    return t


def tar_stats(files: pa.Table) -> pa.Table:
    g = files.group_by("tar").aggregate([("key", "count"), ("duration_s", "sum"), ("speech_s", "sum")])
    g = g.rename_columns(["tar", "n_files", "duration_s", "speech_s"]) if g.column_names[0] == "tar" \
        else g.select(["tar", "key_count", "duration_s_sum", "speech_s_sum"]).rename_columns(
            ["tar", "n_files", "duration_s", "speech_s"])
    density = pc.divide(g["speech_s"], g["duration_s"])
    return pa.table([g["tar"].cast(pa.int32()), g["n_files"].cast(pa.int64()), g["duration_s"],
                     g["speech_s"], density], schema=TARS_SCHEMA)


def run(cfg: IndexVadConfig, *, vad_jsonl: Path, out_dir: Path) -> dict:
    t0 = time.perf_counter()
    vad_jsonl, out_dir = Path(vad_jsonl), Path(out_dir)
    size = vad_jsonl.stat().st_size
    log.info("index-vad: %s (%.1f MB) -> %s", vad_jsonl, size / 1e6, out_dir)
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    n_lines = n_fast = 0
    with atomic_dir(out_dir) as tmp:
        spill = tmp / "_spill"
        spill.mkdir()
        writers: dict[int, ipc.RecordBatchStreamWriter] = {}
        sinks = {}
        with bar(desc="index-vad", unit="B", unit_scale=True, total=size) as pbar:
            for block, n_read in iter_blocks(vad_jsonl, cfg.block_mb * 2**20):
                if block:
                    table, nl, nf = block_table(block, cfg.vad_sample_rate, counts, examples)
                    n_lines += nl
                    n_fast += nf
                    buckets = pc.shift_right(table["tar"], BUCKET_SHIFT).to_numpy()
                    for b in np.unique(buckets):
                        part = table.filter(pa.array(buckets == b))
                        if b not in writers:
                            sinks[b] = pa.OSFile(str(spill / f"{int(b):06d}.arrow"), "wb")
                            writers[b] = ipc.new_stream(sinks[b], FILES_SCHEMA)
                        writers[b].write_table(part)
                pbar.update(n_read)
        for b in writers:
            writers[b].close()
            sinks[b].close()
        tar_parts = []
        n_files = 0
        with pq.ParquetWriter(tmp / "files.parquet", FILES_SCHEMA) as out:
            for b in bar(sorted(writers), desc="index-vad sort", unit="bucket"):
                path = spill / f"{int(b):06d}.arrow"
                with pa.memory_map(str(path)) as src:
                    table = ipc.open_stream(src).read_all()
                table = sort_and_dedupe(table, counts)
                path.unlink()
                out.write_table(table)
                n_files += len(table)
                tar_parts.append(tar_stats(table))
        spill.rmdir()
        tars = pa.concat_tables(tar_parts) if tar_parts else TARS_SCHEMA.empty_table()
        pq.write_table(tars, tmp / "tars.parquet")
        skips = Skips("index-vad")
        repairs = {}
        for reason, n in sorted(counts.items()):
            if reason in DROP_REASONS:
                skips.add(reason, n=n)
                skips.examples[reason] = examples.get(reason, [])[:5]
            else:
                repairs[reason] = n
        elapsed = time.perf_counter() - t0
        duration_s = float(pc.sum(tars["duration_s"]).as_py() or 0.0)
        speech_s = float(pc.sum(tars["speech_s"]).as_py() or 0.0)
        write_report(tmp / "report.json", stage="index-vad", config=cfg, skips=skips,
                     input_bytes=size, n_lines=n_lines, n_lines_fast_path=n_fast,
                     n_files=n_files, n_tars=len(tars), duration_h=duration_s / 3600,
                     speech_h=speech_s / 3600, repairs=repairs,
                     elapsed_s=round(elapsed, 3), mb_per_s=round(size / 1e6 / max(elapsed, 1e-9), 1))
    skips.log_summary()
    log.info("index-vad: %d files in %d tars, %.1f h audio, %.1f h speech, %.1f s",
             n_files, len(tars), duration_s / 3600, speech_s / 3600, elapsed)
    return {"n_files": n_files, "n_tars": len(tars), "elapsed_s": elapsed}
