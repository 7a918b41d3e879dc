"""A tar's outputs: feature rows streamed to a .npy written whole at the end, a cut-off file told apart."""

from __future__ import annotations

import numpy as np
import pytest

from ups.tar_output import TRUNCATION_TOLERANCE_S, FeatureSink, truncated


def test_rows_streamed_in_pieces_make_one_npy_equal_to_the_whole(tmp_path):
    rng = np.random.default_rng(0)
    parts = [rng.standard_normal((n, 39)).astype(np.float32) for n in (5, 0, 17, 1)]
    sink = FeatureSink(tmp_path / "train" / "000001.feats.npy", 39)
    sink.BLOCK = 256  # several copy blocks
    for p in parts:
        sink.write(p)
    assert not (tmp_path / "train" / "000001.feats.npy").exists()  # nothing final before finish
    sink.finish()
    got = np.load(tmp_path / "train" / "000001.feats.npy", allow_pickle=False)
    assert got.dtype == np.float32 and np.array_equal(got, np.concatenate(parts))
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["000001.feats.npy"]


def test_rows_of_another_width_are_refused_and_abort_leaves_nothing(tmp_path):
    sink = FeatureSink(tmp_path / "f.feats.npy", 39)
    sink.write(np.zeros((2, 39), np.float32))
    with pytest.raises(ValueError, match=r"expected \(n, 39\)"):
        sink.write(np.zeros((2, 13), np.float32))
    sink.abort()
    assert list(tmp_path.iterdir()) == []


def test_a_file_is_truncated_only_when_it_ends_well_before_what_was_asked_and_indexed():
    tol = TRUNCATION_TOLERANCE_S
    assert truncated(100.0, 120.0, 180.0)  # decoding stopped 20 s short
    assert not truncated(120.0 - tol / 2, 120.0, 180.0)  # within the tolerance
    assert not truncated(100.0, 120.0, None)  # no indexed duration: nothing to compare
    assert not truncated(100.0, 120.0, 100.0 + tol / 2)  # the file is that short by its index
