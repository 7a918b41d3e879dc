"""prepare-audio: decode each selected MP3 once into 16 kHz WebDataset shards plus MFCC features.

Unit of work: one source tar. For each tar (only the tars `chunks.parquet` names) the stage reads
the wanted members (`dataset.fetch: members`: only those, by ranged reads located by the member
index, `ups/member_fetch.py`; `tars`: the whole tar through the tar cache), decodes every file
once (`ups.audio`), cuts its chunks, writes int16 PCM samples to
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
Outputs do not depend on either. Rank 0 then deletes files no marker accounts for and writes the
report from the markers; array tasks leave that to the command run once after the array.
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

import numpy as np
import orjson
import pyarrow.parquet as pq

from ups import failpoints
from ups.atomic import atomic_write, locked, mark_done, read_done, writer_tag
from ups.config import DatasetConfig, MfccParams, PrepareAudioConfig
from ups.download import FileMeta
from ups.frames import SAMPLE_RATE, chunk_samples, n_cnn_frames
from ups.progress import bar
from ups.report import Skips, write_report
from ups.work_share import join_gloo, work_share

log = logging.getLogger(__name__)

STAGE = "prepare-audio"
SPLITS = ("train", "valid", "eval")  # eval: held out for evaluate's probe, never trained on
DONE_DIR = "_done"
CHUNK_COLUMNS = ("chunk_id", "tar", "key", "start_s", "end_s", "language", "split")
DURATION_COLUMN = "file_duration_s"  # the file's indexed duration (select writes it; optional)
# bump when the bytes written for the same input change (2: a tar is read up to its last wanted
# member; damage and unsafe entries after it are not counted in its marker)
FORMAT_VERSION = 2
# A decode that ends more than this short of min(asked length, indexed duration) is a truncated
# file: MP3 encoder delay and padding move the decoded length by tens of milliseconds (the
# sample corpus: within 5 ms of its VAD durations), a cut-off member by seconds.
TRUNCATION_TOLERANCE_S = 0.5


@dataclass(frozen=True)
class ChunkRow:
    chunk_id: int
    key: str
    start_s: float
    end_s: float
    language: str
    split: str
    file_duration_s: float | None = None  # indexed duration of the file, when the selection has it


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


def _write_npy(path: Path, a: np.ndarray) -> None:
    with atomic_write(path) as fh:
        np.save(fh, a, allow_pickle=False)


class FeatureSink:
    """Streams one split's float32 feature rows to disk, then writes `<tag>.feats.npy` atomically.

    Rows go to a hidden temporary file as they are computed, so a worker holds one chunk's
    features at a time instead of the whole tar's selection (which grows with the hours selected
    per tar: ~56 MB per selected 2 h, then twice that while concatenating). `finish` writes the
    .npy header and copies the rows in 16 MB blocks.
    """

    BLOCK = 16 << 20

    def __init__(self, path: Path, dim: int) -> None:
        self.path, self.dim, self.n_rows = path, dim, 0
        path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = path.with_name(f".{path.name}.rows.{writer_tag()}.tmp")  # one per writer
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 (closed in finish/abort)

    def write(self, rows: np.ndarray) -> None:
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        if rows.ndim != 2 or rows.shape[1] != self.dim:
            raise ValueError(f"feature rows of shape {rows.shape}, expected (n, {self.dim})")
        self._fh.write(rows.tobytes())
        self.n_rows += len(rows)

    def finish(self) -> None:
        self._fh.close()
        header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                  "shape": (self.n_rows, self.dim)}
        with atomic_write(self.path) as out, open(self._tmp, "rb") as src:
            np.lib.format.write_array_header_1_0(out, header)
            while block := src.read(self.BLOCK):
                out.write(block)
        self._tmp.unlink()

    def abort(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass  # a full disk fails the final flush; the rows are discarded either way
        finally:
            self._tmp.unlink(missing_ok=True)


def truncated(decoded_s: float, asked_s: float, indexed_s: float | None) -> bool:
    """True when decoding ended more than TRUNCATION_TOLERANCE_S before both the length asked
    for and the file's indexed duration: libsndfile decodes a cut-off MP3 without an error."""
    if indexed_s is None:
        return False
    return decoded_s < min(asked_s, indexed_s) - TRUNCATION_TOLERANCE_S


def lose(skips: Any, lost_s: dict[str, float], reason: str, rows: list[ChunkRow], example: str = "") -> None:
    """Count chunks the selection holds that this stage cannot write, and their seconds (the
    report's `hours_not_written`, so selected = written + not written by reason)."""
    skips.add(reason, example, n=len(rows))
    lost_s[reason] = lost_s.get(reason, 0.0) + sum(r.end_s - r.start_s for r in rows)


def _drop_truncated(rows: list[ChunkRow], spans: list[tuple[int, int]], n_decoded: int, asked_s: float,
                    skips: Any, lost_s: dict[str, float], where: str
                    ) -> tuple[list[ChunkRow], list[tuple[int, int]]]:
    """Keep the chunks of a file that lie inside its decoded samples; if the file is truncated,
    count it (`truncated_mp3`) and its lost chunks (`chunk_in_corrupt_mp3`)."""
    indexed = rows[0].file_duration_s
    if not truncated(n_decoded / SAMPLE_RATE, asked_s, indexed):
        return rows, spans
    keep = [i for i, (start, n) in enumerate(spans) if start + n <= n_decoded]
    skips.add("truncated_mp3", f"{where}: decoded {n_decoded / SAMPLE_RATE:.2f} s of {indexed:.2f} s indexed")
    lost = set(range(len(rows))) - set(keep)
    lose(skips, lost_s, "chunk_in_corrupt_mp3", [rows[i] for i in sorted(lost)])
    return [rows[i] for i in keep], [spans[i] for i in keep]


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
    from ups.audio import MARGIN_S, CorruptAudio, decode_mono_16k, from_int16, to_int16
    from ups.dataset import shared_dataset
    from ups.member_fetch import open_members
    from ups.mfcc import hubert_mfcc
    from ups.shards import ShardWriter

    skips = Skips(STAGE)
    tag = f"{job.tar:06d}"
    by_key: dict[str, list[ChunkRow]] = defaultdict(list)
    for row in job.rows:
        by_key[row.key].append(row)
    audio_dir, features_dir = Path(job.audio_dir), Path(job.features_dir)
    writers = {s: ShardWriter(audio_dir / s, job.tar, job.cfg.shard_max_chunks) for s in SPLITS}
    sinks = {s: FeatureSink(features_dir / s / f"{tag}.feats.npy", 3 * job.mfcc.num_ceps)
             for s in SPLITS}
    lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
    ids: dict[str, list[int]] = {s: [] for s in SPLITS}
    seconds = {s: 0.0 for s in SPLITS}
    lost_s: dict[str, float] = {}
    decoded_s = 0.0
    seen: set[str] = set()
    ds = shared_dataset(job.dataset, share=job.share)  # one per process: metadata, URLs, budgets
    ds.remember(job.metas)
    requests0, bytes0 = ds.stats.requests, ds.stats.bytes
    member_bytes = 0
    try:
        with open_members(ds, job.tar, skips, set(by_key), fetch=job.dataset.fetch,
                          members_dir=Path(job.members_dir) if job.members_dir else None,
                          ahead=job.dataset.download_workers) as members:
            for member in members:
                member_bytes += len(member.data)
                if member.key in seen:
                    skips.add("duplicate_member", f"{tag}/{member.name}")
                    continue
                seen.add(member.key)
                rows = sorted(by_key[member.key], key=lambda r: (r.start_s, r.chunk_id))
                spans = [chunk_samples(r.start_s, r.end_s) for r in rows]
                need = max(s + n for s, n in spans)
                try:
                    audio = decode_mono_16k(member.data, need, job.cfg.resample_quality)
                except CorruptAudio as exc:
                    skips.add("corrupt_mp3", f"{tag}/{member.key}: {exc}")
                    lose(skips, lost_s, "chunk_in_corrupt_mp3", rows)
                    continue
                decoded_s += len(audio) / SAMPLE_RATE
                rows, spans = _drop_truncated(rows, spans, len(audio), need / SAMPLE_RATE + MARGIN_S,
                                              skips, lost_s, f"{tag}/{member.key}")
                for row, (start, n) in zip(rows, spans, strict=True):
                    if start < 0 or start + n > len(audio):
                        lose(skips, lost_s, "chunk_past_end", [row], f"{tag}/{row.key} [{row.start_s}, "
                             f"{row.end_s}) file {len(audio) / SAMPLE_RATE:.2f} s")
                        continue
                    if n_cnn_frames(n) == 0:
                        lose(skips, lost_s, "chunk_too_short", [row], f"{tag}/{row.key} {n} samples")
                        continue
                    pcm = to_int16(audio[start:start + n])
                    meta = {"chunk_id": row.chunk_id, "tar": job.tar, "key": row.key,
                            "start_s": row.start_s, "end_s": row.end_s, "language": row.language,
                            "split": row.split, "n_samples": n}
                    writers[row.split].write(f"{row.chunk_id:09d}", pcm, meta)
                    f = hubert_mfcc(from_int16(pcm), job.mfcc)
                    sinks[row.split].write(f)
                    lengths[row.split].append(len(f))
                    ids[row.split].append(row.chunk_id)
                    seconds[row.split] += n / SAMPLE_RATE
                    failpoints.hit("UPS_FAIL_AFTER_CHUNKS")
        for w in writers.values():
            w.close()
        for s in SPLITS:
            if ids[s]:
                sinks[s].finish()
            else:
                sinks[s].abort()
    except BaseException:
        for w in writers.values():
            w.abort()
        for sink in sinks.values():
            sink.abort()
        raise
    for key in sorted(set(by_key) - seen):
        skips.add("missing_member", f"{tag}/{key}")
        lose(skips, lost_s, "chunk_in_missing_member", by_key[key])

    splits: dict[str, Any] = {}
    for s in SPLITS:
        n_chunks = len(ids[s])
        if n_chunks:
            offsets = np.concatenate([[0], np.cumsum(np.array(lengths[s], dtype=np.int64))]).astype(np.int64)
            out = features_dir / s
            _write_npy(out / f"{tag}.chunk_ids.npy", np.array(ids[s], dtype=np.int64))
            _write_npy(out / f"{tag}.offsets.npy", offsets)
            n_frames = int(offsets[-1])
        else:
            n_frames = 0
        splits[s] = {"n_chunks": n_chunks, "n_shards": writers[s].n_shards, "n_frames": n_frames,
                     "hours": round(seconds[s] / 3600, 6)}
    if ds.stats.requests > requests0:
        log.info("%s: tar %s: %.1f MB in %d request(s) (dataset.fetch: %s)", STAGE, tag,
                 (ds.stats.bytes - bytes0) / 1e6, ds.stats.requests - requests0, job.dataset.fetch)
    # bytes both ways (the same whichever way the tar was read, so markers do not depend on it)
    fetch_bytes = {"members": member_bytes, "tar": ds.tar_size(job.tar)}
    info = {"tar": job.tar, "fingerprint": job.fingerprint, "splits": splits,
            "revision": dataset_revision(job.dataset), "bytes": fetch_bytes,
            "decoded_hours": round(decoded_s / 3600, 6), "skipped": skips.to_dict(),
            "lost_hours": {k: round(v / 3600, 9) for k, v in sorted(lost_s.items())}}
    mark_done(audio_dir / DONE_DIR, tag, info)
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

    ds = shared_dataset(dataset, share=hub_share)
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

