from itertools import islice

import numpy as np
import pytest

from tests.train_fixtures import write_corpus
from ups.frames import CNN_HOP_SAMPLES, n_cnn_frames
from ups.train_data import EMPTY, BatchSpec, ShardBatches, collate, count_clusters

SPEC = BatchSpec(
    batch_size=3,
    max_sample_seconds=10.0,
    min_sample_seconds=0.1,
    crop="shortest",
    mask_prob=0.8,
    mask_length=10,
    min_masks=2,
    normalize_audio=False,
)


def _epoch(ds, n_batches, epoch=0, step=0, global_batch=None):
    """The first `n_batches` micro-batches of `ds`'s schedule from (epoch, step)."""
    ds.set_start(epoch, step, global_batch or ds.spec.batch_size * ds.world_size)
    return list(islice(ds, n_batches))


def _ids(batches):
    return [c for b in batches if EMPTY not in b for c in b["chunk_ids"]]


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path, n_train=30, n_valid=6, n_shards=5, seconds=(0.5, 1.5))


def _ranks(corpus, n_ranks, spec=SPEC, train=True, split="train"):
    return [ShardBatches(corpus["audio"] / split, corpus["labels"] / split, spec, seed=0, train=train,
                         rank=r, world_size=n_ranks) for r in range(n_ranks)]


@pytest.mark.parametrize("n_ranks", [2, 4, 8])  # 8 > 5 shards: ranks read every shard
def test_ranks_partition_the_epoch(corpus, n_ranks):
    spec = SPEC.__class__(**{**SPEC.__dict__, "batch_size": 1})
    per_rank = 30 // n_ranks
    seen = [c for ds in _ranks(corpus, n_ranks, spec) for c in _ids(_epoch(ds, per_rank))]
    assert len(seen) == len(set(seen)) == 30 - 30 % n_ranks  # the partial global batch sits out
    assert set(seen) <= set(range(30))


def test_epochs_reshuffle_and_are_reproducible(corpus):
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", SPEC, seed=0, train=True)
    a0 = _ids(_epoch(ds, 10))
    assert _ids(_epoch(ds, 10)) == a0
    assert _ids(_epoch(ds, 10, epoch=1)) != a0
    assert sorted(_ids(_epoch(ds, 10, epoch=1))) == sorted(a0)


def test_a_start_mid_epoch_resumes_the_same_batches(corpus):
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", SPEC, seed=3, train=True,
                      rank=1, world_size=2)
    full = _epoch(ds, 5)  # global batch 6: 5 steps per epoch, one micro-batch each on this rank
    rest = _epoch(ds, 3, step=2)
    for a, b in zip(full[2:], rest, strict=True):
        assert a["chunk_ids"] == b["chunk_ids"] and (a["epoch"], a["step"]) == (b["epoch"], b["step"])
        assert np.array_equal(a["input_values"], b["input_values"])
        assert np.array_equal(a["mask"], b["mask"])


def test_a_start_mid_epoch_reads_no_sample_of_the_steps_before(corpus, monkeypatch):
    import ups.train_data as td

    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", SPEC, seed=3, train=True)
    consumed = {i for b in _epoch(ds, 4) for i in b["chunk_ids"]}
    read = []
    real = td.read_sample
    def spy(cat, i, *a):
        read.append(int(cat.chunk_ids[i]))
        return real(cat, i, *a)

    monkeypatch.setattr(td, "read_sample", spy)
    _epoch(ds, 2, step=4)
    assert read and not consumed & set(read)


def _ramp(n):
    """pcm value = frame index of each sample; labels = frame index."""
    pcm = (np.arange(n) // CNN_HOP_SAMPLES).astype(np.int16)
    return pcm, np.arange(n_cnn_frames(n)).astype(np.int16)


def test_crop_keeps_labels_aligned_and_shortest_has_no_padding():
    samples = [(i, *_ramp(n)) for i, n in enumerate([16000, 20000, 24000])]
    b = collate(
        samples,
        SPEC.__class__(**{**SPEC.__dict__, "max_sample_seconds": 0.5}),
        np.random.default_rng(0),
        random_crop=True,
    )
    assert b["input_values"].shape == (3, 8000) and b["attention_mask"] is None
    assert bool(b["valid"].all())
    for i in range(3):
        first_frame = round(float(b["input_values"][i, 0]) * 32768)
        assert b["labels"][i].tolist() == list(range(first_frame, first_frame + n_cnn_frames(8000)))


def test_pad_mode_never_masks_or_scores_padding():
    spec = SPEC.__class__(**{**SPEC.__dict__, "crop": "pad"})
    samples = [(i, *_ramp(n)) for i, n in enumerate([4000, 16000, 9000])]
    b = collate(samples, spec, np.random.default_rng(0), random_crop=False)
    lengths = [n_cnn_frames(n) for n in (4000, 16000, 9000)]
    assert b["valid"].sum(1).tolist() == lengths
    assert not (b["mask"] & ~b["valid"]).any()
    assert b["attention_mask"].sum(1).tolist() == [4000, 16000, 9000]
    assert float(b["input_values"][0, 4000:].abs().sum()) == 0.0


def test_bad_samples_are_counted(tmp_path, corpus):
    lab = corpus["labels"] / "train"
    ids, offsets, labels = (np.load(lab / f"{n}.npy") for n in ("chunk_ids", "offsets", "labels"))
    per_chunk = [labels[offsets[i] : offsets[i + 1]] for i in range(len(ids))]
    # chunk 0 loses a label frame (length mismatch), chunk 1 disappears from the labels
    keep = [per_chunk[0][:-1]] + per_chunk[2:]
    np.save(lab / "chunk_ids.npy", np.r_[ids[:1], ids[2:]])
    np.save(lab / "offsets.npy", np.r_[[0], np.cumsum([len(x) for x in keep])].astype(np.int64))
    np.save(lab / "labels.npy", np.concatenate(keep))
    spec = SPEC.__class__(**{**SPEC.__dict__, "batch_size": 1})
    ds = ShardBatches(corpus["audio"] / "train", lab, spec, seed=0, train=True)
    skips = dict(ds.catalog_skips)  # found when the shards are catalogued, counted once
    for b in _epoch(ds, ds.n_samples):
        for k, v in b["skips"].items():
            skips[k] = skips.get(k, 0) + v
    assert skips == {"label_length_mismatch": 1, "no_labels": 1}
    assert sum(EMPTY in b for b in _epoch(ds, ds.n_samples)) == 1  # the mismatched chunk's batch


def test_count_clusters(corpus):
    assert count_clusters(corpus["labels"]) == 5


# --- an epoch is every chunk once, whatever the shard sizes -----------------------------------


@pytest.mark.parametrize("batch_size", [1, 3])
def test_uneven_shards_give_every_rank_the_same_number_of_batches(tmp_path, batch_size):
    # Shards follow source tars: 1, 3, 50 and 7 chunks.
    corpus = write_corpus(tmp_path, train_shard_sizes=[1, 3, 50, 7], n_valid=2, seconds=(0.5, 1.0))
    spec = SPEC.__class__(**{**SPEC.__dict__, "batch_size": batch_size})
    ranks = _ranks(corpus, 4, spec)
    per_rank = 61 // (4 * batch_size)
    for epoch in range(2):
        seen = [c for ds in ranks for c in _ids(_epoch(ds, per_rank, epoch=epoch))]
        assert len(seen) == len(set(seen)) == per_rank * 4 * batch_size  # nothing twice
        assert 61 - len(seen) < 4 * batch_size  # at most one partial global batch sits out


def test_validation_covers_every_chunk_once_with_the_same_masks_on_any_number_of_ranks(tmp_path):
    corpus = write_corpus(tmp_path, train_shard_sizes=[1, 3, 50, 7], n_valid=2, seconds=(0.5, 1.0))

    def masks(n_ranks):
        out = {}
        for ds in _ranks(corpus, n_ranks, train=False):
            for b in ds:
                for row, c in enumerate(b["chunk_ids"]):
                    out[c] = (b["mask"][row].numpy().tobytes(), b["input_values"][row].numpy().tobytes())
        return out

    one = masks(1)
    assert sorted(one) == list(range(61))
    assert masks(4) == one and masks(3) == one


def test_a_saved_catalogue_gives_the_same_batches_without_walking_the_shards(corpus, tmp_path, monkeypatch):
    import ups.train_data as td
    from ups.train_data import Catalog

    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", SPEC, seed=0, train=True)
    ds.catalog.save(tmp_path / "train.npz", ds.catalog_skips)
    monkeypatch.setattr(td, "catalog_shard", lambda *a: (_ for _ in ()).throw(AssertionError("walked")))
    other = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", SPEC, seed=0, train=True,
                         catalog=Catalog.load(tmp_path / "train.npz"))
    assert [b["chunk_ids"] for b in _epoch(other, 10)] == [b["chunk_ids"] for b in _epoch(ds, 10)]
    assert other.catalog.paths == ds.catalog.paths and other.catalog_skips == ds.catalog_skips
