"""The chunks evaluate measures on: listed from shard metadata, seeded picks, equal-length batches."""

from __future__ import annotations

import numpy as np

from tests.train_fixtures import write_corpus
from ups.eval_chunks import iter_batches, pick, scan_shards, to_input
from ups.skips import Skips


def test_pick_draws_without_replacement_seeded_in_input_order():
    rows = [{"chunk_id": i} for i in range(50)]
    a = pick(rows, 10, seed=0, salt=1)
    assert len(a) == 10 and len({r["chunk_id"] for r in a}) == 10
    assert [r["chunk_id"] for r in a] == sorted(r["chunk_id"] for r in a)
    assert a == pick(rows, 10, seed=0, salt=1) and a != pick(rows, 10, seed=0, salt=2)
    assert pick(rows, 0, 0, 0) == rows and pick(rows, 80, 0, 0) == rows  # 0 or more than there are: all


def test_to_input_scales_as_the_trainer_and_normalises_each_chunk():
    pcm = [np.array([16384, -16384, 0, 0], np.int16), np.array([1000, 9000, 1000, 9000], np.int16)]
    x = to_input(pcm, normalize=False)
    assert x.dtype == np.float32 and x[0].tolist() == [0.5, -0.5, 0.0, 0.0]
    z = to_input(pcm, normalize=True)
    np.testing.assert_allclose(z.mean(axis=1), 0.0, atol=1e-6)
    np.testing.assert_allclose(z.std(axis=1), 1.0, atol=1e-3)


def test_shards_list_every_chunk_and_batches_hold_one_length(tmp_path):
    corpus = write_corpus(tmp_path, n_train=9, n_valid=2, seconds=(1.0, 1.2))
    (corpus["audio"] / "train" / "000009-000.tar").write_bytes(b"not a tar")
    skips = Skips("test")
    rows = scan_shards(corpus["audio"] / "train", skips)
    assert sorted(r["chunk_id"] for r in rows) == list(range(9))
    assert skips.to_dict()["counts"] == {"bad_shard": 1}
    batches = list(iter_batches(rows[:3] + [{**rows[0], "chunk_id": 999}], 2, skips))
    got = [r["chunk_id"] for b in batches for r, _ in b]
    assert sorted(got) == sorted(r["chunk_id"] for r in rows[:3])  # chunk 999 is in no shard
    for b in batches:
        assert len(b) <= 2 and len({len(pcm) for _, pcm in b}) == 1
        for r, pcm in b:
            assert len(pcm) == r["n_samples"] and pcm.dtype == np.int16
