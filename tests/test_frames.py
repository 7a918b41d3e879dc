from hypothesis import given
from hypothesis import strategies as st

from ups.frames import chunk_samples, n_cnn_frames, n_mfcc_frames


def cnn_output_length(n: int) -> int:
    """HuBERT's conv stack layer by layer: (kernel, stride) of the 7 feature-encoder convolutions."""
    for kernel, stride in [(10, 5), (3, 2), (3, 2), (3, 2), (3, 2), (2, 2), (2, 2)]:
        n = (n - kernel) // stride + 1
        if n <= 0:
            return 0
    return n


def test_known_values():
    assert n_cnn_frames(0) == 0
    assert n_cnn_frames(399) == 0
    assert n_cnn_frames(400) == 1
    assert n_cnn_frames(719) == 1
    assert n_cnn_frames(720) == 2
    assert n_cnn_frames(160000) == 499  # 10 s: floor(159600 / 320) + 1
    assert n_cnn_frames(160080) == 500
    assert n_cnn_frames(160079) == 499


def test_matches_conv_stack_for_every_length_up_to_5_s():
    for k in range(80000):
        assert n_cnn_frames(k) == cnn_output_length(k), k


@given(st.integers(min_value=0, max_value=10**8))
def test_every_second_mfcc_frame_is_one_cnn_frame(n):
    assert (n_mfcc_frames(n) + 1) // 2 == n_cnn_frames(n)


def test_chunk_samples_rounds_start_and_duration():
    assert chunk_samples(0.0, 10.0) == (0, 160000)
    assert chunk_samples(1.23456, 11.23456) == (19753, 160000)
