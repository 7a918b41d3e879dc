"""HuBERT's frame grid: one frame per 320 samples (20 ms at 16 kHz), the CNN's receptive field 400."""

from __future__ import annotations

SAMPLE_RATE = 16000
HOP_SAMPLES = 320
WINDOW_SAMPLES = 400


def n_frames(n_samples: int) -> int:
    """Frames HuBERT's CNN produces on `n_samples` samples: floor((N - 400) / 320) + 1, 0 if N < 400."""
    if n_samples < WINDOW_SAMPLES:
        return 0
    return (n_samples - WINDOW_SAMPLES) // HOP_SAMPLES + 1
