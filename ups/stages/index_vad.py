"""index-vad: one streaming pass over vad_results.jsonl into a per-file and a per-tar Parquet index.

Blocks of whole lines are made rows (`ups.vad_table.block_table`: parsed and repaired by
`ups.vad_parse`, keys normalised), and each block's rows are ordered by tar and spilled to one
Arrow IPC file, one record batch per bucket of 128 tars. A second pass reads one bucket's batches
at a time, sorts them by (tar, key), drops duplicate keys (`ups.vad_table.sort_and_dedupe`, the
rule there) and appends them to `files.parquet` (one row group per bucket). Memory therefore
stays bounded by a block plus one bucket, and the output does not depend on the line order of
the input.

The stage runs in about a minute on the full 3 GB file, so it is not split into resumable units:
its output directory is built in `<out>.partial` and swapped in at the end; a killed run leaves
no output that a rerun trusts. `run` is three steps: `spill`, `merge`, `report`.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from ups.atomic import atomic_dir
from ups.config import IndexVadConfig
from ups.progress import bar
from ups.skips import Skips
from ups.stage_report import write_report
from ups.vad_table import (
    DROP_REASONS,
    FILES_SCHEMA,
    PARQUET_OPTIONS,
    TARS_SCHEMA,
    block_table,
    sort_and_dedupe,
    tar_stats,
)

log = logging.getLogger(__name__)

BUCKET_SHIFT = 7  # 128 tars per spill bucket


def iter_blocks(path: Path, block_bytes: int):
    """Yield (block of whole lines, bytes read) from `path`; the last line may lack a newline.

    Reads `block_bytes` at a time into one reused buffer (no fresh 16 MiB allocation, and so no
    page faults, per block): a block is a memoryview that the next iteration overwrites."""
    buf = bytearray(2 * block_bytes)
    carry = 0  # bytes of an unfinished line at the start of `buf`
    with open(path, "rb", buffering=0) as fh:
        while True:
            if carry + block_bytes > len(buf):  # a line longer than a block: grow
                grown = bytearray(2 * (carry + block_bytes))
                grown[:carry] = memoryview(buf)[:carry]
                buf = grown
            mv = memoryview(buf)
            n = 0
            while n < block_bytes:  # a raw read may be short
                got = fh.readinto(mv[carry + n:carry + block_bytes])
                if not got:
                    break
                n += got
            if not n:
                if carry:
                    yield mv[:carry], 0
                return
            end = carry + n
            cut = buf.rfind(b"\n", carry, end)
            if cut < 0:
                carry = end
                yield b"", n
                continue
            yield mv[:cut + 1], n
            rest = bytes(mv[cut + 1:end])  # the unfinished last line (short)
            mv[:len(rest)] = rest
            carry = len(rest)


def run(cfg: IndexVadConfig, *, vad_jsonl: Path, out_dir: Path) -> dict:
    """Three steps into `<out>.partial`, swapped in at the end: `spill` (parse, repair, spill by
    tar bucket), `merge` (sort, dedupe, write the Parquet index) and `report`."""
    t0 = time.perf_counter()
    vad_jsonl, out_dir = Path(vad_jsonl), Path(out_dir)
    size = vad_jsonl.stat().st_size
    log.info("index-vad: %s (%.1f MB) -> %s", vad_jsonl, size / 1e6, out_dir)
    counts: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    with atomic_dir(out_dir) as tmp:
        spilled = spill(cfg, vad_jsonl, size, tmp / "_spill", counts, examples)
        tars, n_files = merge(spilled, tmp, counts)
        skips = report(tmp / "report.json", cfg, counts, examples, input_bytes=size, n_lines=spilled.n_lines,
                       n_files=n_files, tars=tars)
    skips.log_summary()
    # timings are logged, not reported: a clock value in report.json would change its hash in
    # dvc.lock at every rerun (tests/test_demo_rerun.py)
    elapsed = time.perf_counter() - t0
    log.info("index-vad: %d files in %d tars, %.1f h audio, %.1f h speech, %.1f s (%.1f MB/s)",
             n_files, len(tars), _hours(tars, "duration_s"), _hours(tars, "speech_s"), elapsed,
             size / 1e6 / max(elapsed, 1e-9))
    return {"n_files": n_files, "n_tars": len(tars), "elapsed_s": elapsed}


@dataclass
class Spill:
    """Pass 1's output: one Arrow IPC file per block, its rows ordered by tar, one record batch
    per bucket of 128 tars; `pieces` says where each bucket's batches are."""

    dir: Path
    n_files: int = 0
    n_lines: int = 0  # non-blank lines read
    pieces: dict[int, list[tuple[int, int]]] = field(default_factory=dict)  # bucket -> [(file, batch)]

    def path(self, i: int) -> Path:
        return self.dir / f"{i:06d}.arrow"

    def write(self, table: pa.Table) -> None:
        """One block's rows, stably ordered by tar, as zero-copy slices (one per bucket)."""
        tar = table["tar"].to_numpy()
        order = np.argsort(tar, kind="stable")
        batch = table.take(pa.array(order)).combine_chunks().to_batches()[0]
        buckets = tar[order] >> BUCKET_SHIFT
        lo = np.flatnonzero(np.r_[True, buckets[1:] != buckets[:-1]])
        hi = np.r_[lo[1:], len(buckets)]
        with pa.OSFile(str(self.path(self.n_files)), "wb") as sink, ipc.new_file(sink, FILES_SCHEMA) as w:
            for j, (b, a, z) in enumerate(zip(buckets[lo].tolist(), lo.tolist(), hi.tolist(), strict=True)):
                w.write_batch(batch.slice(a, z - a))
                self.pieces.setdefault(b, []).append((self.n_files, j))
        self.n_files += 1


def spill(cfg: IndexVadConfig, vad_jsonl: Path, size: int, spill_dir: Path, counts: Counter[str],
          examples: dict[str, list[str]]) -> Spill:
    """Pass 1: blocks of whole lines parsed, repaired and normalised (`block_table`), each
    spilled to its own file (`Spill.write`); memory: one block."""
    spill_dir.mkdir()
    spilled = Spill(spill_dir)
    with bar(desc="index-vad", unit="B", unit_scale=True, total=size) as pbar:
        for block, n_read in iter_blocks(vad_jsonl, cfg.block_mb * 2**20):
            if block:
                table, nl = block_table(block, cfg.vad_sample_rate, counts, examples)
                spilled.n_lines += nl
                if len(table):
                    spilled.write(table)
            pbar.update(n_read)
    return spilled


def merge(spilled: Spill, out: Path, counts: Counter[str]) -> tuple[pa.Table, int]:
    """Pass 2: bucket after bucket (memory: one bucket), its batches read back with plain reads,
    sorted by (tar, key) and deduplicated (`sort_and_dedupe`), appended to `files.parquet` (one
    row group per bucket); the per-tar totals go to `tars.parquet`. The spill is removed.
    Returns the per-tar table and the number of files."""
    files_in = [pa.OSFile(str(spilled.path(i))) for i in range(spilled.n_files)]
    readers = [ipc.open_file(f) for f in files_in]
    tar_parts = []
    n_files = 0
    with pq.ParquetWriter(out / "files.parquet", FILES_SCHEMA, **PARQUET_OPTIONS) as writer:
        for b in bar(sorted(spilled.pieces), desc="index-vad sort", unit="bucket"):
            table = pa.Table.from_batches([readers[i].get_batch(j) for i, j in spilled.pieces[b]],
                                          schema=FILES_SCHEMA)
            table = sort_and_dedupe(table, counts)
            writer.write_table(table)
            n_files += len(table)
            tar_parts.append(tar_stats(table))
    del readers
    for i, f in enumerate(files_in):
        f.close()
        spilled.path(i).unlink()
    spilled.dir.rmdir()
    tars = pa.concat_tables(tar_parts) if tar_parts else TARS_SCHEMA.empty_table()
    pq.write_table(tars, out / "tars.parquet")
    return tars, n_files


def report(path: Path, cfg: IndexVadConfig, counts: Counter[str], examples: dict[str, list[str]], *,
           input_bytes: int, n_lines: int, n_files: int, tars: pa.Table) -> Skips:
    """report.json: dropped lines (`DROP_REASONS`, with examples) as skips, repairs as counts,
    and the totals; returns the skips."""
    skips = Skips("index-vad")
    repairs = {}
    for reason, n in sorted(counts.items()):
        if reason in DROP_REASONS:
            skips.add(reason, n=n)
            skips.examples[reason] = examples.get(reason, [])[:5]
        else:
            repairs[reason] = n
    write_report(path, stage="index-vad", config=cfg, skips=skips, input_bytes=input_bytes, n_lines=n_lines,
                 n_files=n_files, n_tars=len(tars), duration_h=_hours(tars, "duration_s"),
                 speech_h=_hours(tars, "speech_s"), repairs=repairs)
    return skips


def _hours(tars: pa.Table, column: str) -> float:
    return float(pc.sum(tars[column]).as_py() or 0.0) / 3600
