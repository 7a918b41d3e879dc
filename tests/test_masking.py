import numpy as np
import pytest

from ups.masking import compute_mask, frame_valid


def test_about_half_the_frames_masked():
    rng = np.random.default_rng(0)
    m = compute_mask([500] * 64, 500, mask_prob=0.8, mask_length=10, min_masks=2, rng=rng)
    frac = m.mean()
    assert 0.45 < frac < 0.65, frac  # 1 - (1 - 0.08)^10 = 0.57 expected with overlaps


def test_spans_are_mask_length_runs():
    rng = np.random.default_rng(1)
    m = compute_mask([200], 200, mask_prob=0.1, mask_length=10, rng=rng)
    runs = np.diff(np.flatnonzero(np.diff(np.r_[0, m[0].astype(int), 0])))[::2]
    assert (runs >= 10).all() or m[0, -10:].any()  # overlaps merge runs; only the edge can clip


def test_padding_never_masked():
    rng = np.random.default_rng(2)
    lengths = [50, 120, 7, 0]
    m = compute_mask(lengths, 120, mask_prob=0.8, mask_length=10, min_masks=2, rng=rng)
    assert not (m & ~frame_valid(lengths, 120)).any()
    assert m[0, :50].any() and m[1].any()
    assert not m[3].any()


def test_deterministic_for_a_generator_seed():
    a = compute_mask([300, 250], 300, mask_prob=0.8, mask_length=10, rng=np.random.default_rng(5))
    b = compute_mask([300, 250], 300, mask_prob=0.8, mask_length=10, rng=np.random.default_rng(5))
    c = compute_mask([300, 250], 300, mask_prob=0.8, mask_length=10, rng=np.random.default_rng(6))
    assert (a == b).all() and (a != c).any()


def test_same_count_trims_to_fewest():
    m = compute_mask([300, 100], 300, mask_prob=0.8, mask_length=10, same_count=True,
                     rng=np.random.default_rng(3))
    assert m[0].sum() == m[1].sum() > 0


def test_min_masks_on_short_rows():
    m = compute_mask([30], 30, mask_prob=0.0, mask_length=10, min_masks=2, rng=np.random.default_rng(0))
    assert 10 <= m.sum() <= 20


def test_bad_arguments():
    with pytest.raises(ValueError, match="mask_prob"):
        compute_mask([10], 10, mask_prob=1.5, mask_length=2, rng=np.random.default_rng())
    with pytest.raises(ValueError, match="lengths"):
        compute_mask([11], 10, mask_prob=0.5, mask_length=2, rng=np.random.default_rng())
