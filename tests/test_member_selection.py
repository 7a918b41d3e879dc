"""Member selection maths: files by chunks per byte, the budget, the fewest tars that meet the quotas."""

from __future__ import annotations

import numpy as np
import pytest

from ups import member_selection as msel


def test_files_with_more_chunks_per_byte_first():
    # language 0: file 0 (2 chunks, 100 B), file 1 (5 chunks, 100 B), file 2 (5 chunks, 500 B)
    lang = np.array([0, 0, 0, 1])
    count = np.array([2, 5, 5, 3])
    nbytes = np.array([100.0, 100.0, 500.0, 50.0])
    lay = msel.layout(lang, count, nbytes, np.zeros(4), np.arange(4) / 10, 2)
    assert lay.files.tolist() == [1, 0, 2, 3]
    assert msel.prefix_lengths(lay, np.array([6, 1])).tolist() == [2, 1]  # files 1 and 0
    assert msel.bytes_needed(lay, np.array([2, 1])) == 250.0
    shares = np.array([0.5, 0.5])
    avail = np.array([12, 3]) * (10 / 3600)
    free = msel.fit_budget(lay, shares, avail, 8 * 10 / 3600, 10 / 3600, 0)
    assert free.scale == 1.0 and free.n_chunks.sum() == 8
    assert free.files.tolist() == [1, 3] and free.bytes == 150.0  # 5 + 3 chunks from 2 files
    tight = msel.fit_budget(lay, shares, avail, 8 * 10 / 3600, 10 / 3600, 120)
    assert tight.scale < 1.0 and tight.bytes <= 120 and tight.n_chunks.sum() < 8
    keep = msel.pick(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]), np.array([0.9, 1.0, 0.8, 1.0]),
                     np.array([2, 1]))
    assert keep.tolist() == [True, True, False, True]


def test_open_tars_stops_within_the_tolerance():
    # language 1's quota (all of it, 1 h) lies in three tars: 0.5, 0.25, 0.25 h
    avail = np.array([[9.0, 0.5], [0.0, 0.25], [0.0, 0.25]])
    shares = np.array([0.9, 0.1])
    args = (avail, shares, np.ones(3), np.array([10, 11, 12]), 10.0)
    assert msel.open_tars(*args, tolerance=0.0).tolist() == [0, 1, 2]
    assert msel.open_tars(*args, tolerance=0.025).tolist() == [0, 1]  # 0.25 h of 10 left
    assert msel.open_tars(*args, tolerance=0.05).tolist() == [0]  # 0.5 h of 10 left


@pytest.mark.parametrize("seed", range(20))
def test_open_tars_covers_every_quota_but_the_tolerance(seed):
    from ups import selection as sel

    rng = np.random.default_rng(seed)
    avail = rng.exponential(1.0, (60, 5)) * (rng.random((60, 5)) < 0.3)
    shares = sel.temperature_shares(avail.sum(axis=0), 0.5)
    hours = float(rng.uniform(0.2, 1.2)) * avail.sum()
    quota = sel.water_fill(shares, avail.sum(axis=0), hours)
    for tol in (0.0, 0.01, 0.1):
        opened = msel.open_tars(avail, shares, np.ones(60), np.arange(60), hours, tol)
        uncovered = np.maximum(quota - avail[opened].sum(axis=0), 0.0).sum()
        assert uncovered <= tol * quota.sum() + 1e-9
        assert len(opened) <= int(np.sum(avail.sum(axis=1) > 0))
