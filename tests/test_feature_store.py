"""ups.feature_store: the per-tar MFCC files prepare-audio writes, and layer features streamed from shards."""

from __future__ import annotations

import numpy as np
import pytest

from ups.feature_store import iter_layer_features, iter_pcm, list_tars
from ups.shards import ShardWriter


def _features(root, split: str, tar: int, frames: list[int]) -> None:
    d = root / split
    d.mkdir(parents=True, exist_ok=True)
    offsets = np.concatenate([[0], np.cumsum(frames)]).astype(np.int64)
    np.save(d / f"{tar:06d}.feats.npy", np.arange(offsets[-1] * 39, dtype=np.float32).reshape(-1, 39))
    np.save(d / f"{tar:06d}.chunk_ids.npy", np.arange(tar * 100, tar * 100 + len(frames), dtype=np.int64))
    np.save(d / f"{tar:06d}.offsets.npy", offsets)


def _shards(root, split: str, tar: int, ids: list[int], per_shard: int) -> None:
    w = ShardWriter(root / split, tar, max_samples=per_shard)
    for cid in ids:
        w.write(f"c{cid}", np.full(160 * (1 + cid % 5), cid % 30000, np.int16), {"chunk_id": cid})
    w.close()


def test_list_tars_reads_every_tar_of_a_split_in_order_and_maps_the_rows(tmp_path):
    _features(tmp_path, "train", 12, [3, 5])
    _features(tmp_path, "train", 3, [4])
    _features(tmp_path, "valid", 7, [2])
    tars = list_tars(tmp_path, "train")
    assert [t.tar for t in tars] == [3, 12]
    assert tars[1].chunk_ids.tolist() == [1200, 1201] and tars[1].n_frames == 8
    rows = tars[1].mfcc()
    assert isinstance(rows, np.memmap) and rows.shape == (8, 39) and rows[7, 38] == 8 * 39 - 1
    assert list_tars(tmp_path, "test") == []


def test_list_tars_refuses_ids_and_offsets_that_disagree(tmp_path):
    _features(tmp_path, "train", 5, [3, 5])
    np.save(tmp_path / "train/000005.offsets.npy", np.array([0, 3], np.int64))
    with pytest.raises(ValueError, match=r"000005\.feats\.npy: 2 chunk ids but 2 offsets"):
        list_tars(tmp_path, "train")


def test_iter_pcm_reads_one_tars_shards_in_shard_order(tmp_path):
    _shards(tmp_path, "train", 4, [40, 41, 42, 43, 44], per_shard=2)  # three shards
    _shards(tmp_path, "train", 5, [50], per_shard=2)
    got = list(iter_pcm(tmp_path, "train", 4))
    assert [cid for cid, _ in got] == [40, 41, 42, 43, 44]
    assert all(pcm.dtype == np.int16 and pcm.size == 160 * (1 + cid % 5) for cid, pcm in got)


class _Recorder:
    """An extractor that records how many PCMs it was handed at once."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def batches(self, pcms):
        self.calls.append(len(pcms))
        for i, p in enumerate(pcms):
            yield [i], np.full((1, 1, 4), float(p.size), np.float32)


def test_layer_features_stream_at_most_read_chunks_pcms_at_a_time(tmp_path):
    ids = list(range(300, 307))
    _features(tmp_path / "features", "train", 3, [1] * len(ids))
    _shards(tmp_path / "audio", "train", 3, ids, per_shard=3)
    (tf,) = list_tars(tmp_path / "features", "train")
    rec = _Recorder()
    got = list(iter_layer_features(tf, tmp_path / "audio", "train", rec, read_chunks=3))
    assert rec.calls == [3, 3, 1]
    assert [cid for batch, _ in got for cid in batch] == ids
    assert [float(h[0, 0, 0]) for _, h in got] == [160.0 * (1 + cid % 5) for cid in ids]


def test_layer_features_of_wanted_chunks_only_and_a_missing_chunk_named(tmp_path):
    ids = list(range(300, 306))
    _features(tmp_path / "features", "train", 3, [1] * len(ids))
    _shards(tmp_path / "audio", "train", 3, ids[:-1], per_shard=4)  # the last chunk was never written
    (tf,) = list_tars(tmp_path / "features", "train")
    got = list(iter_layer_features(tf, tmp_path / "audio", "train", _Recorder(), wanted={301, 304}))
    assert sorted(cid for batch, _ in got for cid in batch) == [301, 304]
    with pytest.raises(ValueError, match=r"shards of tar 000003 \(train\) lack chunk\(s\) \[305\]"):
        list(iter_layer_features(tf, tmp_path / "audio", "train", _Recorder()))
