import numpy as np
import pytest

from tests.train_fixtures import write_corpus
from ups.frames import CNN_HOP_SAMPLES, n_cnn_frames
from ups.train_data import END, BatchSpec, ShardBatches, bucketed, collate, count_clusters, shuffled

SPEC = BatchSpec(
    batch_size=3,
    max_sample_seconds=10.0,
    min_sample_seconds=0.1,
    crop="shortest",
    mask_prob=0.8,
    mask_length=10,
    min_masks=2,
    normalize_audio=False,
    shuffle_buffer=5,
    open_shards=2,
    bucket_batches=2,
)


def _ids(batches):
    return [c for b in batches if END not in b for c in b["chunk_ids"]]


@pytest.fixture
def corpus(tmp_path):
    return write_corpus(tmp_path, n_train=30, n_valid=6, n_shards=5, seconds=(0.5, 1.5))


@pytest.mark.parametrize("n_streams", [2, 4, 8])  # 8 > 5 shards: streams share shards
def test_streams_partition_the_epoch(corpus, n_streams):
    spec = SPEC.__class__(**{**SPEC.__dict__, "batch_size": 1})
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", spec, seed=0, train=True)
    seen = []
    for s in range(n_streams):
        seen += _ids(ds.iter_stream(s, n_streams))
    assert len(seen) == len(set(seen)) == 30 - 30 % n_streams  # the remainder sits this epoch out
    assert set(seen) <= set(range(30))


def test_epochs_reshuffle_and_are_reproducible(corpus):
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", SPEC, seed=0, train=True)
    a0 = _ids(ds.iter_stream(0, 1))
    assert _ids(ds.iter_stream(0, 1)) == a0
    ds.set_position(1, [])
    assert _ids(ds.iter_stream(0, 1)) != a0


def test_skipping_batches_resumes_the_same_stream(corpus):
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", SPEC, seed=3, train=True)
    full = [b for b in ds.iter_stream(1, 2) if END not in b]
    rest = [b for b in ds.iter_stream(1, 2, skip=2) if END not in b]
    assert len(rest) == len(full) - 2
    for a, b in zip(full[2:], rest, strict=True):
        assert a["chunk_ids"] == b["chunk_ids"]
        assert np.array_equal(a["input_values"], b["input_values"])
        assert np.array_equal(a["mask"], b["mask"])


def test_buckets_group_similar_lengths():
    items = list(np.random.default_rng(0).permutation(40))
    batches = list(bucketed(iter(items), lambda x: x, 4, 10, np.random.default_rng(1), drop_last=True))
    assert sorted(x for b in batches for x in b) == sorted(items)
    assert all(max(b) - min(b) == 3 for b in batches)


def test_shuffle_buffer_keeps_every_item():
    out = list(shuffled(iter(range(100)), 10, np.random.default_rng(0)))
    assert sorted(out) == list(range(100)) and out != list(range(100))


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
    ds = ShardBatches(corpus["audio"] / "train", lab, SPEC, seed=0, train=True)
    skips = dict(ds.catalog_skips)  # found when the shards are catalogued, counted once
    for b in ds.iter_stream(0, 1):
        for k, v in b["skips"].items():
            skips[k] = skips.get(k, 0) + v
    assert skips == {"label_length_mismatch": 1, "no_labels": 1}


def test_count_clusters(corpus):
    assert count_clusters(corpus["labels"]) == 5


# --- an epoch is every chunk once, whatever the shard sizes; batches mix files ----------------


def _stream_batches(ds, n_streams):
    return [[b for b in ds.iter_stream(s, n_streams) if END not in b] for s in range(n_streams)]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_uneven_shards_give_every_stream_the_same_number_of_batches(tmp_path, batch_size):
    # Shards follow source tars: 1, 3, 50 and 7 chunks. Dealt whole to 4 streams, one stream got
    # 50 chunks and another 1, and the epoch ended at the first stream's end (37-85 % of the data).
    corpus = write_corpus(tmp_path, train_shard_sizes=[1, 3, 50, 7], n_valid=2, seconds=(0.5, 1.0))
    spec = SPEC.__class__(**{**SPEC.__dict__, "batch_size": batch_size})
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", spec, seed=0, train=True)
    for epoch in range(2):
        ds.set_position(epoch, [])
        streams = _stream_batches(ds, 4)
        counts = {len(s) for s in streams}
        assert len(counts) == 1, [len(s) for s in streams]
        seen = [c for s in streams for b in s for c in b["chunk_ids"]]
        assert len(seen) == len(set(seen))  # nothing twice
        assert 61 - len(seen) < 4 * batch_size  # at most one partial batch per stream dropped
        assert ds.batches_per_stream(4) == counts.pop()


def test_validation_streams_cover_every_chunk_once(tmp_path):
    corpus = write_corpus(tmp_path, train_shard_sizes=[1, 3, 50, 7], n_valid=2, seconds=(0.5, 1.0))
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", SPEC, seed=0, train=False)
    seen = [c for s in _stream_batches(ds, 4) for b in s for c in b["chunk_ids"]]
    assert sorted(seen) == list(range(61))


def _same_file_share(batches, per_file):
    pairs = same = 0
    for ids in batches:
        files = [c // per_file for c in ids]
        for i in range(len(files)):
            for j in range(i + 1, len(files)):
                pairs += 1
                same += files[i] == files[j]
    return same / pairs


def test_batches_mix_files_like_random_batches_of_the_same_pools(tmp_path):
    # Every UPS chunk is 10 s and chunk ids follow (tar, file, start): sorting a pool by
    # (length, chunk_id) made each batch a run of neighbouring chunks of one recording.
    per_file, bs, pool = 8, 8, 4
    corpus = write_corpus(
        tmp_path, n_train=320, n_valid=2, n_shards=5, seconds=(1.0, 1.0), chunks_per_file=per_file
    )
    spec = SPEC.__class__(
        **{**SPEC.__dict__, "batch_size": bs, "shuffle_buffer": 64, "open_shards": 2, "bucket_batches": pool}
    )
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", spec, seed=0, train=True)
    batches = [b["chunk_ids"] for b in ds.iter_stream(0, 1) if END not in b]
    ours = _same_file_share(batches, per_file)
    rng = np.random.default_rng(0)
    ref = []
    for k in range(0, len(batches) - pool + 1, pool):  # the batches of one pool are consecutive
        ids = [c for b in batches[k : k + pool] for c in b]
        for _ in range(20):
            perm = rng.permutation(ids)
            ref.append(_same_file_share([perm[i : i + bs] for i in range(0, len(perm), bs)], per_file))
    assert ours < 1.5 * float(np.mean(ref)) + 0.02, (ours, float(np.mean(ref)))
