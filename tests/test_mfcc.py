import kaldi_native_fbank as knf
import numpy as np
import pytest

from ups.frames import n_cnn_frames
from ups.mfcc import deltas, hubert_mfcc, kaldi_mfcc


def reference_mfcc(x: np.ndarray) -> np.ndarray:
    opts = knf.MfccOptions()
    opts.frame_opts.dither = 0.0
    opts.frame_opts.samp_freq = 16000
    opts.use_energy = False
    opts.mel_opts.num_bins = 23
    m = knf.OnlineMfcc(opts)
    m.accept_waveform(16000, x.tolist())
    m.input_finished()
    return np.array([m.get_frame(i) for i in range(m.num_frames_ready)], dtype=np.float64)


def speechlike(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    f0 = 120 + 40 * np.sin(2 * np.pi * 3 * t)
    x = 0.3 * np.sin(2 * np.pi * np.cumsum(f0) / 16000) * (1 + np.sin(2 * np.pi * 4 * t))
    return (x + 0.01 * rng.standard_normal(n)).astype(np.float32)


@pytest.mark.parametrize("n", [400, 401, 720, 16000, 23457])
def test_mfcc_matches_kaldi_native_fbank(n):
    x = speechlike(n, n)
    ours = kaldi_mfcc(x)
    ref = reference_mfcc(x)
    assert ours.shape == ref.shape
    # float32 vs float64 arithmetic: agree to ~1e-3 absolute on values of order 1..50
    np.testing.assert_allclose(ours, ref, atol=2e-3, rtol=1e-4)


def test_mfcc_of_silence_is_floored_not_nan():
    out = kaldi_mfcc(np.zeros(1600, dtype=np.float32))
    assert np.isfinite(out).all()


def test_deltas_match_kaldi_first_order_and_replicate_edges():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((30, 13)).astype(np.float32)
    opts = knf.DeltaOptions()
    opts.order = 1
    opts.window = 2
    ref = knf.compute_deltas(opts, f)[:, 13:]
    np.testing.assert_allclose(deltas(f, 2), ref, atol=1e-5)


def test_deltas_known_answer():
    f = np.arange(5, dtype=np.float32)[:, None]  # a ramp: slope 1 inside, edges replicated
    d = deltas(f, 2)[:, 0]
    # t=0: (1*(1-0) + 2*(2-0)) / 10 = 0.5 ; t=2: (1*2 + 2*4)/10 = 1
    np.testing.assert_allclose(d, [0.5, 0.8, 1.0, 0.8, 0.5])


def test_delta_deltas_are_deltas_of_deltas_like_the_recipe():
    rng = np.random.default_rng(1)
    x = speechlike(16000, 1) + 0.0 * rng.standard_normal(16000).astype(np.float32)
    out = hubert_mfcc(x)
    c = kaldi_mfcc(x)
    np.testing.assert_array_equal(out[:, :13], c[::2])
    np.testing.assert_allclose(out[:, 26:], deltas(deltas(c))[::2], rtol=1e-6)


@pytest.mark.parametrize("n", [0, 1, 399, 400, 559, 560, 719, 720, 721, 1039, 1040, 16000, 160000, 160321])
def test_hubert_mfcc_has_one_row_per_cnn_frame(n):
    out = hubert_mfcc(speechlike(max(n, 1), 3)[:n])
    assert out.shape == (n_cnn_frames(n), 39)
    assert out.dtype == np.float32


def test_frame_j_covers_samples_320j_to_320j_plus_400():
    x = speechlike(16000, 5)
    full = hubert_mfcc(x)
    j = 7
    alone = kaldi_mfcc(x[320 * j: 320 * j + 400])
    np.testing.assert_allclose(full[j, :13], alone[0], rtol=1e-5, atol=1e-5)
