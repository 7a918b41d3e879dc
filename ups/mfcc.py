"""MFCC features as in the HuBERT recipe, in numpy, aligned to the 50 Hz CNN frames.

fairseq's `dump_mfcc_feature.py` computes `torchaudio.compliance.kaldi.mfcc(x, use_energy=False)`
(13 coefficients, 23 mel bins, 25 ms povey window, 10 ms shift, pre-emphasis 0.97, DC removal,
lifter 22, no dither) on float audio in [-1, 1], then `compute_deltas` twice (window 2, edge frames
replicated): 39 dims at 100 Hz. Here the same arithmetic is written in numpy (kaldi-native-fbank
is the independent reference in the tests), then every second frame is kept so that frame j covers
samples [320 j, 320 j + 400), exactly the CNN frame j (see `ups.frames`).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import scipy.fft

from ups.blas import single_threaded
from ups.config import MfccParams
from ups.frames import MFCC_HOP_SAMPLES, MFCC_WINDOW_SAMPLES, SAMPLE_RATE, n_cnn_frames, n_mfcc_frames

FFT_SIZE = 512
_FLT_EPSILON = float(np.finfo(np.float32).eps)
DEFAULT_MFCC = MfccParams()  # the HuBERT recipe's settings


def _mel(f: np.ndarray | float) -> np.ndarray:
    return 1127.0 * np.log(1.0 + np.asarray(f, dtype=np.float64) / 700.0)


@lru_cache(maxsize=8)
def mel_banks(num_bins: int, low_hz: float, high_hz: float) -> np.ndarray:
    """Kaldi's triangular mel filters on the power spectrum, shape (FFT_SIZE // 2 + 1, num_bins).

    Kaldi weighs FFT bins 0 .. FFT_SIZE/2 - 1 only; the Nyquist row stays zero.
    """
    n_fft_bins = FFT_SIZE // 2
    mel_low, mel_high = _mel(low_hz), _mel(high_hz)
    delta = (mel_high - mel_low) / (num_bins + 1)
    mels = _mel(np.arange(n_fft_bins) * (SAMPLE_RATE / FFT_SIZE))
    w = np.zeros((n_fft_bins + 1, num_bins), dtype=np.float64)
    for b in range(num_bins):
        left, center, right = mel_low + b * delta, mel_low + (b + 1) * delta, mel_low + (b + 2) * delta
        up = (mels - left) / (center - left)
        down = (right - mels) / (right - center)
        inside = (mels > left) & (mels < right)
        w[:n_fft_bins, b] = np.where(inside, np.where(mels <= center, up, down), 0.0)
    w.setflags(write=False)
    return w


@lru_cache(maxsize=8)
def dct_lifter(num_ceps: int, num_bins: int, lifter: float) -> np.ndarray:
    """Kaldi's orthonormal DCT-II rows 0..num_ceps-1 with the cepstral lifter, shape (bins, ceps)."""
    n = np.arange(num_bins)
    k = np.arange(num_ceps)[:, None]
    d = np.sqrt(2.0 / num_bins) * np.cos(np.pi / num_bins * (n + 0.5) * k)
    d[0] = np.sqrt(1.0 / num_bins)
    if lifter != 0:
        d *= (1.0 + 0.5 * lifter * np.sin(np.pi * np.arange(num_ceps) / lifter))[:, None]
    out = np.ascontiguousarray(d.T)
    out.setflags(write=False)
    return out


@lru_cache(maxsize=1)
def povey_window() -> np.ndarray:
    i = np.arange(MFCC_WINDOW_SAMPLES)
    w = ((0.5 - 0.5 * np.cos(2 * np.pi * i / (MFCC_WINDOW_SAMPLES - 1))) ** 0.85).astype(np.float32)
    w.setflags(write=False)
    return w


@single_threaded  # the bytes must not depend on the BLAS thread count (ups.blas)
def kaldi_mfcc(x: np.ndarray, spec: MfccParams = DEFAULT_MFCC) -> np.ndarray:
    """Kaldi MFCC (snip_edges, no energy, no dither) of 16 kHz float audio: (n_frames, num_ceps).

    Per frame Kaldi removes the DC offset, applies pre-emphasis with the frame's first sample
    pre-emphasised against itself, then the povey window. All three are linear, so they are done
    on the whole signal once: with y[i] = x[i] - a x[i-1] and m the frame mean, the pre-emphasised
    frame is y[s+i] - (1-a) m for i >= 1 and (1-a) (x[s] - m) for i = 0. Arithmetic is float32
    (float64 frame means); it agrees with float64 Kaldi to ~1e-4.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    n = n_mfcc_frames(len(x))
    if n == 0:
        return np.zeros((0, spec.num_ceps), dtype=np.float32)
    a = spec.preemph_coeff
    starts = np.arange(n) * MFCC_HOP_SAMPLES
    cs = np.concatenate([[0.0], np.cumsum(x, dtype=np.float64)])
    mean = ((cs[starts + MFCC_WINDOW_SAMPLES] - cs[starts]) / MFCC_WINDOW_SAMPLES).astype(np.float32)
    y = np.empty_like(x)
    y[1:] = x[1:] - np.float32(a) * x[:-1]
    y[0] = x[0]
    frames = np.lib.stride_tricks.as_strided(
        y, shape=(n, MFCC_WINDOW_SAMPLES), strides=(y.strides[0] * MFCC_HOP_SAMPLES, y.strides[0]),
        writeable=False,
    )
    pre = frames - (np.float32(1 - a) * mean)[:, None]
    pre[:, 0] = np.float32(1 - a) * (x[starts] - mean)
    pre *= povey_window()
    spectrum = scipy.fft.rfft(pre, n=FFT_SIZE, axis=1)
    power = np.square(spectrum.real)
    power += np.square(spectrum.imag)
    lo, hi, banks = _mel_banks_f32(spec.num_mel_bins, spec.low_freq_hz, spec.high_freq_hz)
    mel = power[:, lo:hi] @ banks
    np.maximum(mel, _FLT_EPSILON, out=mel)
    dct = dct_lifter(spec.num_ceps, spec.num_mel_bins, spec.cepstral_lifter).astype(np.float32)
    return np.log(mel) @ dct


@lru_cache(maxsize=8)
def _mel_banks_f32(num_bins: int, low_hz: float, high_hz: float) -> tuple[int, int, np.ndarray]:
    """The non-zero rows of `mel_banks` as float32, with their row range."""
    w = mel_banks(num_bins, low_hz, high_hz)
    rows = np.nonzero(w.any(axis=1))[0]
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    return lo, hi, np.ascontiguousarray(w[lo:hi], dtype=np.float32)


def deltas(feats: np.ndarray, window: int = 2) -> np.ndarray:
    """Regression deltas along time (axis 0), edge frames replicated (torchaudio compute_deltas)."""
    n = len(feats)
    if n == 0:
        return feats.copy()
    denom = 2.0 * sum(j * j for j in range(1, window + 1))
    padded = np.concatenate([np.repeat(feats[:1], window, 0), feats, np.repeat(feats[-1:], window, 0)])
    out = np.zeros(feats.shape, dtype=np.float64)
    for j in range(1, window + 1):
        out += j * (padded[window + j: window + j + n].astype(np.float64)
                    - padded[window - j: window - j + n])
    return (out / denom).astype(feats.dtype)


def hubert_mfcc(x: np.ndarray, spec: MfccParams = DEFAULT_MFCC) -> np.ndarray:
    """39-dim MFCC + deltas + delta-deltas at 50 Hz: shape (n_cnn_frames(len(x)), 39) float32.

    Deltas are taken at 100 Hz (as in the recipe), then frames 0, 2, 4, ... are kept.
    """
    c = kaldi_mfcc(x, spec)
    d = deltas(c, spec.delta_window)
    dd = deltas(d, spec.delta_window)
    out = np.concatenate([c, d, dd], axis=1)[::2]
    assert len(out) == n_cnn_frames(len(x)), (len(out), len(x))
    return np.ascontiguousarray(out, dtype=np.float32)
