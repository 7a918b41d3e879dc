"""prepare-audio: decode each selected MP3 once into 16 kHz WebDataset shards plus MFCC features.

Unit of work: one source tar. For each tar (only the tars `chunks.parquet` names) the stage reads
the wanted members (`dataset.fetch: members`: only those, by ranged reads located by the member
index, `ups/member_fetch.py`; `tars`: the whole tar through the tar cache) and hands each to
`ups.tar_output.write_member`, which decodes it once (`ups.audio`), cuts its chunks and writes,
through the tar's `TarOutput`, int16 PCM samples to
`<audio_dir>/<split>/<tar:06d>-<k:03d>.tar` and the chunks' 50 Hz MFCC (`ups.mfcc`, computed from
the stored int16 PCM, so features match the training input exactly) to
`<features_dir>/<split>/<tar:06d>.{feats,chunk_ids,offsets}.npy`, then records the tar in
`<audio_dir>/_done/<tar:06d>.done.json` (last). The marker holds a fingerprint of the tar's rows
and of the parameters that shape the output; a tar is skipped on restart only when its marker
exists with the same fingerprint, so a killed run resumes where it stopped and a changed selection
redoes exactly the tars it touches. For the hub the fingerprint and the marker also hold the
dataset commit (`revision`), read once from fetch-meta's record (`ups.dataset.pinned_config`):
a marker written under another commit is not trusted, and no process resolves a branch again.

Parallelism: tars are split over torchrun ranks and Slurm array tasks (`ups.work_share`: gloo
barrier at the end for torchrun) and, within a rank, over `prepare_audio.workers` spawned processes.
Outputs do not depend on either. The main process reads the tars' hub metadata in batches and
hands each job its tar's; each process keeps one dataset object for all its tars
(`ups.dataset.shared_dataset`), with its share of the hub's budgets. Rank 0 then deletes files
no marker accounts for and writes the report from the markers; array tasks leave that to the
command run once after the array.
"""

from __future__ import annotations

import hashlib
import logging
import multiprocessing as mp
import os
import threading
from collections import defaultdict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import orjson
import pyarrow.parquet as pq

from ups.atomic import locked, mark_done, read_done
from ups.config import DatasetConfig, MfccParams, PrepareAudioConfig
from ups.download import FileMeta
from ups.progress import bar
from ups.skips import Skips
from ups.stage_report import write_report
from ups.tar_output import SPLITS, ChunkRow, TarOutput, write_member
from ups.work_share import join_gloo, work_share

log = logging.getLogger(__name__)

STAGE = "prepare-audio"
DONE_DIR = "_done"
CHUNK_COLUMNS = ("chunk_id", "tar", "key", "start_s", "end_s", "language", "split")
DURATION_COLUMN = "file_duration_s"  # the file's indexed duration (select writes it; optional)
# bump when the bytes written for the same input change (2: a tar is read up to its last wanted
# member; damage and unsafe entries after it are not counted in its marker)
FORMAT_VERSION = 2


@dataclass(frozen=True)
class TarJob:
    tar: int
    rows: tuple[ChunkRow, ...]
    fingerprint: str
    cfg: PrepareAudioConfig
    mfcc: MfccParams
    dataset: DatasetConfig
    audio_dir: str
    features_dir: str
    members_dir: str | None = None  # index-members' output (dataset.fetch: members)
    metas: tuple[FileMeta, ...] = ()  # the tar's hub metadata, read once by the main process
    share: int = 1  # processes sharing the hub's budgets


# --------------------------------------------------------------------------------------------
# Reading the selection
# --------------------------------------------------------------------------------------------

def read_chunks(path: Path) -> dict[int, tuple[ChunkRow, ...]]:
    """chunks.parquet grouped by tar, rows in file order (tar, key, start_s)."""
    table = pq.read_table(path)
    missing = [c for c in CHUNK_COLUMNS if c not in table.column_names]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}")
    cols = {c: table.column(c).to_pylist() for c in CHUNK_COLUMNS}
    durations: list[Any] = (table.column(DURATION_COLUMN).to_pylist() if DURATION_COLUMN in table.column_names
                            else [None] * table.num_rows)
    by_tar: dict[int, list[ChunkRow]] = defaultdict(list)
    for i in range(table.num_rows):
        split = cols["split"][i]
        if split not in SPLITS:
            raise ValueError(f"{path}: chunk {cols['chunk_id'][i]} has split {split!r}")
        by_tar[int(cols["tar"][i])].append(ChunkRow(
            chunk_id=int(cols["chunk_id"][i]), key=cols["key"][i], start_s=float(cols["start_s"][i]),
            end_s=float(cols["end_s"][i]), language=cols["language"][i], split=split,
            file_duration_s=None if durations[i] is None else float(durations[i])))
    return {t: tuple(rows) for t, rows in sorted(by_tar.items())}


def fingerprint(tar: int, rows: tuple[ChunkRow, ...], cfg: PrepareAudioConfig, mfcc: MfccParams,
                revision: str | None = None) -> str:
    """What a tar's outputs depend on: its rows, the shaping parameters, the format version, and
    for the hub the dataset commit the tar is read at."""
    shaping = {k: v for k, v in asdict(cfg).items() if k != "workers"}
    fields: dict[str, Any] = {"tar": tar, "rows": [asdict(r) for r in rows], "cfg": shaping,
                              "mfcc": asdict(mfcc), "version": FORMAT_VERSION}
    if revision is not None:
        fields["revision"] = revision
    return hashlib.sha256(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS)).hexdigest()


def dataset_revision(dataset: DatasetConfig) -> str | None:
    """The commit a hub run reads (after `pinned_config`); None for a local mirror."""
    return dataset.revision if dataset.source == "hub" else None


# --------------------------------------------------------------------------------------------
# One tar (runs in a worker process)
# --------------------------------------------------------------------------------------------


def lock_path(audio_dir: Path, tar: int) -> Path:
    """The tar's lock file: beside the outputs, never in them (DVC hashes the output directory)."""
    return audio_dir.parent / f".{audio_dir.name}.locks" / f"{tar:06d}.lock"


def process_tar(job: TarJob) -> dict[str, Any]:
    """`write_tar` under the tar's lock: a second writer of the same tar (two arrays over the
    stage, or a requeued task beside its first copy) waits, then finds the marker and skips."""
    with locked(lock_path(Path(job.audio_dir), job.tar)):
        done = read_done(Path(job.audio_dir) / DONE_DIR, f"{job.tar:06d}")
        if done is not None and done.get("fingerprint") == job.fingerprint:
            log.info("%s: tar %06d was written by another process meanwhile", STAGE, job.tar)
            return done
        return write_tar(job)


def write_tar(job: TarJob) -> dict[str, Any]:
    """Decode, cut, shard and featurise one tar's chunks; write its marker last. Returns the marker."""
    from ups.dataset import shared_dataset
    from ups.member_fetch import open_members

    skips = Skips(STAGE)
    by_key: dict[str, list[ChunkRow]] = defaultdict(list)
    for row in job.rows:
        by_key[row.key].append(row)
    ds = shared_dataset(job.dataset, share=job.share)  # one per process: metadata, URLs, budgets
    ds.remember(job.metas)
    requests0, bytes0 = ds.stats.requests, ds.stats.bytes
    seen: set[str] = set()
    member_bytes = 0
    with TarOutput(job.tar, Path(job.audio_dir), Path(job.features_dir), job.cfg.shard_max_chunks,
                   3 * job.mfcc.num_ceps, skips) as out:
        with open_members(ds, job.tar, skips, set(by_key), fetch=job.dataset.fetch,
                          members_dir=Path(job.members_dir) if job.members_dir else None,
                          ahead=job.dataset.download_workers) as members:
            for member in members:
                member_bytes += len(member.data)
                if member.key in seen:
                    skips.add("duplicate_member", f"{out.tag}/{member.name}")
                    continue
                seen.add(member.key)
                write_member(out, member.key, member.data, by_key[member.key], job.mfcc,
                             job.cfg.resample_quality)
        splits = out.close()
    for key in sorted(set(by_key) - seen):
        skips.add("missing_member", f"{out.tag}/{key}")
        out.lose("chunk_in_missing_member", by_key[key])
    if ds.stats.requests > requests0:
        log.info("%s: tar %s: %.1f MB in %d request(s) (dataset.fetch: %s)", STAGE, out.tag,
                 (ds.stats.bytes - bytes0) / 1e6, ds.stats.requests - requests0, job.dataset.fetch)
    # bytes both ways (the same whichever way the tar was read, so markers do not depend on it)
    info = {"tar": job.tar, "fingerprint": job.fingerprint, "splits": splits,
            "revision": dataset_revision(job.dataset),
            "bytes": {"members": member_bytes, "tar": ds.tar_size(job.tar)},
            "decoded_hours": round(out.decoded_s / 3600, 6), "skipped": skips.to_dict(),
            "lost_hours": {k: round(v / 3600, 9) for k, v in sorted(out.lost_s.items())}}
    mark_done(Path(job.audio_dir) / DONE_DIR, out.tag, info)
    return info


# --------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------

def _expected_files(markers: dict[int, dict[str, Any]]) -> tuple[set[str], set[str]]:
    """Relative paths every marker accounts for, in the audio dir and in the features dir."""
    from ups.shards import shard_name

    audio: set[str] = set()
    feats: set[str] = set()
    for tar, m in markers.items():
        audio.add(f"{DONE_DIR}/{tar:06d}.done.json")
        for s, info in m["splits"].items():
            audio.update(f"{s}/{shard_name(tar, k)}" for k in range(info["n_shards"]))
            if info["n_chunks"]:
                feats.update(f"{s}/{tar:06d}.{part}.npy" for part in ("feats", "chunk_ids", "offsets"))
    return audio, feats


def _remove_unaccounted(root: Path, keep: set[str], also_keep: set[str]) -> int:
    """Delete files under root (one or two levels) that no marker accounts for. Returns the count."""
    removed = 0
    for p in sorted(root.rglob("*")):
        if not p.is_file():
            continue
        rel = p.relative_to(root).as_posix()
        if rel in keep or rel in also_keep:
            continue
        p.unlink()
        removed += 1
    return removed


class Prefetcher:
    """Downloads tars in job order, at most `ahead` tars beyond the ones already processed.

    Fetching every selected tar up front would need the whole selection on disk at once (100 h
    can span ~50 tars of 4.5-15 GB); a bounded look-ahead keeps the download ahead of the decoders
    while the tar cache's budget and LRU eviction hold. A failed prefetch is only logged: the
    worker's own `ds.tar()` retries it and a persistent failure surfaces there.
    """

    def __init__(self, ds: Any, tars: list[int], ahead: int) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._ds, self._tars = ds, tars
        self._slots = threading.Semaphore(max(1, ahead))
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=max(1, ds.cfg.download_workers))
        self._feeder = threading.Thread(target=self._feed, name="prefetch", daemon=True)

    def _fetch(self, tar: int) -> None:
        from ups.dataset import DatasetError, DownloadError
        from ups.tar_cache import CacheFullError

        if self._stop.is_set():
            return
        try:
            with self._ds.tar(tar):
                pass
        except (DatasetError, DownloadError, CacheFullError, OSError) as exc:
            log.warning("%s: prefetch of tar %06d failed (%s); the worker will retry", STAGE, tar, exc)

    def _feed(self) -> None:
        for tar in self._tars:
            self._slots.acquire()
            if self._stop.is_set():
                return
            self._pool.submit(self._fetch, tar)

    def finished_one(self) -> None:
        self._slots.release()

    def __enter__(self) -> Prefetcher:
        self._feeder.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._slots.release()
        self._feeder.join()
        self._pool.shutdown(wait=True, cancel_futures=True)


def run(cfg: PrepareAudioConfig, mfcc: MfccParams, dataset: DatasetConfig, *, chunks: Path,
        audio_dir: Path, features_dir: Path, report: Path,
        fetch_meta: Path = Path("data/meta/fetch_meta.json"),
        members_dir: Path | None = None) -> dict[str, Any]:
    from ups.dataset import pinned_config

    dataset = pinned_config(dataset, fetch_meta)  # one commit for every process of the run
    revision = dataset_revision(dataset)
    share = work_share(os.environ)
    by_tar = read_chunks(chunks)
    tars = list(by_tar)
    mine = share.take(tars)
    pg = join_gloo(share)
    log.info("%s: %d chunks in %d tars; %s takes %d tars, %d workers", STAGE,
             sum(len(r) for r in by_tar.values()), len(tars), share.describe(), len(mine), cfg.workers)

    todo = [t for t in mine if (d := read_done(audio_dir / DONE_DIR, f"{t:06d}")) is None
            or d.get("fingerprint") != fingerprint(t, by_tar[t], cfg, mfcc, revision)]
    log.info("%s: %d tar(s) already done, %d to do", STAGE, len(mine) - len(todo), len(todo))
    n_procs = min(cfg.workers, len(todo)) if cfg.workers > 1 and len(todo) > 1 else 0
    hub_share = (n_procs + 1) * share.world  # the processes that call the hub meanwhile
    from ups.dataset import shared_dataset

    ds = shared_dataset(dataset, share=hub_share, fresh=True)  # the jobs run here share it
    metas = ds.tar_metas(todo)  # the hub: 50 tars per request, handed to the workers
    jobs = [TarJob(t, by_tar[t], fingerprint(t, by_tar[t], cfg, mfcc, revision), cfg, mfcc, dataset,
                   str(audio_dir), str(features_dir), str(members_dir) if members_dir else None,
                   metas.get(t, ()), hub_share) for t in todo]

    if jobs:
        # whole tars are prefetched; member fetches happen in the workers, `ahead` members at a time
        ahead = Prefetcher(ds, [j.tar for j in jobs] if dataset.fetch == "tars" else [],
                           dataset.download_workers + cfg.workers)
        with ahead, bar(desc=STAGE, unit="tar", total=len(jobs)) as pbar:
            if not n_procs:
                for job in jobs:
                    process_tar(job)
                    ahead.finished_one()
                    pbar.update(1)
            else:
                ctx = mp.get_context("spawn")
                with ctx.Pool(n_procs) as pool:
                    for _ in pool.imap_unordered(process_tar, jobs):
                        ahead.finished_one()
                        pbar.update(1)
    if pg is not None:
        pg.barrier()
    summary: dict[str, Any] = {}
    if share.finishes:
        summary = _finish(cfg, mfcc, tars, by_tar, audio_dir, features_dir, report, revision)
    elif share.in_array and share.group_rank == 0:
        log.info("%s: %s done; the stage's command run once after the array writes the report", STAGE,
                 share.describe())
    if pg is not None:
        pg.barrier()
        pg.destroy_process_group()
    return summary


def _finish(cfg: PrepareAudioConfig, mfcc: MfccParams, tars: list[int],
            by_tar: dict[int, tuple[ChunkRow, ...]], audio_dir: Path, features_dir: Path,
            report: Path, revision: str | None = None) -> dict[str, Any]:
    markers: dict[int, dict[str, Any]] = {}
    for t in tars:
        m = read_done(audio_dir / DONE_DIR, f"{t:06d}")
        if m is None or m.get("fingerprint") != fingerprint(t, by_tar[t], cfg, mfcc, revision):
            raise RuntimeError(f"{STAGE}: tar {t:06d} has no valid completion marker after the run")
        markers[t] = m
    keep_audio, keep_feats = _expected_files(markers)
    report_rel = {report.relative_to(audio_dir).as_posix()} if report.is_relative_to(audio_dir) else set()
    removed = _remove_unaccounted(audio_dir, keep_audio, report_rel)
    removed += _remove_unaccounted(features_dir, keep_feats, set())
    skips = Skips(STAGE)
    totals: dict[str, dict[str, float]] = {s: {"n_chunks": 0, "n_shards": 0, "n_frames": 0, "hours": 0.0}
                                           for s in SPLITS}
    decoded_h = 0.0
    fetch_bytes = {"members": 0, "tar": 0}
    for m in markers.values():
        for k in fetch_bytes:
            fetch_bytes[k] += int(m.get("bytes", {}).get(k, 0))
        other = Skips(STAGE)
        other.counts.update(m["skipped"]["counts"])
        other.examples = {k: list(v) for k, v in m["skipped"]["examples"].items()}
        skips.merge(other)
        decoded_h += m["decoded_hours"]
        for s in SPLITS:
            for k in totals[s]:
                totals[s][k] += m["splits"][s][k]
    for s in SPLITS:
        totals[s]["hours"] = round(totals[s]["hours"], 6)
    skips.log_summary()
    if removed:
        log.info("%s: removed %d file(s) no completion marker accounts for", STAGE, removed)
    n_selected = sum(len(r) for r in by_tar.values())
    n_written = int(sum(totals[s]["n_chunks"] for s in SPLITS))
    hours = hours_accounting(by_tar, totals, markers)
    fields = {"n_tars": len(tars), "n_chunks_selected": n_selected, "n_chunks_written": n_written,
              "splits": totals, "decoded_hours": round(decoded_h, 6), **hours,
              "download_bytes": {"members": fetch_bytes["members"], "tars": fetch_bytes["tar"]},
              "mfcc": asdict(mfcc), "feature_dim": 3 * mfcc.num_ceps}
    write_report(report, stage=STAGE, config=cfg, skips=skips, **fields)
    log.info("%s: wrote %d of %d chunks, %.4f of %.4f h selected (%s); not written: %s", STAGE,
             n_written, n_selected, hours["hours_written"]["total"], hours["hours_selected"]["total"],
             ", ".join(f"{s} {hours['hours_written'][s]:.4f} h" for s in SPLITS),
             ", ".join(f"{k} {v:.4f} h" for k, v in hours["hours_not_written"].items()))
    return {**fields, "skipped": skips.to_dict()}


def hours_accounting(by_tar: dict[int, tuple[ChunkRow, ...]], totals: dict[str, dict[str, float]],
                     markers: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """Hours the selection holds, hours written, and the difference by reason, per split and in
    total: selected = written + not written (up to rounding)."""
    selected = {s: 0.0 for s in SPLITS}
    for rows in by_tar.values():
        for r in rows:
            selected[r.split] += (r.end_s - r.start_s) / 3600
    written = {s: float(totals[s]["hours"]) for s in SPLITS}
    lost: dict[str, float] = {}
    for m in markers.values():
        for k, v in m.get("lost_hours", {}).items():
            lost[k] = lost.get(k, 0.0) + v
    out = {}
    for name, d in (("hours_selected", selected), ("hours_written", written),
                    ("hours_not_written", dict(sorted(lost.items())))):
        out[name] = {k: round(v, 6) for k, v in d.items()} | {"total": round(sum(d.values()), 6)}
    return out

