"""Read the per-tar features prepare-audio wrote, or stream HuBERT layer features from the shards.

Layout written by prepare-audio, per split and source tar:
`<features_dir>/<split>/<tar:06d>.feats.npy` (float32, frames x 39, the chunks' 50 Hz MFCC one
after another), `.chunk_ids.npy` (int64) and `.offsets.npy` (int64, n_chunks + 1). The same
chunk ids and frame counts hold for any feature kind, since frames are always n_cnn_frames(N).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ups.shards import iter_shard


@dataclass(frozen=True)
class TarFeatures:
    tar: int
    chunk_ids: np.ndarray  # int64 (n,)
    offsets: np.ndarray  # int64 (n + 1,)
    feats_path: Path

    @property
    def n_frames(self) -> int:
        return int(self.offsets[-1])

    def mfcc(self) -> np.ndarray:
        """The MFCC rows, memory-mapped (nothing is read until used)."""
        return np.load(self.feats_path, mmap_mode="r")


def list_tars(features_dir: Path, split: str) -> list[TarFeatures]:
    out = []
    for p in sorted((features_dir / split).glob("*.feats.npy")):
        tag = p.name.split(".")[0]
        ids = np.load(p.with_name(f"{tag}.chunk_ids.npy"))
        offsets = np.load(p.with_name(f"{tag}.offsets.npy"))
        if len(offsets) != len(ids) + 1:
            raise ValueError(f"{p}: {len(ids)} chunk ids but {len(offsets)} offsets")
        out.append(TarFeatures(int(tag), ids, offsets, p))
    return out


def iter_pcm(audio_dir: Path, split: str, tar: int) -> Iterator[tuple[int, np.ndarray]]:
    """(chunk_id, int16 PCM) of one source tar's shards for `split`, in shard order."""
    for shard in sorted((audio_dir / split).glob(f"{tar:06d}-*.tar")):
        for _, pcm, meta in iter_shard(shard):
            yield int(meta["chunk_id"]), pcm


def iter_layer_features(tf: TarFeatures, audio_dir: Path, split: str, extract: Any,
                        wanted: set[int] | None = None, read_chunks: int = 64
                        ) -> Iterator[tuple[list[int], Any]]:
    """(chunk ids, float32 tensor (B, T, dim) on the extractor's device) for a tar's chunks (all,
    or the `wanted` ids), a few batches at a time: at most `read_chunks` chunks of PCM and one
    batch of features are in memory, so a tar's 768-dim features never are (nor touch the disk)."""
    ids: list[int] = []
    pcms: list[np.ndarray] = []
    seen: set[int] = set()

    def flush() -> Iterator[tuple[list[int], Any]]:
        for part, h in extract.batches(pcms):
            yield [ids[i] for i in part], h
        seen.update(ids)
        ids.clear()
        pcms.clear()

    for cid, pcm in iter_pcm(audio_dir, split, tf.tar):
        if wanted is not None and cid not in wanted:
            continue
        ids.append(cid)
        pcms.append(pcm)
        if len(ids) >= read_chunks:
            yield from flush()
    if ids:
        yield from flush()
    missing = (set(tf.chunk_ids.tolist()) if wanted is None else wanted) - seen
    if missing:
        raise ValueError(f"shards of tar {tf.tar:06d} ({split}) lack chunk(s) {sorted(missing)[:5]}")
