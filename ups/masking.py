"""Span masks for masked prediction, with fairseq's `compute_mask_indices` semantics.

For each row of real length `T` (frames; padding is never masked), draw
`n = max(min_masks, int(mask_prob * T / mask_length + u))` span starts without replacement,
u ~ U[0, 1), each span `mask_length` frames long; spans may overlap and are clipped at `T`.
With `mask_prob=0.8, mask_length=10` about half of the frames end up masked (overlaps).
`same_count=True` trims every row to the smallest masked count in the batch (fairseq's
`require_same_masks`); the trainer leaves it off because transformers takes a boolean mask.
Randomness comes only from the generator passed in.
"""

from __future__ import annotations

import numpy as np


def compute_mask(
    lengths: np.ndarray | list[int],
    n_cols: int,
    *,
    mask_prob: float,
    mask_length: int,
    rng: np.random.Generator,
    min_masks: int = 0,
    same_count: bool = False,
) -> np.ndarray:
    """Boolean (batch, n_cols) mask; row i masks only inside its first `lengths[i]` frames."""
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob must be in [0, 1], got {mask_prob}")
    if mask_length < 1:
        raise ValueError(f"mask_length must be >= 1, got {mask_length}")
    lengths = np.asarray(lengths, dtype=np.int64)
    if lengths.ndim != 1 or (lengths > n_cols).any() or (lengths < 0).any():
        raise ValueError(f"lengths must be 1-D within [0, {n_cols}], got {lengths.tolist()}")
    mask = np.zeros((len(lengths), n_cols), dtype=bool)
    picked: list[np.ndarray] = []
    for size in lengths.tolist():
        # fairseq draws u for every row, so the stream of draws does not depend on the lengths.
        n_spans = int(mask_prob * size / mask_length + rng.random())
        n_spans = max(min_masks, n_spans)
        span = mask_length
        if size - span <= n_spans:
            span = size - n_spans - 1
        if size <= 0 or n_spans <= 0 or size - span <= 0:
            picked.append(np.zeros(0, dtype=np.int64))
            continue
        n_spans = min(n_spans, size - span)
        starts = rng.choice(size - span, n_spans, replace=False)
        idx = (starts[:, None] + np.arange(mask_length)[None, :]).ravel()
        idx = np.unique(idx[idx < size])
        picked.append(idx)
    if same_count and picked:
        fewest = min(len(p) for p in picked)
        picked = [p if len(p) <= fewest else np.sort(rng.choice(p, fewest, replace=False)) for p in picked]
    for i, idx in enumerate(picked):
        mask[i, idx] = True
    return mask


def frame_valid(lengths: np.ndarray | list[int], n_cols: int) -> np.ndarray:
    """Boolean (batch, n_cols): True on each row's real frames, False on padding."""
    lengths = np.asarray(lengths, dtype=np.int64)
    return np.arange(n_cols)[None, :] < lengths[:, None]
