"""Chunk selection maths: candidates, temperature quotas, caps, tar choice, validation split.

Pure functions over numpy arrays; randomness only through an explicit `np.random.Generator`.
The policy (select's docs repeat it):
1. Candidates: each eligible file is cut on a fixed grid [k*C, (k+1)*C) from 0 (C =
   chunk_seconds), only whole chunks inside the file; a chunk qualifies when its VAD speech is at
   least min_speech_ratio * C.
2. Caps: a file keeps at most max_file_chunks candidates and a tar at most max_tar_chunks (the
   highest speech ratio first), so one file or one tar cannot dominate.
3. Temperature: language l gets share p_l = n_l^alpha / sum_m n_m^alpha, n_l = its available
   speech hours (hours table); quotas q_l = min(A_l, lambda * p_l) with lambda such that the quotas
   sum to the target (water-filling; A_l = hours of capped candidates), so a language that runs out
   passes its surplus to the others in proportion to p.
4. Tars: greedily take the tar that covers most of the remaining quotas (ties: denser tar, lower
   number) until the quotas are covered (to 0.5 % of their sum) or max_tars tars are taken;
   quotas are then recomputed over the chosen tars only. Fewer tars = less download, less balance.
5. Inside a language, chunks are taken by speech ratio, then file VAD density, then a seeded random
   key; counts per language by largest remainder so that the total is exact.
6. Held-out files, per language (`hold_out_files`): first the evaluation set (eval_fraction of
   the language's selected hours), then `valid` (valid_fraction) from the remaining files; a file
   in seeded random order is taken when it brings the held-out hours closer to the goal, so the
   share never exceeds the goal by more than half a file, and one file always stays in train.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Candidates:
    """Qualifying chunks: index of the file (into the caller's arrays), chunk start, speech ratio."""

    file: np.ndarray  # int64
    start_s: np.ndarray  # float64
    ratio: np.ndarray  # float64


def chunk_candidates(duration_s: np.ndarray, seg_count: np.ndarray, seg_start_s: np.ndarray,
                     seg_end_s: np.ndarray, chunk_s: float, min_ratio: float,
                     file_ids: np.ndarray | None = None) -> Candidates:
    """Grid chunks of every file whose speech ratio is >= min_ratio (segments sorted, merged)."""
    n = len(duration_s)
    ids = np.arange(n, dtype=np.int64) if file_ids is None else np.asarray(file_ids, np.int64)
    n_cells = np.floor(duration_s / chunk_s + 1e-9).astype(np.int64)
    cell_base = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(n_cells, out=cell_base[1:])
    owner = np.repeat(np.arange(n, dtype=np.int64), seg_count)
    c0 = np.floor(seg_start_s / chunk_s).astype(np.int64)
    c1 = np.floor(seg_end_s / chunk_s).astype(np.int64)
    span = c1 - c0 + 1
    rep = np.repeat(np.arange(len(c0)), span)
    first = np.zeros(len(c0) + 1, dtype=np.int64)
    np.cumsum(span, out=first[1:])
    cell = c0[rep] + (np.arange(len(rep)) - first[rep])
    lo = np.maximum(seg_start_s[rep], cell * chunk_s)
    hi = np.minimum(seg_end_s[rep], (cell + 1) * chunk_s)
    piece = np.maximum(hi - lo, 0.0)
    o = owner[rep]
    inside = cell < n_cells[o]
    gcell = cell_base[o[inside]] + cell[inside]
    speech = np.bincount(gcell, weights=piece[inside], minlength=int(cell_base[-1]))
    ratio = speech / chunk_s
    good = np.flatnonzero(ratio >= min_ratio - 1e-12)
    f = np.searchsorted(cell_base, good, side="right") - 1
    start = (good - cell_base[f]) * chunk_s
    return Candidates(file=ids[f], start_s=start.astype(np.float64), ratio=np.minimum(ratio[good], 1.0))


def rank_within(group: np.ndarray, score: np.ndarray) -> np.ndarray:
    """0-based rank of each item inside its group, highest score first (stable by position)."""
    order = np.lexsort((-score, group))
    g = group[order]
    start = np.ones(len(g), dtype=bool)
    start[1:] = g[1:] != g[:-1]
    first_pos = np.maximum.accumulate(np.where(start, np.arange(len(g)), 0))
    rank = np.empty(len(g), dtype=np.int64)
    rank[order] = np.arange(len(g)) - first_pos
    return rank


def temperature_shares(hours: np.ndarray, alpha: float) -> np.ndarray:
    """p_l proportional to n_l^alpha (n_l > 0); alpha=1 keeps proportions, alpha=0 is uniform."""
    h = np.asarray(hours, dtype=np.float64)
    w = np.where(h > 0, np.power(np.maximum(h, 1e-300), alpha), 0.0)
    total = w.sum()
    return w / total if total > 0 else w


def water_fill(shares: np.ndarray, available: np.ndarray, target: float) -> np.ndarray:
    """Quotas q = min(available, lam * shares) summing to min(target, sum(available))."""
    shares = np.asarray(shares, dtype=np.float64)
    avail = np.asarray(available, dtype=np.float64)
    goal = min(target, float(avail[shares > 0].sum()))
    q = np.zeros_like(avail)
    free = (shares > 0) & (avail > 0)
    left = goal
    while left > 1e-12 and free.any():
        lam = left / shares[free].sum()
        want = lam * shares
        full = free & (want >= avail - q)
        if not full.any():
            q[free] += want[free]
            break
        left -= float((avail[full] - q[full]).sum())
        q[full] = avail[full]
        free &= ~full
    return q


def largest_remainder(quota: np.ndarray, total: int, cap: np.ndarray) -> np.ndarray:
    """Integer counts <= cap, close to `quota`, summing to min(total, cap.sum())."""
    base = np.minimum(np.floor(quota).astype(np.int64), cap)
    left = min(total, int(cap.sum())) - int(base.sum())
    frac = quota - np.floor(quota)
    for i in np.argsort(-frac, kind="stable"):
        if left <= 0:
            break
        if base[i] < cap[i]:
            base[i] += 1
            left -= 1
    while left > 0 and (base < cap).any():  # quota rounding left room: fill by size of quota
        i = int(np.argmax(np.where(base < cap, quota, -np.inf)))
        base[i] += 1
        left -= 1
    return base


def choose_tars(avail: np.ndarray, quota: np.ndarray, density: np.ndarray, tar_ids: np.ndarray,
                max_tars: int, tolerance: float) -> np.ndarray:
    """Greedy tar choice (see module docstring). avail: tars x languages hours. Returns row indices."""
    remaining = quota.astype(np.float64).copy()
    chosen: list[int] = []
    open_rows = np.ones(len(avail), dtype=bool)
    # tie-break: denser tar first, then lower tar number
    tie = np.lexsort((tar_ids, -density))
    rank = np.empty(len(tie), dtype=np.int64)
    rank[tie] = np.arange(len(tie))
    eps = 1e-9 * max(float(quota.sum()), 1.0)
    while remaining.sum() > tolerance and (max_tars == 0 or len(chosen) < max_tars):
        gain = np.minimum(avail, remaining).sum(axis=1)
        gain[~open_rows] = -1.0
        best = float(gain.max()) if len(gain) else -1.0
        if best <= eps:
            break
        cand = np.flatnonzero(gain >= best - eps)
        row = int(cand[np.argmin(rank[cand])])
        chosen.append(row)
        open_rows[row] = False
        remaining -= np.minimum(avail[row], remaining)
    return np.asarray(sorted(chosen), dtype=np.int64)


def hold_out_files(file: np.ndarray, language: np.ndarray, hours: np.ndarray, fraction: float,
                   rng: np.random.Generator, exclude: np.ndarray | None = None) -> np.ndarray:
    """Boolean per item (chunk): True if its file is held out. Whole files, per language.

    The goal is `fraction` of the language's hours (all its items, excluded ones included).
    Files not excluded are visited in `rng` order; a file is taken when it brings the held-out
    hours strictly closer to the goal. So the share is as close as whole files allow along that
    order and never above the goal by more than half a file (taking a file that overshoots by
    h' needs h' < the shortfall before it, hence h' < h / 2). At least one file that is not
    excluded stays out of the held-out set, so a language with a single file keeps it, and a
    language whose files are all bigger than twice the goal holds none out.
    """
    out = np.zeros(len(file), dtype=bool)
    if fraction <= 0:
        return out
    skip = np.zeros(len(file), dtype=bool) if exclude is None else np.asarray(exclude, dtype=bool)
    for lang in sorted(set(language.tolist())):
        rows = np.flatnonzero(language == lang)
        goal = fraction * float(hours[rows].sum())
        free = rows[~skip[rows]]
        files, inv = np.unique(file[free], return_inverse=True)
        per_file = np.bincount(inv, weights=hours[free], minlength=len(files))
        got = 0.0
        held = np.zeros(len(files), dtype=bool)
        for j in rng.permutation(len(files)):
            if held.sum() >= len(files) - 1 or got >= goal:
                break
            if abs(got + per_file[j] - goal) < goal - got:
                held[j] = True
                got += per_file[j]
        out[free] = held[inv]
    return out


def tie_break(file: np.ndarray, start_s: np.ndarray, chunk_s: float, seed: int) -> np.ndarray:
    """Seeded uniform [0, 1) per chunk from (seed, file index, grid cell): splitmix64, so a chunk
    gets the same value whichever batch of files it is computed in."""
    cell = np.round(np.asarray(start_s) / chunk_s).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (np.asarray(file).astype(np.uint64) << np.uint64(24)) ^ cell
        z = z + np.uint64((seed * 0x9E3779B97F4A7C15 + 0x632BE59BD9B4E019) % 2**64)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * 2.0**-53


def cap_per_group(group: np.ndarray, score: np.ndarray, cap: int) -> np.ndarray:
    """Keep mask: at most `cap` items per group, highest score first (ties: earlier position).
    Only the groups over the cap are sorted."""
    keep = np.ones(len(group), dtype=bool)
    if len(group) == 0:
        return keep
    uniq, inv, cnt = np.unique(group, return_inverse=True, return_counts=True)
    over = cnt > cap
    if not over.any():
        return keep
    rows = np.flatnonzero(over[inv])
    dense = np.cumsum(over) - 1  # dense number of each over-cap group
    # one float key per row: group block, then descending score (score in [0, 2))
    key = dense[inv[rows]].astype(np.float64) * 4.0 - score[rows]
    order = rows[np.argsort(key, kind="stable")]
    g = inv[order]
    first = np.ones(len(g), dtype=bool)
    first[1:] = g[1:] != g[:-1]
    start = np.maximum.accumulate(np.where(first, np.arange(len(g)), 0))
    keep[order[(np.arange(len(g)) - start) >= cap]] = False
    return keep
