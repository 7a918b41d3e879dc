"""Training batches from the pre-decoded WebDataset shards and the frame labels.

One epoch of one *stream* (a DataLoader worker on one rank; `n_streams` = ranks x workers) is a
pure function of (seed, epoch, stream index). When the dataset is built, each shard's tar
headers are walked once (no audio is read) into a catalogue of its trainable samples: chunk id,
byte offset of the pcm member, label frames. Every epoch the shard order is reshuffled and the
catalogued samples, in that order, are cut into `n_streams` runs of exactly the same length
(`plan_streams`): an epoch is every chunk once across all ranks and workers, whatever the shard
sizes, and every stream yields the same number of batches (the remainder, fewer than
`n_streams` samples, sits out that epoch; the next shard order moves it). A stream reads its
runs `open_shards` at a time, interleaved, through a shuffle buffer of `shuffle_buffer` samples;
samples are gathered in pools of `bucket_batches` batches, sorted by length with ties broken at
random (so a batch mixes recordings) and cut into batches (length bucketing), and the batch
order within a pool is shuffled. Each batch is cropped and masked with a generator seeded by
(seed, epoch, stream, batch index), so a resumed run that skips the batches it already consumed
sees exactly the same batches as a run never stopped.

Each stream ends with an `END` batch. A sample that turns out unreadable only when read makes
its stream one sample short: the trainer then ends the epoch for every rank at the first END
(the step's vote), so all ranks always run the same number of steps.

Crop modes: `shortest` crops every sample of a batch to the batch's shortest (at most
`max_sample_seconds`) at a random frame-aligned offset, so no compute goes to padding (fairseq's
HuBERT recipe); `pad` crops to `max_sample_seconds` only and zero-pads, with an attention mask;
padded frames are never masked or scored (the trainer refuses `pad` for group-norm CNNs).
"""

from __future__ import annotations

import io
import logging
import tarfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import torch
from torch.utils.data import IterableDataset, get_worker_info

from ups.frames import CNN_HOP_SAMPLES, SAMPLE_RATE, n_cnn_frames
from ups.masking import compute_mask, frame_valid

log = logging.getLogger(__name__)

END = "end"


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
    shuffle_buffer: int
    open_shards: int
    bucket_batches: int


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


def shuffled(items: Iterator[Any], size: int, rng: np.random.Generator) -> Iterator[Any]:
    """A shuffle buffer of `size` items (size <= 1: pass through)."""
    if size <= 1:
        yield from items
        return
    buf: list[Any] = []
    for x in items:
        if len(buf) < size:
            buf.append(x)
            continue
        j = int(rng.integers(size))
        yield buf[j]
        buf[j] = x
    order = rng.permutation(len(buf))
    for j in order:
        yield buf[j]


def bucketed(
    samples: Iterator[Any],
    length: Any,
    batch_size: int,
    pool_batches: int,
    rng: np.random.Generator | None,
    drop_last: bool,
) -> Iterator[list[Any]]:
    """Pools of `pool_batches * batch_size` samples sorted by length, cut into batches, the batch
    order shuffled by `rng` (None: kept). An incomplete last batch is dropped if `drop_last`."""
    pool_size = batch_size * max(1, pool_batches)
    pool: list[Any] = []

    def cut(pool: list[Any]) -> list[list[Any]]:
        pool = sorted(pool, key=length)
        batches = [pool[i : i + batch_size] for i in range(0, len(pool), batch_size)]
        if drop_last and batches and len(batches[-1]) < batch_size:
            batches.pop()
        if rng is not None:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    for s in samples:
        pool.append(s)
        if len(pool) == pool_size:
            yield from cut(pool)
            pool = []
    if pool:
        yield from cut(pool)


def collate(
    samples: list[tuple[int, np.ndarray, np.ndarray]],
    spec: BatchSpec,
    rng: np.random.Generator,
    random_crop: bool,
) -> dict[str, Any]:
    """Crop, pad, normalise and mask one batch of (chunk_id, pcm int16, labels)."""
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
    mask = compute_mask(
        frames, n_t, mask_prob=spec.mask_prob, mask_length=spec.mask_length, min_masks=spec.min_masks, rng=rng
    )
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


# --- which samples each stream reads -----------------------------------------------------------


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


def plan_streams(
    counts: list[int], order: list[int], n_streams: int, equal: bool
) -> list[list[tuple[int, int, int]]]:
    """Cut the samples of the shards, taken in `order`, into `n_streams` contiguous runs:
    `(shard, first, stop)` ranges per stream. `equal`: every stream gets the same number of
    samples (the remainder, fewer than `n_streams`, sits out this epoch); else the first
    `total % n_streams` streams take one more, so every sample is in exactly one stream.

    Sample counts, not whole shards: source tars make shards of very uneven sizes, and dealing
    them whole left some streams with 50 chunks and others with 1."""
    total = sum(counts[i] for i in order)
    base, extra = divmod(total, n_streams)
    bounds = [0]
    for s in range(n_streams):
        bounds.append(bounds[-1] + base + (0 if equal or s >= extra else 1))
    plan: list[list[tuple[int, int, int]]] = [[] for _ in range(n_streams)]
    pos = 0  # position of the current shard's first sample in the concatenation
    for shard in order:
        n = counts[shard]
        for s in range(n_streams):
            lo, hi = max(bounds[s], pos), min(bounds[s + 1], pos + n)
            if lo < hi:
                plan[s].append((shard, lo - pos, hi - pos))
        pos += n
    return plan


def read_samples(
    entry: ShardEntry, first: int, stop: int, skips: Counter[str]
) -> Iterator[tuple[int, np.ndarray]]:
    """(chunk_id, int16 pcm) of samples `first:stop` of a catalogued shard, read at their offsets."""
    try:
        with open(entry.path, "rb") as fh:
            for i in range(first, stop):
                fh.seek(int(entry.offsets[i]))
                pcm = decode_pcm(fh.read(int(entry.sizes[i])), skips)
                if pcm is not None:
                    yield int(entry.chunk_ids[i]), pcm
    except OSError as exc:
        log.warning("shard %s unreadable: %s", entry.path, exc)
        skips["bad_shard"] += 1


# --- the dataset -----------------------------------------------------------------------------


class ShardBatches(IterableDataset):
    """Batches of one split for one rank; DataLoader workers split it further (see module doc)."""

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
    ) -> None:
        super().__init__()
        self.shards = list_shards(shard_dir)
        self.label_dir = Path(label_dir)
        self.spec = spec
        self.seed = seed
        self.train = train
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0
        self.skip_per_worker: list[int] = []  # batches to skip, per worker (resume)
        self._labels = LabelIndex(self.label_dir)
        min_len = max(int(round(spec.min_sample_seconds * SAMPLE_RATE)), 400)
        self.catalog_skips: Counter[str] = Counter()  # counted once, when the shards are listed
        self.entries = [catalog_shard(p, self._labels, n_cnn_frames(min_len), self.catalog_skips)
                        for p in self.shards]

    @property
    def n_samples(self) -> int:
        """Trainable samples of the split (after the catalogue's checks)."""
        return sum(len(e.chunk_ids) for e in self.entries)

    def batches_per_stream(self, n_streams: int) -> int:
        """Full batches every training stream yields per epoch (the same for all streams)."""
        return (self.n_samples // n_streams) // self.spec.batch_size

    def set_position(self, epoch: int, skip_per_worker: list[int]) -> None:
        self.epoch = epoch
        self.skip_per_worker = list(skip_per_worker)

    def _stream(self) -> tuple[int, int, int]:
        info = get_worker_info()
        worker, n_workers = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * n_workers + worker, self.world_size * n_workers, worker

    def __iter__(self) -> Iterator[dict[str, Any]]:
        stream, n_streams, worker = self._stream()
        skip = self.skip_per_worker[worker] if worker < len(self.skip_per_worker) else 0
        yield from self.iter_stream(stream, n_streams, skip)

    def iter_stream(self, stream: int, n_streams: int, skip: int = 0) -> Iterator[dict[str, Any]]:
        spec = self.spec
        epoch = self.epoch if self.train else 0
        rng = np.random.default_rng([self.seed, epoch, stream, 0])
        order = list(range(len(self.entries)))
        if self.train:  # one shard order per epoch, shared by every stream
            order = [int(i) for i in np.random.default_rng([self.seed, epoch]).permutation(len(order))]
        ranges = plan_streams([len(e.chunk_ids) for e in self.entries], order, n_streams, equal=self.train)
        skips: Counter[str] = Counter()
        samples = self._samples(ranges[stream], skips)
        if self.train:
            samples = shuffled(samples, spec.shuffle_buffer, rng)
        # Ties in length (every UPS chunk is 10 s) are broken at random, not by chunk id: ids
        # follow (tar, file, start), so sorted ids made a batch a run of one recording's chunks.
        keyed = ((len(s[1]), float(rng.random()) if self.train else 0.0, s) for s in samples)
        batches = bucketed(
            keyed,
            lambda k: (k[0], k[1]),
            spec.batch_size,
            spec.bucket_batches,
            rng if self.train else None,
            drop_last=self.train,
        )
        for b, batch in enumerate(batches):
            if b < skip:
                continue
            brng = np.random.default_rng([self.seed, epoch, stream, b + 1])
            out = collate([k[2] for k in batch], spec, brng, random_crop=self.train)
            out["skips"] = dict(skips)
            skips.clear()
            yield out
        yield {END: True, "skips": dict(skips)}

    def _samples(
        self, ranges: list[tuple[int, int, int]], skips: Counter[str]
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        readers = [read_samples(self.entries[shard], lo, hi, skips) for shard, lo, hi in ranges]
        for chunk_id, pcm in interleave(readers, self.spec.open_shards):
            labels = self._labels.get(chunk_id)
            if labels is None:  # the catalogue checked; labels changed under a running job
                skips["no_labels"] += 1
                continue
            if len(labels) != n_cnn_frames(len(pcm)):
                skips["label_length_mismatch"] += 1
                continue
            yield chunk_id, pcm, labels


def interleave(iterators: list[Iterator[Any]], width: int) -> Iterator[Any]:
    """Round-robin over `width` iterators at a time, opening the next one when one ends."""
    pending = iter(iterators)
    active: list[Iterator[Any]] = []
    for it in pending:
        active.append(it)
        if len(active) >= max(1, width):
            break
    while active:
        for it in list(active):
            try:
                yield next(it)
            except StopIteration:
                active.remove(it)
                nxt = next(pending, None)
                if nxt is not None:
                    active.append(nxt)
