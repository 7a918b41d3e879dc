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

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from ups.config import SelectConfig


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


# --------------------------------------------------------------------------------------------
# The whole-tar policy (`dataset.fetch: tars`), steps 1-5 over the indices' arrays
# --------------------------------------------------------------------------------------------

BATCH_FILES = 50_000  # files per batch of whole tars while candidates are built


@dataclass
class ScoredCandidates:
    """Candidates left after the per-file and per-tar caps, with the score that ranks them."""

    file: np.ndarray  # int64 row of files.parquet
    start_s: np.ndarray
    ratio: np.ndarray
    score: np.ndarray  # ratio, then file VAD density, then a seeded key (step 5)
    n_before_caps: int = 0

    @classmethod
    def empty(cls) -> ScoredCandidates:
        z = np.zeros(0)
        return cls(z.astype(np.int64), z, z, z, 0)

    def take(self, keep: np.ndarray) -> ScoredCandidates:
        return ScoredCandidates(self.file[keep], self.start_s[keep], self.ratio[keep],
                                self.score[keep], self.n_before_caps)

    @classmethod
    def concat(cls, parts: list[ScoredCandidates]) -> ScoredCandidates:
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.file for p in parts]).astype(np.int64),
                   np.concatenate([p.start_s for p in parts]), np.concatenate([p.ratio for p in parts]),
                   np.concatenate([p.score for p in parts]), sum(p.n_before_caps for p in parts))


@dataclass
class FileTable:
    """Per-file arrays of the VAD index that the policies read (row i = row i of files.parquet)."""

    tar: np.ndarray  # int64, sorted (index-vad writes files.parquet sorted by tar)
    language: np.ndarray  # int64 number of the file's language; -1: not a chosen language
    duration_s: np.ndarray
    density: np.ndarray  # VAD speech / duration
    eligible: np.ndarray  # sorted rows of the files that may be selected


@dataclass
class CandidatePool:
    """The capped candidates of every eligible file, reduced to what the policies choose from."""

    tar_numbers: np.ndarray  # sorted tars holding an eligible file (rows of avail_hours)
    avail_hours: np.ndarray  # tars x languages: hours of capped candidates
    file_chunks: np.ndarray  # capped candidates per file (every row of files.parquet)
    n_candidates: int  # before the caps
    n_after_caps: int


@dataclass
class Selection:
    """The chunks a fetch policy chose (in no particular order) and what its limit let through."""

    file: np.ndarray
    start_s: np.ndarray
    ratio: np.ndarray
    n_tars_chosen: int  # tars the policy chose (whole tars) or whose candidates it read (members)
    within_limit_hours: float  # capped candidate hours the download limit lets through
    limit: dict  # the limit's parameters and state, for the report's download.limit
    hours_scale: float = 1.0  # members: the share of every language's hours that fits the budget


CandidatesOf = Callable[[np.ndarray], ScoredCandidates]  # capped candidates of whole tars' files


def max_chunks(fraction: float, hours: float, chunk_s: float) -> int:
    """Step 2's cap in chunks: `fraction` of the target hours, at least one chunk."""
    return max(1, int(fraction * hours / (chunk_s / 3600.0)))


def score_and_cap(c: Candidates, density: np.ndarray, tar: np.ndarray, chunk_s: float, seed: int,
                  max_file_chunks: int, max_tar_chunks: int) -> ScoredCandidates:
    """Score candidates (depends only on the chunk, not on the batch) and apply the caps."""
    score = c.ratio + 1e-3 * density[c.file] + 1e-6 * tie_break(c.file, c.start_s, chunk_s, seed)
    keep = cap_per_group(c.file, score, max_file_chunks)
    keep[keep] = cap_per_group(tar[c.file[keep]], score[keep], max_tar_chunks)
    return ScoredCandidates(c.file[keep], c.start_s[keep], c.ratio[keep], score[keep], len(c.file))


def tar_batches(rows: np.ndarray, tar: np.ndarray, batch_files: int = BATCH_FILES) -> Iterator[np.ndarray]:
    """Split `rows` (sorted by tar) into runs of about `batch_files` files, never splitting a tar."""
    lo = 0
    while lo < len(rows):
        hi = min(lo + batch_files, len(rows))
        if hi < len(rows):
            last = tar[rows[hi - 1]]
            hi = lo + int(np.searchsorted(tar[rows[lo:]], last, side="right"))
        yield rows[lo:hi]
        lo = hi


def pool_candidates(files: FileTable, n_langs: int, chunk_s: float,
                    candidates_of: CandidatesOf) -> CandidatePool:
    """Steps 1-2 over every eligible file, a batch of whole tars at a time: only the (tar,
    language) hours and the count per file are kept, so memory stays bounded by one batch."""
    chunk_h = chunk_s / 3600.0
    tar_numbers = np.unique(files.tar[files.eligible])
    avail = np.zeros((len(tar_numbers), n_langs))
    file_chunks = np.zeros(len(files.tar), dtype=np.int64)
    n_candidates = n_after_caps = 0
    for rows in tar_batches(files.eligible, files.tar):
        c = candidates_of(rows)
        n_candidates += c.n_before_caps
        n_after_caps += len(c.file)
        np.add.at(avail, (np.searchsorted(tar_numbers, files.tar[c.file]), files.language[c.file]),
                  chunk_h)
        uniq, n = np.unique(c.file, return_counts=True)
        file_chunks[uniq] += n
    return CandidatePool(tar_numbers, avail, file_chunks, n_candidates, n_after_caps)


def share_gap(chunks_per_language: np.ndarray, shares: np.ndarray) -> float:
    """The largest gap between a language's share of the chosen chunks and its temperature share."""
    total = float(np.sum(chunks_per_language))
    if total <= 0:
        return float(np.max(shares, initial=0.0))
    return float(np.max(np.abs(np.asarray(chunks_per_language) / total - shares), initial=0.0))


def best_per_language(language: np.ndarray, score: np.ndarray, n_chunks: np.ndarray) -> np.ndarray:
    """Keep mask: per language its n_chunks[k] best-scored candidates (step 5)."""
    keep = np.zeros(len(language), dtype=bool)
    for k, n in enumerate(n_chunks.tolist()):
        rows = np.flatnonzero(language == k)
        if n and len(rows):
            keep[rows[np.argsort(-score[rows], kind="stable")[:n]]] = True
    return keep


def select_whole_tars(files: FileTable, pool: CandidatePool, shares: np.ndarray,
                      tar_density: np.ndarray, cfg: SelectConfig,
                      candidates_of: CandidatesOf) -> Selection:
    """Steps 3-5 for `dataset.fetch: tars`: quotas, the greedy tar choice up to select.max_tars,
    quotas again over the chosen tars, then the best chunks of each language in them."""
    chunk_h = cfg.chunk_seconds / 3600.0
    quota_all = water_fill(shares, pool.avail_hours.sum(axis=0), cfg.hours)
    # 0.5 % of what can be taken: of select.hours, or of all the data when it holds less
    chosen = choose_tars(pool.avail_hours, quota_all, tar_density, pool.tar_numbers, cfg.max_tars,
                         tolerance=0.005 * float(quota_all.sum()))
    avail_chosen = pool.avail_hours[chosen].sum(axis=0)
    quota = water_fill(shares, avail_chosen, cfg.hours)
    in_tars = files.eligible[np.isin(files.tar[files.eligible], pool.tar_numbers[chosen])]
    cands = candidates_of(in_tars)
    cap = np.round(avail_chosen / chunk_h).astype(np.int64)
    n_chunks = largest_remainder(quota / chunk_h, int(round(cfg.hours / chunk_h)), cap)
    keep = best_per_language(files.language[cands.file], cands.score, n_chunks)
    return Selection(cands.file[keep], cands.start_s[keep], cands.ratio[keep],
                     n_tars_chosen=len(chosen), within_limit_hours=float(avail_chosen.sum()),
                     limit={"max_tars": cfg.max_tars})
