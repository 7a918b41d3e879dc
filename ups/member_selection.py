"""Selection on a download budget, for member-level fetches (`dataset.fetch: members`).

When only the members holding selected chunks are fetched, the cost of a chunk is the size of its
file (fetched once, whichever of its chunks are used), not the size of a whole tar, so the tar
limit is replaced by a byte budget (`select.max_download_gb`). But every tar touched costs a
header walk first (index-members: one ranged read per member), so the tars are chosen too.
Pure functions over numpy arrays (ups/selection.py's conventions):

1. Tars (`open_tars`): the quotas are ups/selection.py's temperature water-filling over all tars;
   tars are opened greedily, the one covering most of the quotas still open first, until what
   no opened tar covers is at most `select.balance_tolerance` of the quotas (0: all of them).
2. Inside each language, the files of the opened tars are taken in order of usable chunks per
   byte (their capped candidates over their estimated size), then VAD density, then a seeded
   random key; a language that needs n chunks takes the shortest prefix of that order holding n,
   and all its bytes.
3. The quotas are recomputed over the opened tars. When the files they need exceed the budget,
   the target hours are scaled down by the largest factor whose files fit (bisection), so every
   language shrinks in proportion to its share: the balance is kept, the hours fall short, and
   the report says the budget was the reason.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from ups import selection as sel

if TYPE_CHECKING:
    from ups.config import SelectConfig


@dataclass
class FileLayout:
    """Eligible files with candidates, grouped by language in take order, with running totals."""

    files: np.ndarray  # file indices in take order (language-major)
    lang_start: np.ndarray  # offset of each language's first file in `files` (len n_langs + 1)
    cum_chunks: np.ndarray  # running candidate count within the language, per position
    cum_bytes: np.ndarray  # running bytes within the language, per position


def layout(lang: np.ndarray, count: np.ndarray, nbytes: np.ndarray, density: np.ndarray,
           tie: np.ndarray, n_langs: int) -> FileLayout:
    """Order files (count > 0, lang >= 0) per language by chunks per byte, density, tie."""
    idx = np.flatnonzero((count > 0) & (lang >= 0))
    eff = count[idx] / np.maximum(nbytes[idx], 1.0)
    order = idx[np.lexsort((tie[idx], -density[idx], -eff, lang[idx]))]
    lang_start = np.searchsorted(lang[order], np.arange(n_langs + 1), side="left")
    cum_chunks = np.zeros(len(order), dtype=np.int64)
    cum_bytes = np.zeros(len(order), dtype=np.float64)
    for k in range(n_langs):
        a, b = lang_start[k], lang_start[k + 1]
        cum_chunks[a:b] = np.cumsum(count[order[a:b]])
        cum_bytes[a:b] = np.cumsum(nbytes[order[a:b]])
    return FileLayout(order, lang_start, cum_chunks, cum_bytes)


def prefix_lengths(lay: FileLayout, n_chunks: np.ndarray) -> np.ndarray:
    """Per language, how many files (from the start of its order) hold n_chunks[k] candidates."""
    out = np.zeros(len(n_chunks), dtype=np.int64)
    for k, n in enumerate(n_chunks.tolist()):
        a, b = lay.lang_start[k], lay.lang_start[k + 1]
        if n > 0 and b > a:
            out[k] = min(int(np.searchsorted(lay.cum_chunks[a:b], n, side="left")) + 1, b - a)
    return out


def bytes_needed(lay: FileLayout, n_files: np.ndarray) -> float:
    total = 0.0
    for k, m in enumerate(n_files.tolist()):
        if m:
            total += float(lay.cum_bytes[lay.lang_start[k] + m - 1])
    return total


@dataclass
class BudgetChoice:
    """What fits: chunks per language, the files they come from, bytes, the hours scale."""

    n_chunks: np.ndarray
    files: np.ndarray  # chosen file indices, sorted
    rank: np.ndarray  # position of each chosen file in its language's take order (same order)
    bytes: float
    scale: float  # 1.0: the budget did not bind


def fit_budget(lay: FileLayout, shares: np.ndarray, avail_h: np.ndarray, hours: float,
               chunk_h: float, budget_bytes: float, iterations: int = 40) -> BudgetChoice:
    """Chunks per language for `hours` (scaled down until the files fit `budget_bytes`; 0 = none)."""
    cap = np.round(avail_h / chunk_h).astype(np.int64)

    def counts(scale: float) -> np.ndarray:
        quota = sel.water_fill(shares, avail_h, scale * hours)
        return sel.largest_remainder(quota / chunk_h, int(round(scale * hours / chunk_h)), cap)

    def cost(n: np.ndarray) -> float:
        return bytes_needed(lay, prefix_lengths(lay, n))

    scale, n = 1.0, counts(1.0)
    if budget_bytes > 0 and cost(n) > budget_bytes:
        lo, hi = 0.0, 1.0
        for _ in range(iterations):
            mid = (lo + hi) / 2
            if cost(counts(mid)) <= budget_bytes:
                lo = mid
            else:
                hi = mid
        scale, n = lo, counts(lo)
    m = prefix_lengths(lay, n)
    chosen, rank = [], []
    for k, mk in enumerate(m.tolist()):
        a = lay.lang_start[k]
        chosen.append(lay.files[a:a + mk])
        rank.append(np.arange(mk, dtype=np.int64))
    files = np.concatenate(chosen) if chosen else np.zeros(0, np.int64)
    ranks = np.concatenate(rank) if rank else np.zeros(0, np.int64)
    order = np.argsort(files, kind="stable")
    return BudgetChoice(n, files[order], ranks[order], bytes_needed(lay, m), scale)


def pick(lang: np.ndarray, rank: np.ndarray, score: np.ndarray, n_chunks: np.ndarray) -> np.ndarray:
    """Keep mask over candidates: per language the first n_chunks[k] by (file rank, -score)."""
    keep = np.zeros(len(lang), dtype=bool)
    for k, n in enumerate(n_chunks.tolist()):
        rows = np.flatnonzero(lang == k)
        if n and len(rows):
            keep[rows[np.lexsort((-score[rows], rank[rows]))[:n]]] = True
    return keep


def open_tars(avail_hours: np.ndarray, shares: np.ndarray, tar_density: np.ndarray,
              tar_numbers: np.ndarray, hours: float, tolerance: float) -> np.ndarray:
    """Rows of the tars to open (sorted): the tar covering most of the quotas still open first
    (ties: denser tar, lower number) until what no opened tar covers is at most `tolerance` x the
    quotas' sum. The quotas are the temperature water-filling over all tars."""
    quota = sel.water_fill(shares, avail_hours.sum(axis=0), hours)
    return sel.choose_tars(avail_hours, quota, tar_density, tar_numbers, 0,
                           tolerance=tolerance * float(quota.sum()))


def select_members(files: sel.FileTable, pool: sel.CandidatePool, shares: np.ndarray,
                   tar_density: np.ndarray, cfg: SelectConfig,
                   candidates_of: sel.CandidatesOf) -> sel.Selection:
    """Steps 3-5 for `dataset.fetch: members`: the tars to open (select.balance_tolerance), the
    files of those tars that fit select.max_download_gb, then their candidates (rebuilt a batch
    of whole tars at a time, so the caps are the first pass's) and per language the chunks of
    its first files."""
    chunk_h = cfg.chunk_seconds / 3600.0
    n_files = len(files.tar)
    opened = open_tars(pool.avail_hours, shares, tar_density, pool.tar_numbers, cfg.hours,
                       cfg.balance_tolerance)
    avail_opened = pool.avail_hours[opened]
    file_chunks = np.where(np.isin(files.tar, pool.tar_numbers[opened]), pool.file_chunks, 0)
    tie = sel.tie_break(np.arange(n_files), np.zeros(n_files), cfg.chunk_seconds, cfg.seed)
    file_bytes = files.duration_s * cfg.mp3_bytes_per_second
    lay = layout(files.language, file_chunks, file_bytes, files.density, tie, avail_opened.shape[1])
    choice = fit_budget(lay, shares, avail_opened.sum(axis=0), cfg.hours, chunk_h,
                        cfg.max_download_gb * 1e9)
    rank = np.full(n_files, -1, dtype=np.int64)
    rank[choice.files] = choice.rank
    in_tars = files.eligible[np.isin(files.tar[files.eligible], np.unique(files.tar[choice.files]))]
    parts = []
    for rows in sel.tar_batches(in_tars, files.tar):
        c = candidates_of(rows)
        parts.append(c.take(rank[c.file] >= 0))
    cands = sel.ScoredCandidates.concat(parts)
    keep = pick(files.language[cands.file], rank[cands.file], cands.score, choice.n_chunks)
    # what the opened tars and the budget let through: all of it, or (bound) what was picked
    within = float(avail_opened.sum()) if choice.scale >= 1.0 else float(keep.sum() * chunk_h)
    return sel.Selection(cands.file[keep], cands.start_s[keep], cands.ratio[keep],
                         n_tars_chosen=int(len(np.unique(files.tar[cands.file]))),
                         within_limit_hours=within, hours_scale=choice.scale,
                         limit={"max_download_gb": cfg.max_download_gb,
                                "budget_bound": bool(choice.scale < 1.0),
                                "hours_scale": float(choice.scale),
                                "balance_tolerance": cfg.balance_tolerance,
                                "tars_opened": int(len(opened)),
                                "language_share_gap": sel.share_gap(
                                    np.bincount(files.language[cands.file[keep]],
                                                minlength=len(shares)), shares)})
