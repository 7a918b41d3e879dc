"""Learning rate as a pure function of the optimizer step: linear warmup, then decay."""

from __future__ import annotations

import math


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, kind: str = "linear") -> float:
    """LR for optimizer step `step` (0-based): warmup from peak/warmup to peak, then linear or
    cosine decay to 0 at `total_steps` (constant: stay at peak)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if kind == "constant":
        return peak
    span = max(1, total_steps - warmup_steps)
    frac = min(1.0, max(0.0, (step - warmup_steps) / span))
    if kind == "linear":
        return peak * (1.0 - frac)
    if kind == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {kind!r}")
