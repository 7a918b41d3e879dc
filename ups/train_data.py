"""Training batches from the pre-decoded WebDataset shards and the frame labels.

When the dataset is built, each shard's tar headers are walked once (no audio is read) into a
catalogue of its trainable samples: chunk id, byte offset of the pcm member, label frames.
Which samples form each micro-batch, and which rank and worker reads it, is `ups.data_order`'s
global schedule (one permutation of every chunk per epoch, dealt in global-batch order); a
worker reads its micro-batches' samples at their offsets. Each micro-batch is cropped and masked
with a generator seeded by (seed, epoch, step, micro-batch), so a run resumed at any step, on any
number of ranks and workers at the same global batch, sees exactly the batches of a run never
stopped. A sample that turns out unreadable only when read is left out of its micro-batch (and
counted); a micro-batch with no readable sample is marked `EMPTY`.

Crop modes: `shortest` crops every sample of a batch to the batch's shortest (at most
`max_sample_seconds`) at a random frame-aligned offset, so no compute goes to padding (fairseq's
HuBERT recipe); `pad` crops to `max_sample_seconds` only and zero-pads, with an attention mask;
padded frames are never masked or scored (`check_crop` refuses `pad` for group-norm CNNs).
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import orjson
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ups.data_order import MicroBatch, rank_schedule, valid_batches, worker_share
from ups.frames import CNN_HOP_SAMPLES, SAMPLE_RATE, n_cnn_frames
from ups.masking import compute_mask, frame_valid

if TYPE_CHECKING:
    from ups.config import TrainConfig

log = logging.getLogger(__name__)

EMPTY = "empty"  # a micro-batch none of whose samples could be read


@dataclass(frozen=True)
class BatchSpec:
    """How samples become batches (a subset of TrainConfig, so workers get a small object)."""

    batch_size: int
    max_sample_seconds: float
    min_sample_seconds: float
    crop: str  # "shortest" | "pad"
    mask_prob: float
    mask_length: int
    min_masks: int
    normalize_audio: bool

    @classmethod
    def of(cls, cfg: TrainConfig, batch_size: int) -> BatchSpec:
        """The spec of `train.*`, at the batch size resolved for this run (it may be `auto`)."""
        return cls(batch_size=batch_size, max_sample_seconds=cfg.max_sample_seconds,
                   min_sample_seconds=cfg.min_sample_seconds, crop=cfg.crop, mask_prob=cfg.mask_prob,
                   mask_length=cfg.mask_length, min_masks=cfg.min_masks, normalize_audio=cfg.normalize_audio)


def check_crop(crop: str, feat_extract_norm: str) -> None:
    """Padding is only sound for a CNN that normalises each frame on its own."""
    if crop == "pad" and feat_extract_norm == "group":
        from ups.config import ConfigError

        raise ConfigError(
            "train.crop: pad is not supported for this model: its CNN uses group norm "
            "(feat_extract_norm: group, as facebook/hubert-base-ls960), which normalises over time, "
            "so zero padding changes the real frames' features; use train.crop: shortest"
        )


# --- labels ----------------------------------------------------------------------------------


class LabelIndex:
    """chunk_id -> frame labels, from `chunk_ids.npy`, `offsets.npy`, `labels.npy` (memory-mapped)."""

    def __init__(self, split_dir: Path) -> None:
        self.dir = Path(split_dir)
        self.chunk_ids = np.load(self.dir / "chunk_ids.npy", mmap_mode="r", allow_pickle=False)
        self.offsets = np.load(self.dir / "offsets.npy", mmap_mode="r", allow_pickle=False)
        self.labels = np.load(self.dir / "labels.npy", mmap_mode="r", allow_pickle=False)
        if len(self.offsets) != len(self.chunk_ids) + 1:
            raise ValueError(f"{self.dir}: offsets.npy must hold len(chunk_ids) + 1 entries")
        self._order = np.argsort(np.asarray(self.chunk_ids), kind="stable")
        self._sorted = np.asarray(self.chunk_ids)[self._order]

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def get(self, chunk_id: int) -> np.ndarray | None:
        i = int(np.searchsorted(self._sorted, chunk_id))
        if i >= len(self._sorted) or int(self._sorted[i]) != chunk_id:
            return None
        row = int(self._order[i])
        return np.asarray(self.labels[int(self.offsets[row]) : int(self.offsets[row + 1])])

    def n_frames(self, chunk_id: int) -> int | None:
        """Label frames of a chunk, or None when it has no labels (nothing is read but offsets)."""
        i = int(np.searchsorted(self._sorted, chunk_id))
        if i >= len(self._sorted) or int(self._sorted[i]) != chunk_id:
            return None
        row = int(self._order[i])
        return int(self.offsets[row + 1]) - int(self.offsets[row])

    def max_label(self) -> int:
        return int(np.max(self.labels)) if len(self.labels) else -1


def count_clusters(labels_root: Path) -> int:
    """Number of clusters: `n_clusters` from `<labels_root>/meta.json` (assign-labels writes it)
    if present, else the largest label over all splits + 1."""
    meta = Path(labels_root) / "meta.json"
    if meta.is_file():
        data = orjson.loads(meta.read_bytes())
        if isinstance(data, dict) and isinstance(data.get("n_clusters"), int):
            return int(data["n_clusters"])
    top = -1
    for split in ("train", "valid"):
        if (Path(labels_root) / split / "labels.npy").is_file():
            top = max(top, LabelIndex(Path(labels_root) / split).max_label())
    if top < 0:
        raise ValueError(f"no labels under {labels_root}")
    return top + 1


LABEL_FILES = ("chunk_ids.npy", "offsets.npy", "labels.npy")


def labels_digest(labels_root: Path) -> str:
    """sha256 over the label files of both splits (chunk ids, offsets AND the labels themselves).

    A head is only meaningful against the labels it was trained on: re-fitting k-means keeps
    `chunk_ids.npy` and `offsets.npy` but renumbers the clusters, so the labels' bytes must be
    part of what identifies a training state and an exported head. Files are streamed."""
    import hashlib

    h = hashlib.sha256()
    for split in ("train", "valid"):
        for name in LABEL_FILES:
            p = Path(labels_root) / split / name
            h.update(f"{split}/{name}:{p.is_file()}\n".encode())
            if p.is_file():
                with open(p, "rb") as fh:
                    for block in iter(lambda: fh.read(1 << 22), b""):
                        h.update(block)
    return h.hexdigest()


# --- shards ----------------------------------------------------------------------------------


def list_shards(split_dir: Path) -> list[Path]:
    return sorted(p for p in Path(split_dir).glob("*.tar") if p.is_file())


def decode_pcm(data: bytes, skips: Counter[str]) -> np.ndarray | None:
    """One `.pcm.npy` member as int16 mono samples; None (counted) when it is not one."""
    try:
        pcm = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError):
        skips["bad_sample"] += 1
        return None
    if pcm.ndim != 1 or pcm.dtype != np.int16:
        skips["bad_pcm_format"] += 1
        return None
    return pcm


def _file_members(tf: tarfile.TarFile) -> Iterator[tuple[tarfile.TarInfo, str, str]]:
    """(member, sample key, extension) of each regular file of a shard, in tar order."""
    for member in tf:
        if member.isfile():
            key, _, ext = member.name.rpartition("/")[2].partition(".")
            yield member, key, ext


def read_shard(path: Path, skips: Counter[str]) -> Iterator[tuple[int, np.ndarray]]:
    """(chunk_id, int16 pcm) per sample of one shard, in file order; bad samples counted."""
    current: str | None = None
    fields: dict[str, bytes] = {}

    def flush() -> tuple[int, np.ndarray] | None:
        if current is None:
            return None
        if "pcm.npy" not in fields:
            skips["missing_pcm"] += 1
            return None
        try:
            chunk_id = int(current)
        except ValueError:
            skips["bad_sample"] += 1
            return None
        pcm = decode_pcm(fields["pcm.npy"], skips)
        return None if pcm is None else (chunk_id, pcm)

    try:
        with tarfile.open(path, "r|") as tf:
            for member, key, ext in _file_members(tf):
                if key != current:
                    item = flush()
                    if item is not None:
                        yield item
                    current, fields = key, {}
                fh = tf.extractfile(member)
                if fh is not None and ext in ("pcm.npy", "json"):
                    fields[ext] = fh.read()
            item = flush()
            if item is not None:
                yield item
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("shard %s unreadable past some point: %s", path, exc)
        skips["bad_shard"] += 1


# --- pure batch shaping ----------------------------------------------------------------------


def collate(
    samples: list[tuple[int, np.ndarray, np.ndarray]],
    spec: BatchSpec,
    rng: np.random.Generator,
    random_crop: bool,
    row_rngs: list[np.random.Generator] | None = None,
) -> dict[str, Any]:
    """Crop, pad, normalise and mask one batch of (chunk_id, pcm int16, labels). `row_rngs`: one
    generator per sample for its mask (validation: a chunk's mask whatever batch it is in)."""
    max_len = int(round(spec.max_sample_seconds * SAMPLE_RATE))
    lens = np.array([len(s[1]) for s in samples])
    if spec.crop == "shortest":
        target = np.full(len(samples), min(int(lens.min()), max_len))
    else:
        target = np.minimum(lens, max_len)
    n_cols = int(target.max())
    audio = np.zeros((len(samples), n_cols), dtype=np.float32)
    frames = np.array([n_cnn_frames(int(t)) for t in target])
    n_t = int(frames.max())
    labels = np.zeros((len(samples), n_t), dtype=np.int64)
    for i, (_, pcm, lab) in enumerate(samples):
        spare_frames = (len(pcm) - int(target[i])) // CNN_HOP_SAMPLES
        f0 = int(rng.integers(spare_frames + 1)) if random_crop and spare_frames > 0 else 0
        x = pcm[f0 * CNN_HOP_SAMPLES : f0 * CNN_HOP_SAMPLES + int(target[i])].astype(np.float32) / 32768.0
        if spec.normalize_audio:
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        audio[i, : len(x)] = x
        labels[i, : frames[i]] = lab[f0 : f0 + frames[i]]
    def spans(lengths: np.ndarray, g: np.random.Generator) -> np.ndarray:
        return compute_mask(lengths, n_t, mask_prob=spec.mask_prob, mask_length=spec.mask_length,
                            min_masks=spec.min_masks, rng=g)

    if row_rngs is None:
        mask = spans(frames, rng)
    else:
        mask = np.concatenate([spans(frames[i : i + 1], g) for i, g in enumerate(row_rngs)])
    valid = frame_valid(frames, n_t)
    out: dict[str, Any] = {
        "input_values": torch.from_numpy(audio),
        "attention_mask": None,
        "labels": torch.from_numpy(labels),
        "mask": torch.from_numpy(mask),
        "valid": torch.from_numpy(valid),
        "n_samples": int(target.sum()),
        # scored-frame counts as host numbers: the step's normaliser needs no device sync
        "n_masked": int((mask & valid).sum()),
        "n_unmasked": int((~mask & valid).sum()),
        "chunk_ids": [int(s[0]) for s in samples],
    }
    if spec.crop == "pad" and (target != n_cols).any():
        out["attention_mask"] = torch.from_numpy(
            (np.arange(n_cols)[None, :] < target[:, None]).astype(np.int64)
        )
    return out


# --- the catalogue -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ShardEntry:
    """The trainable samples of one shard: chunk ids and where each pcm member's bytes lie."""

    path: Path
    chunk_ids: np.ndarray  # int64, file order
    offsets: np.ndarray  # int64, byte offset of each `.pcm.npy` member's data
    sizes: np.ndarray  # int64, its size in bytes
    frames: np.ndarray  # int64, label frames of each chunk


def catalog_shard(path: Path, labels: LabelIndex, min_frames: int, skips: Counter[str]) -> ShardEntry:
    """Walk one shard's tar headers (no sample data is read) and keep the samples that can train:
    a `.pcm.npy` member, labels for its chunk id, at least `min_frames` label frames."""
    ids, offsets, sizes, frames = [], [], [], []
    try:
        with tarfile.open(path, "r:") as tf:
            for member, key, ext in _file_members(tf):
                if ext != "pcm.npy":
                    continue
                try:
                    chunk_id = int(key)
                except ValueError:
                    skips["bad_sample"] += 1
                    continue
                lab = labels.n_frames(chunk_id)
                if lab is None:
                    skips["no_labels"] += 1
                elif lab < min_frames:
                    skips["shorter_than_min"] += 1
                else:
                    ids.append(chunk_id)
                    offsets.append(member.offset_data)
                    sizes.append(member.size)
                    frames.append(lab)
    except (tarfile.TarError, OSError, EOFError) as exc:
        log.warning("shard %s unreadable past some point: %s", path, exc)
        skips["bad_shard"] += 1
    as64 = lambda x: np.asarray(x, dtype=np.int64)  # noqa: E731
    return ShardEntry(Path(path), as64(ids), as64(offsets), as64(sizes), as64(frames))


@dataclass(frozen=True)
class Catalog:
    """Every trainable sample of a split, flat: sample `i` is in `paths[shard[i]]` at `offsets[i]`."""

    paths: list[Path]
    shard: np.ndarray
    chunk_ids: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    frames: np.ndarray

    def __len__(self) -> int:
        return len(self.chunk_ids)

    def save(self, path: Path, skips: Counter[str]) -> None:
        """One `.npz` (no pickle: paths as a unicode array) that the other ranks load."""
        from ups.atomic import atomic_write

        with atomic_write(path) as fh:
            np.savez(fh, paths=np.array([str(p) for p in self.paths], dtype=np.str_), shard=self.shard,
                     chunk_ids=self.chunk_ids, offsets=self.offsets, sizes=self.sizes, frames=self.frames,
                     skip_names=np.array(sorted(skips), dtype=np.str_),
                     skip_counts=np.array([skips[k] for k in sorted(skips)], dtype=np.int64))

    @classmethod
    def load(cls, path: Path) -> tuple[Catalog, Counter[str]]:
        with np.load(path, allow_pickle=False) as z:
            cat = cls([Path(p) for p in z["paths"].tolist()], z["shard"], z["chunk_ids"], z["offsets"],
                      z["sizes"], z["frames"])
            return cat, Counter(dict(zip(z["skip_names"].tolist(), z["skip_counts"].tolist(), strict=True)))

    @classmethod
    def of(cls, entries: list[ShardEntry]) -> Catalog:
        cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0, dtype=np.int64)  # noqa: E731
        return cls(
            [e.path for e in entries],
            cat([np.full(len(e.chunk_ids), k, dtype=np.int64) for k, e in enumerate(entries)]),
            cat([e.chunk_ids for e in entries]),
            cat([e.offsets for e in entries]),
            cat([e.sizes for e in entries]),
            cat([e.frames for e in entries]),
        )


def read_sample(cat: Catalog, i: int, handles: dict[int, Any], skips: Counter[str]) -> np.ndarray | None:
    """The int16 pcm of catalogue sample `i`, read at its offset (open files kept in `handles`)."""
    k = int(cat.shard[i])
    try:
        fh = handles.get(k)
        if fh is None:
            if len(handles) >= 64:  # bound the open files of one worker
                handles.pop(next(iter(handles))).close()
            fh = handles[k] = open(cat.paths[k], "rb")  # noqa: SIM115 (closed by the caller)
        fh.seek(int(cat.offsets[i]))
        return decode_pcm(fh.read(int(cat.sizes[i])), skips)
    except OSError as exc:
        log.warning("shard %s unreadable: %s", cat.paths[k], exc)
        skips["bad_shard"] += 1
        return None


# --- the dataset -----------------------------------------------------------------------------


class ShardBatches(IterableDataset):
    """Micro-batches of one split for one rank, in the global order of `ups.data_order`.

    Training: from the position `set_start` gives, epoch after epoch (the trainer counts steps
    and epochs; the iterator, created once per run, never ends). Validation: every chunk once,
    masks seeded per chunk, so `valid/loss` does not depend on the number of ranks or workers."""

    def __init__(
        self,
        shard_dir: Path,
        label_dir: Path,
        spec: BatchSpec,
        *,
        seed: int,
        train: bool,
        rank: int = 0,
        world_size: int = 1,
        max_batches: int | None = None,
        catalog: tuple[Catalog, Counter[str]] | None = None,
    ) -> None:
        super().__init__()
        self.shards = list_shards(shard_dir)
        self.max_batches = max_batches  # validation: the first N batches of all ranks together
        self.label_dir = Path(label_dir)
        self.spec = spec
        self.seed = seed
        self.train = train
        self.rank = rank
        self.world_size = world_size
        self.start = (0, 0)
        self.global_batch = spec.batch_size * world_size
        self._labels = LabelIndex(self.label_dir)
        self.catalog_skips: Counter[str]  # counted once, when the shards are catalogued
        if catalog is not None:  # walked once by one rank (`Catalog.save`)
            self.catalog, self.catalog_skips = catalog
            return
        min_len = max(int(round(spec.min_sample_seconds * SAMPLE_RATE)), 400)
        self.catalog_skips = Counter()
        self.catalog = Catalog.of([catalog_shard(p, self._labels, n_cnn_frames(min_len), self.catalog_skips)
                                   for p in self.shards])

    @property
    def n_samples(self) -> int:
        """Trainable samples of the split (after the catalogue's checks)."""
        return len(self.catalog)

    def set_start(self, epoch: int, step: int, global_batch: int) -> None:
        """Where the next iterator begins, and the global batch it deals (set before `iter`)."""
        self.start = (epoch, step)
        self.global_batch = global_batch

    def schedule(self) -> Iterator[MicroBatch]:
        """This rank's micro-batches, in the order the trainer consumes them."""
        cat = self.catalog
        if self.train:
            yield from rank_schedule(
                cat.frames, seed=self.seed, global_batch=self.global_batch,
                batch_size=self.spec.batch_size, rank=self.rank, world_size=self.world_size,
                start_epoch=self.start[0], start_step=self.start[1],
            )
            return
        batches = valid_batches(cat.frames, cat.chunk_ids, self.spec.batch_size)[: self.max_batches]
        for b in range(self.rank, len(batches), self.world_size):
            yield MicroBatch(0, b, b, batches[b])

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        handles: dict[int, Any] = {}
        try:
            for mb in worker_share(self.schedule(), worker, n_workers):
                yield self.micro_batch(mb, handles)
        finally:
            for fh in handles.values():
                fh.close()

    def micro_batch(self, mb: MicroBatch, handles: dict[int, Any] | None = None) -> dict[str, Any]:
        """Read, crop and mask one micro-batch; unreadable samples are counted and left out."""
        skips: Counter[str] = Counter()
        handles = {} if handles is None else handles
        samples = []
        for i in mb.indices.tolist():
            pcm = read_sample(self.catalog, i, handles, skips)
            if pcm is None:
                continue
            chunk_id = int(self.catalog.chunk_ids[i])
            labels = self._labels.get(chunk_id)
            if labels is None:  # the catalogue checked; labels changed under a running job
                skips["no_labels"] += 1
            elif len(labels) != n_cnn_frames(len(pcm)):
                skips["label_length_mismatch"] += 1
            else:
                samples.append((chunk_id, pcm, labels))
        where = {"epoch": mb.epoch, "step": mb.step, "skips": dict(skips)}
        if not samples:
            return {EMPTY: True, "n_masked": 0, "n_unmasked": 0, "n_samples": 0, "chunk_ids": [], **where}
        if self.train:
            rng = np.random.default_rng([self.seed, mb.epoch, mb.step, mb.micro])
            out = collate(samples, self.spec, rng, random_crop=True)
        else:
            rows = [np.random.default_rng([self.seed, 1, s[0]]) for s in samples]
            out = collate(samples, self.spec, rows[0], random_crop=False, row_rngs=rows)
        return {**out, **where}
