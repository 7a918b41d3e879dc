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
    v = sel.hold_out_files(file, lang, np.ones(100), 0.1, np.random.default_rng(0))
    for f in range(20):
        assert len(set(v[file == f].tolist())) == 1
    assert 10 <= v.sum() <= 15
    one = sel.hold_out_files(np.zeros(3, int), np.array(["yo"] * 3, dtype=object), np.ones(3), 0.5,
                          np.random.default_rng(0))
    assert not one.any()


def test_rank_within():
    r = sel.rank_within(np.array([1, 1, 2, 1]), np.array([0.1, 0.9, 0.5, 0.5]))
    assert r.tolist() == [2, 0, 0, 1]


def _held_out(n_files: int, chunks_per_file, fraction: float, seed: int = 0):
    sizes = np.asarray(chunks_per_file if not np.isscalar(chunks_per_file) else [chunks_per_file] * n_files)
    file = np.repeat(np.arange(n_files), sizes)
    lang = np.array(["xx"] * len(file), dtype=object)
    v = sel.hold_out_files(file, lang, np.ones(len(file)), fraction, np.random.default_rng(seed))
    return v, file, sizes


def test_split_valid_never_overshoots_by_more_than_one_file():
    # 2 files of 4 chunks at 0.15: the old loop put one file (50 %) in valid; 8 of 9 chunks for
    # a language with a big and a small file
    v, _, _ = _held_out(2, 4, 0.15)
    assert v.sum() == 0
    for seed in range(20):
        v, file, sizes = _held_out(2, [8, 1], 0.15, seed)
        assert v.sum() <= 0.15 * 9 + 1  # at most the small file
    for n_files, expect in ((1, 0), (2, 0), (3, 0), (50, 7)):
        v, file, sizes = _held_out(n_files, 3, 0.15)
        assert v.sum() == 3 * expect, n_files  # 50 files: 7.5 to hold, 7 as close as 8, never 8+
        assert len(set(file[v].tolist()) & set(file[~v].tolist())) == 0
    # with a fraction that whole files can meet, the closest count is taken
    for n_files, fraction, expect in ((2, 0.5, 1), (3, 0.3, 1), (3, 0.5, 1), (50, 0.05, 2)):
        v, _, _ = _held_out(n_files, 2, fraction)
        assert v.sum() == 2 * expect, (n_files, fraction)
    # unequal files: held-out within one file of the goal and never all files
    rng = np.random.default_rng(1)
    for seed in range(30):
        sizes = rng.integers(1, 30, size=int(rng.integers(1, 60)))
        v, file, _ = _held_out(len(sizes), sizes, 0.1, seed)
        goal = 0.1 * sizes.sum()
        assert v.sum() <= goal + sizes.max() / 2
        assert (~v).any()
        smallest_out = sizes[np.setdiff1d(np.arange(len(sizes)), file[v])].min()
        assert v.sum() >= goal - smallest_out or abs(v.sum() - goal) <= abs(v.sum() + smallest_out - goal)


def test_split_valid_leaves_out_files_already_held_out():
    file = np.repeat(np.arange(10), 2)
    lang = np.array(["xx"] * 20, dtype=object)
    taken = np.isin(file, [0, 1, 2])
    v = sel.hold_out_files(file, lang, np.ones(20), 0.2, np.random.default_rng(0), exclude=taken)
    assert not (v & taken).any() and v.sum() == 4  # 20 % of all the language's hours, from the rest
