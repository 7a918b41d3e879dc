"""What prepare-audio writes for one source tar: its chunks' shards and features, and the tally.

`TarOutput` holds one tar's bookkeeping: a shard writer and a feature sink per split, the chunk
ids and frame counts written, the seconds written and lost by reason, the bad input seen.
`write_member` turns one decoded member into chunks: it decodes the MP3 once up to its last wanted
chunk, drops what a truncated file cannot give, cuts the chunks, stores each as int16 PCM in the
shard of its split and its 50 Hz MFCC (computed from the stored int16, so features match the
training input exactly) in the split's feature sink. `TarOutput.close` then writes the features'
index files and returns the per-split counts for the tar's completion marker.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ups import failpoints
from ups.atomic import atomic_write, writer_tag
from ups.config import MfccParams
from ups.frames import SAMPLE_RATE, chunk_samples, n_cnn_frames
from ups.skips import Skips

SPLITS = ("train", "valid", "eval")  # eval: held out for evaluate's probe, never trained on
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


class TarOutput:
    """One tar's shards, features and tally while its members are written (see the module
    docstring). Use as a context manager: an exception aborts every partial file."""

    def __init__(self, tar: int, audio_dir: Path, features_dir: Path, shard_max_chunks: int,
                 feature_dim: int, skips: Skips) -> None:
        from ups.shards import ShardWriter

        self.tar, self.tag, self.features_dir, self.skips = tar, f"{tar:06d}", features_dir, skips
        self.writers = {s: ShardWriter(audio_dir / s, tar, shard_max_chunks) for s in SPLITS}
        self.sinks = {s: FeatureSink(features_dir / s / f"{self.tag}.feats.npy", feature_dim)
                      for s in SPLITS}
        self.lengths: dict[str, list[int]] = {s: [] for s in SPLITS}
        self.ids: dict[str, list[int]] = {s: [] for s in SPLITS}
        self.seconds = {s: 0.0 for s in SPLITS}
        self.lost_s: dict[str, float] = {}
        self.decoded_s = 0.0

    def __enter__(self) -> TarOutput:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            for w in self.writers.values():
                w.abort()
            for sink in self.sinks.values():
                sink.abort()

    def lose(self, reason: str, rows: list[ChunkRow], example: str = "") -> None:
        """Count chunks the selection holds that cannot be written, and their seconds (the
        report's `hours_not_written`, so selected = written + not written by reason)."""
        self.skips.add(reason, example, n=len(rows))
        self.lost_s[reason] = self.lost_s.get(reason, 0.0) + sum(r.end_s - r.start_s for r in rows)

    def add_chunk(self, row: ChunkRow, pcm: np.ndarray, mfcc: MfccParams) -> None:
        from ups.audio import from_int16
        from ups.mfcc import hubert_mfcc

        meta = {"chunk_id": row.chunk_id, "tar": self.tar, "key": row.key, "start_s": row.start_s,
                "end_s": row.end_s, "language": row.language, "split": row.split,
                "n_samples": len(pcm)}
        self.writers[row.split].write(f"{row.chunk_id:09d}", pcm, meta)
        f = hubert_mfcc(from_int16(pcm), mfcc)
        self.sinks[row.split].write(f)
        self.lengths[row.split].append(len(f))
        self.ids[row.split].append(row.chunk_id)
        self.seconds[row.split] += len(pcm) / SAMPLE_RATE
        failpoints.hit("UPS_FAIL_AFTER_CHUNKS")

    def close(self) -> dict[str, Any]:
        """Close shards and sinks, write each split's chunk ids and frame offsets; the per-split
        counts for the marker."""
        for w in self.writers.values():
            w.close()
        for s in SPLITS:
            (self.sinks[s].finish if self.ids[s] else self.sinks[s].abort)()
        splits: dict[str, Any] = {}
        for s in SPLITS:
            n_frames = 0
            if self.ids[s]:
                offsets = np.concatenate([[0], np.cumsum(np.array(self.lengths[s], dtype=np.int64))])
                offsets = offsets.astype(np.int64)
                out = self.features_dir / s
                _write_npy(out / f"{self.tag}.chunk_ids.npy", np.array(self.ids[s], dtype=np.int64))
                _write_npy(out / f"{self.tag}.offsets.npy", offsets)
                n_frames = int(offsets[-1])
            splits[s] = {"n_chunks": len(self.ids[s]), "n_shards": self.writers[s].n_shards,
                         "n_frames": n_frames, "hours": round(self.seconds[s] / 3600, 6)}
        return splits


def write_member(out: TarOutput, key: str, data: bytes, rows: list[ChunkRow], mfcc: MfccParams,
                 resample_quality: str) -> None:
    """Decode member `key` once (up to its last chunk) and write its chunks into `out`; chunks it
    cannot give are counted by reason (corrupt, truncated, past its end, too short)."""
    from ups.audio import MARGIN_S, CorruptAudio, decode_mono_16k, to_int16

    where = f"{out.tag}/{key}"
    rows = sorted(rows, key=lambda r: (r.start_s, r.chunk_id))
    spans = [chunk_samples(r.start_s, r.end_s) for r in rows]
    need = max(s + n for s, n in spans)
    try:
        audio = decode_mono_16k(data, need, resample_quality)
    except CorruptAudio as exc:
        out.skips.add("corrupt_mp3", f"{where}: {exc}")
        out.lose("chunk_in_corrupt_mp3", rows)
        return
    out.decoded_s += len(audio) / SAMPLE_RATE
    rows, spans = _drop_truncated(out, rows, spans, len(audio), need / SAMPLE_RATE + MARGIN_S, where)
    for row, (start, n) in zip(rows, spans, strict=True):
        if start < 0 or start + n > len(audio):
            out.lose("chunk_past_end", [row], f"{out.tag}/{row.key} [{row.start_s}, {row.end_s}) "
                                              f"file {len(audio) / SAMPLE_RATE:.2f} s")
        elif n_cnn_frames(n) == 0:
            out.lose("chunk_too_short", [row], f"{out.tag}/{row.key} {n} samples")
        else:
            out.add_chunk(row, to_int16(audio[start:start + n]), mfcc)


def _drop_truncated(out: TarOutput, rows: list[ChunkRow], spans: list[tuple[int, int]], n_decoded: int,
                    asked_s: float, where: str) -> tuple[list[ChunkRow], list[tuple[int, int]]]:
    """Keep the chunks of a file that lie inside its decoded samples; if the file is truncated,
    count it (`truncated_mp3`) and its lost chunks (`chunk_in_corrupt_mp3`)."""
    indexed = rows[0].file_duration_s
    if not truncated(n_decoded / SAMPLE_RATE, asked_s, indexed):
        return rows, spans
    keep = [i for i, (start, n) in enumerate(spans) if start + n <= n_decoded]
    out.skips.add("truncated_mp3",
                  f"{where}: decoded {n_decoded / SAMPLE_RATE:.2f} s of {indexed:.2f} s indexed")
    lost = set(range(len(rows))) - set(keep)
    out.lose("chunk_in_corrupt_mp3", [rows[i] for i in sorted(lost)])
    return [rows[i] for i in keep], [spans[i] for i in keep]
