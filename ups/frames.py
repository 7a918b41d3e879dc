"""Frame arithmetic shared by the features, the labels and the trainer.

HuBERT's CNN encoder turns N samples at 16 kHz into T = floor((N - 400) / 320) + 1 frames
(receptive field 400 samples, stride 320, i.e. 50 Hz); fewer than 400 samples give no frame.
Kaldi MFCC with snip_edges gives floor((N - 400) / 160) + 1 frames at 100 Hz; frame 2j starts at
sample 320 j, exactly where CNN frame j starts, so taking every second MFCC frame yields exactly T
frames, aligned, with no padding or trimming. Every label array is checked against this function.
"""

from __future__ import annotations

SAMPLE_RATE = 16000
CNN_WINDOW_SAMPLES = 400
CNN_HOP_SAMPLES = 320
MFCC_WINDOW_SAMPLES = 400  # 25 ms
MFCC_HOP_SAMPLES = 160  # 10 ms


def n_cnn_frames(n_samples: int) -> int:
    """Frames the HuBERT CNN produces for `n_samples` samples (0 below one window)."""
    if n_samples < CNN_WINDOW_SAMPLES:
        return 0
    return (n_samples - CNN_WINDOW_SAMPLES) // CNN_HOP_SAMPLES + 1


def n_mfcc_frames(n_samples: int) -> int:
    """Kaldi frames (snip_edges) at 100 Hz for `n_samples` samples."""
    if n_samples < MFCC_WINDOW_SAMPLES:
        return 0
    return (n_samples - MFCC_WINDOW_SAMPLES) // MFCC_HOP_SAMPLES + 1


def chunk_samples(start_s: float, end_s: float) -> tuple[int, int]:
    """(first sample, sample count) of a chunk at 16 kHz: round(start * sr), round(duration * sr)."""
    return int(round(start_s * SAMPLE_RATE)), int(round((end_s - start_s) * SAMPLE_RATE))
