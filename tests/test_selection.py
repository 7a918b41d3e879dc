"""selection: candidates, temperature, water-filling, tar choice, validation split (pure)."""

from __future__ import annotations

import numpy as np

from ups import selection as sel


def test_chunk_candidates_ratio_and_bounds():
    # one 35 s file: speech 0-10 and 12-20 and 30-35 -> chunks [0,10) 1.0, [10,20) 0.8, [20,30) 0
    c = sel.chunk_candidates(np.array([35.0]), np.array([3]), np.array([0.0, 12.0, 30.0]),
                             np.array([10.0, 20.0, 35.0]), 10.0, 0.8)
    assert c.start_s.tolist() == [0.0, 10.0]
    np.testing.assert_allclose(c.ratio, [1.0, 0.8])
    # the partial last chunk [30, 35) is never a candidate (file bounds)
    c = sel.chunk_candidates(np.array([35.0]), np.array([1]), np.array([25.0]), np.array([35.0]), 10.0, 0.6)
    assert c.start_s.tolist() == []


def test_temperature_and_water_fill():
    n = np.array([1000.0, 10.0])
    assert sel.temperature_shares(n, 1.0)[1] < sel.temperature_shares(n, 0.5)[1] < \
        sel.temperature_shares(n, 0.0)[1] == 0.5
    q = sel.water_fill(np.array([0.5, 0.5]), np.array([100.0, 1.0]), 10.0)
    np.testing.assert_allclose(q, [9.0, 1.0])  # scarce language full, surplus passed on
    q = sel.water_fill(np.array([0.5, 0.5]), np.array([2.0, 1.0]), 10.0)
    np.testing.assert_allclose(q, [2.0, 1.0])  # not enough: all that is there


def test_largest_remainder_exact_total():
    counts = sel.largest_remainder(np.array([3.4, 3.4, 3.2]), 10, np.array([100, 100, 100]))
    assert counts.sum() == 10 and counts.tolist() == [4, 3, 3]


def test_choose_tars_respects_limit_and_prefers_coverage():
    avail = np.array([[5.0, 0.0], [0.0, 5.0], [3.0, 3.0]])
    quota = np.array([3.0, 3.0])
    chosen = sel.choose_tars(avail, quota, np.array([0.5, 0.5, 0.5]), np.array([1, 2, 3]), 1, 0.0)
    assert chosen.tolist() == [2]
    chosen = sel.choose_tars(avail, np.array([5.0, 5.0]), np.ones(3), np.array([1, 2, 3]), 0, 0.0)
    assert len(chosen) >= 2


def test_split_valid_whole_files():
    file = np.repeat(np.arange(20), 5)
    lang = np.array(["en"] * 100, dtype=object)
    v = sel.split_valid(file, lang, np.ones(100), 0.1, np.random.default_rng(0))
    for f in range(20):
        assert len(set(v[file == f].tolist())) == 1
    assert 10 <= v.sum() <= 15
    one = sel.split_valid(np.zeros(3, int), np.array(["yo"] * 3, dtype=object), np.ones(3), 0.5,
                          np.random.default_rng(0))
    assert not one.any()


def test_rank_within():
    r = sel.rank_within(np.array([1, 1, 2, 1]), np.array([0.1, 0.9, 0.5, 0.5]))
    assert r.tolist() == [2, 0, 0, 1]
