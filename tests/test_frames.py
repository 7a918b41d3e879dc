from hypothesis import given
from hypothesis import strategies as st

from ups.frames import n_frames


def test_known_values():
    assert n_frames(0) == 0
    assert n_frames(399) == 0
    assert n_frames(400) == 1
    assert n_frames(719) == 1
    assert n_frames(720) == 2
    assert n_frames(160000) == 499  # 10 s


@given(st.integers(min_value=400, max_value=10_000_000))
def test_matches_conv_stack(n):
    length = n
    for k, s in zip([10, 3, 3, 3, 3, 2, 2], [5, 2, 2, 2, 2, 2, 2], strict=True):
        length = (length - k) // s + 1
    assert n_frames(n) == length
