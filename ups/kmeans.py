"""k-means maths: frame sampling, normalisation, fitting, nearest-centroid labels, cluster report.

Fitting follows fairseq's `learn_kmeans.py` (sklearn MiniBatchKMeans, k-means++, batch 10000,
tol 0, max_no_improvement 100, reassignment_ratio 0, n_init 20, max_iter 100) on the raw
features, with sklearn 1.9.1's algorithm re-written here because its `fit` is unusable at 10 M
frames: every minibatch is drawn by `RandomState.choice(n, batch, p=weights)`, which converts,
checks and cumsums the n-long weight vector (0.23 s per step at n = 10 M, against ~3 ms for the
step itself), so a 10 M fit ran for more than 6 minutes on one core. `fit_kmeans` keeps sklearn's
maths (n_init k-means++ runs, in lockstep on one random `init_size` subsample, the best by inertia on a fixed
validation subsample; minibatch centre updates with per-cluster counts; early stop on the
exponentially weighted batch inertia after `max_no_improvement` steps without a new minimum;
random reassignment of small clusters when reassignment_ratio > 0) with uniform minibatches drawn
by index (the same distribution) and float32 BLAS for the distances.
Assignment is a blocked nearest-centroid search in float32 BLAS: argmin_c (|c|^2 - 2 x.c).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ups.blas import fixed_blas, map_blocks
from ups.config import KmeansConfig

STD_FLOOR = 1e-5


@dataclass(frozen=True)
class Normaliser:
    mean: np.ndarray  # (d,) float32
    std: np.ndarray  # (d,) float32, floored at STD_FLOOR

    @classmethod
    def identity(cls, dim: int) -> Normaliser:
        """The stages' statistics: raw features, as fairseq's recipe clusters them."""
        return cls(np.zeros(dim, np.float32), np.ones(dim, np.float32))

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32, copy=False)

    def apply_inplace(self, x: np.ndarray, block: int = 65536) -> np.ndarray:
        """`apply` on a float32 array without a second copy of it (a 10 h x 768 sample is 5.5 GB)."""
        for s in range(0, len(x), block):
            xb = x[s:s + block]
            xb -= self.mean
            xb /= self.std
        return x


def fit_normaliser(x: np.ndarray, block: int = 65536) -> Normaliser:
    """Per-dimension mean and standard deviation of the training sample, two passes over blocks
    with float64 sums (no float64 copy of the sample: 11 GB for 10 h of 768-dim frames)."""
    n = max(1, len(x))
    total = np.zeros(x.shape[1], dtype=np.float64)
    for s in range(0, len(x), block):
        total += x[s:s + block].sum(axis=0, dtype=np.float64)
    mean = total / n
    sq = np.zeros_like(total)
    for s in range(0, len(x), block):
        d = x[s:s + block].astype(np.float64) - mean
        sq += np.einsum("nd,nd->d", d, d)
    std = np.sqrt(sq / n)
    return Normaliser(mean.astype(np.float32), np.maximum(std, STD_FLOOR).astype(np.float32))


def sample_frames(counts: np.ndarray, n_sample: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Choose `n_sample` of sum(counts) frames uniformly without replacement.

    `counts[i]` frames live in file i; returns, per file, the sorted frame indices chosen in it
    (all frames when n_sample >= total).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    starts = np.concatenate([[0], np.cumsum(counts)])
    if n_sample >= total:
        return [np.arange(c, dtype=np.int64) for c in counts]
    chosen = np.sort(rng.choice(total, size=n_sample, replace=False))
    cut = np.searchsorted(chosen, starts)
    return [chosen[cut[i]:cut[i + 1]] - starts[i] for i in range(len(counts))]


@dataclass(frozen=True)
class KmeansFit:
    centroids: np.ndarray  # (k, d) float32
    n_steps: int  # minibatch steps run
    converged: bool  # stopped by max_no_improvement (or tol) before max_iter epochs
    init_inertias: tuple[float, ...]  # inertia of each k-means++ init on the validation subsample


def _init_size(cfg: KmeansConfig, n: int) -> int:
    """sklearn's default: 3 * batch_size, or 3 * n_clusters when that is larger; at most n."""
    size = 3 * cfg.batch_size
    if size < cfg.n_clusters:
        size = 3 * cfg.n_clusters
    return min(size, n)


def fit_kmeans(x: np.ndarray, cfg: KmeansConfig) -> KmeansFit:
    """Mini-batch k-means with the configured (fairseq) settings on the given frames (see above).

    Every product runs in fixed row blocks on one BLAS thread each (`ups.blas`): the centroids
    and figures are the same bytes for any thread count."""
    n = len(x)
    if n < cfg.n_clusters:
        raise ValueError(f"{n} sampled frames cannot make {cfg.n_clusters} clusters "
                         "(raise kmeans.sample_hours or lower kmeans.n_clusters)")
    with fixed_blas():
        return _fit(np.ascontiguousarray(x, dtype=np.float32), cfg)


def kmeans_plusplus_runs(x: np.ndarray, k: int, n_runs: int, rng: np.random.Generator) -> np.ndarray:
    """`n_runs` greedy k-means++ initialisations of `x` at once: (n_runs, k, d) float32 centres.

    sklearn's algorithm (first centre uniform, then 2 + ln k candidates drawn by squared distance
    to the nearest centre, the one that lowers the potential most is kept), with the runs in
    lockstep on the same points so that each step is ONE float32 product (n x d) @ (d x n_runs *
    trials) instead of n_runs memory-bound (n x d) @ (d x trials) ones: at 30000 x 768, k = 500,
    20 runs, sklearn's float64 runs one after another took 27 s each on this machine."""
    n, d = x.shape
    trials = 2 + int(np.log(k))
    x_sq = np.einsum("nd,nd->n", x, x)
    centres = np.empty((n_runs, k, d), dtype=np.float32)
    first = rng.integers(0, n, n_runs)
    centres[:, 0] = x[first]
    closest = np.maximum(x_sq[None, :] - 2.0 * _products(x[first], x) + x_sq[first, None], 0.0)
    runs = np.arange(n_runs)
    for c in range(1, k):
        cum = np.cumsum(closest, axis=1, dtype=np.float64)
        r = rng.random((n_runs, trials)) * cum[:, -1:]
        cand = np.minimum(np.stack([np.searchsorted(cum[i], r[i]) for i in runs]), n - 1)
        flat = cand.ravel()
        dist = _products(x[flat], x)  # (runs * trials, n), in place from here on
        dist *= -2.0
        dist += x_sq[None, :]
        dist += x_sq[flat, None]
        dist = dist.reshape(n_runs, trials, n)
        np.minimum(dist, closest[:, None, :], out=dist)
        np.maximum(dist, 0.0, out=dist)
        best = dist.sum(axis=2, dtype=np.float64).argmin(axis=1)
        closest = dist[runs, best]
        centres[:, c] = x[cand[runs, best]]
    return centres


def _products(a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """a @ x.T, (len(a), len(x)) float32, in fixed blocks of x's rows (`ups.blas.map_blocks`)."""
    out = np.empty((len(a), len(x)), dtype=np.float32)

    def block(s: int, e: int) -> None:
        out[:, s:e] = a @ x[s:e].T

    with fixed_blas():
        map_blocks(block, len(x), macs_per_row=a.shape[0] * a.shape[1])
    return out


def _fit(x: np.ndarray, cfg: KmeansConfig) -> KmeansFit:
    n = len(x)
    k = cfg.n_clusters
    rng = np.random.default_rng(cfg.seed)
    init_size = _init_size(cfg, n)
    valid = x[rng.integers(0, n, init_size)]
    sub = x[rng.integers(0, n, init_size)]
    inits = kmeans_plusplus_runs(sub, k, cfg.n_init, rng)
    inertias = [assign(valid, c)[1] for c in inits]
    centres = inits[int(np.argmin(inertias))].astype(np.float64)
    counts = np.zeros(k, dtype=np.float64)
    batch = cfg.batch_size
    n_steps = max(1, (cfg.max_iter * n) // batch)
    alpha = min(1.0, batch * 2.0 / (n + 1))
    ewa = ewa_min = None
    no_improvement = 0
    since_reassign = 0
    converged = False
    step = 0
    # sklearn scales tol by the mean per-dimension variance of the data
    tol = cfg.tol * float(np.mean(np.var(x, axis=0, dtype=np.float64))) if cfg.tol > 0 else 0.0
    for step in range(n_steps):
        xb = x[rng.integers(0, n, batch)]
        labels, batch_inertia = assign(xb, centres.astype(np.float32))
        shift = _update_centres(centres, counts, xb, labels)
        since_reassign += batch
        if cfg.reassignment_ratio > 0 and ((counts == 0).any() or since_reassign >= 10 * k):
            since_reassign = 0
            _reassign(centres, counts, xb, cfg.reassignment_ratio, rng)
        if tol > 0 and step > 0 and float((shift ** 2).sum()) <= tol:
            converged = True
            break
        if step == 0:  # sklearn ignores the first batch: its inertia is the init's
            continue
        mean_inertia = batch_inertia / batch
        ewa = mean_inertia if ewa is None else ewa * (1 - alpha) + mean_inertia * alpha
        if ewa_min is None or ewa < ewa_min:
            ewa_min, no_improvement = ewa, 0
        else:
            no_improvement += 1
        if no_improvement >= cfg.max_no_improvement:
            converged = True
            break
    return KmeansFit(centres.astype(np.float32), step + 1, converged, tuple(inertias))


def _update_centres(
    centres: np.ndarray, counts: np.ndarray, xb: np.ndarray, labels: np.ndarray
) -> np.ndarray:
    """One mini-batch step, in place: each centre the batch hit moves to the running mean of
    every frame assigned to it so far (`counts`); returns the shifts of the centres hit."""
    lab = labels.astype(np.int64)
    nk = np.bincount(lab, minlength=len(centres)).astype(np.float64)
    order = np.argsort(lab, kind="stable")
    present = np.flatnonzero(nk)
    starts = np.concatenate([[0], np.cumsum(nk[present]).astype(np.int64)[:-1]])
    sums = np.add.reduceat(xb[order].astype(np.float64), starts, axis=0)
    new_counts = counts[present] + nk[present]
    old = centres[present] * counts[present, None]
    shift = ((old + sums) / new_counts[:, None]) - centres[present]
    centres[present] += shift
    counts[present] = new_counts
    return shift


def _reassign(centres: np.ndarray, counts: np.ndarray, xb: np.ndarray, ratio: float,
              rng: np.random.Generator) -> None:
    """sklearn's random reassignment: clusters with counts below ratio * max move to batch points."""
    small = counts < ratio * counts.max()
    if small.sum() > 0.5 * len(xb):
        small[np.argsort(counts)[int(0.5 * len(xb)):]] = False
    n_re = int(small.sum())
    if n_re:
        centres[small] = xb[rng.choice(len(xb), n_re, replace=False)]
        counts[small] = counts[~small].min() if (~small).any() else 0.0


def assign(x: np.ndarray, centroids: np.ndarray, c_sq: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Nearest centroid of each row: (int16 labels, sum of squared distances).

    Rows go in fixed blocks of `ups.blas.BLOCK_ROWS`, each on one BLAS thread (on a pool when
    the product is large); the inertia is summed in float64, block by block in row order, so
    labels and inertia are the same bytes for any thread count."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if c_sq is None:
        c_sq = np.einsum("kd,kd->k", centroids, centroids)
    labels = np.empty(len(x), dtype=np.int16)
    ct = np.ascontiguousarray(centroids.T)

    def block(s: int, e: int) -> float:
        xb = np.ascontiguousarray(x[s:e], dtype=np.float32)
        d = xb @ ct
        d *= -2.0
        d += c_sq
        best = d.argmin(axis=1)
        labels[s:e] = best
        return float(d[np.arange(len(xb)), best].sum(dtype=np.float64)
                     + np.einsum("nd,nd->", xb, xb, dtype=np.float64))

    with fixed_blas():
        parts = map_blocks(block, len(x), macs_per_row=centroids.size)
    return labels, float(sum(parts))


class TorchAssigner:
    """`Normaliser.apply` + `assign` in torch on the features' own device (the GPU that computed
    them): only int16 labels go back to the host, never the 768-dim frames. Same maths as
    `assign` in float32 (labels can differ from it only at exact ties / rounding)."""

    def __init__(self, norm: Normaliser, centroids: np.ndarray, device: str) -> None:
        import torch

        self._torch = torch
        self.mean = torch.from_numpy(np.asarray(norm.mean, np.float32)).to(device)
        self.std = torch.from_numpy(np.asarray(norm.std, np.float32)).to(device)
        c = torch.from_numpy(np.ascontiguousarray(centroids, dtype=np.float32)).to(device)
        self.ct = c.T.contiguous()
        self.c_sq = (c * c).sum(dim=1)

    def __call__(self, h: Any, block_frames: int = 65536) -> tuple[np.ndarray, float]:
        """h: (N, d) float tensor -> (int16 labels, sum of squared distances)."""
        torch = self._torch
        labels, inertia = [], 0.0
        with torch.inference_mode():
            for s in range(0, len(h), block_frames):
                xb = (h[s:s + block_frames].float() - self.mean) / self.std
                d = torch.addmm(self.c_sq, xb, self.ct, alpha=-2.0)
                best, idx = d.min(dim=1)
                labels.append(idx.to(torch.int16))
                inertia += float(best.double().sum() + (xb.double() ** 2).sum())
        out = torch.cat(labels).cpu().numpy() if labels else np.zeros(0, np.int16)
        return out, inertia


def usage(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    return np.bincount(labels.astype(np.int64), minlength=n_clusters)


def entropy_bits(counts: np.ndarray) -> float:
    p = np.asarray(counts, dtype=np.float64)
    total = p.sum()
    if total == 0:
        return 0.0
    p = p[p > 0] / total
    return float(-(p * np.log2(p)).sum())


def joint_counts(labels: np.ndarray, groups: np.ndarray, n_clusters: int, n_groups: int) -> np.ndarray:
    """(n_clusters, n_groups) frame counts from per-frame cluster labels and group indices (a
    language, say); frames of group -1 (unknown) are left out."""
    labels, groups = np.asarray(labels, dtype=np.int64), np.asarray(groups, dtype=np.int64)
    known = groups >= 0
    return np.bincount(labels[known] * n_groups + groups[known],
                       minlength=n_clusters * n_groups).reshape(n_clusters, n_groups)


def mutual_information_from_counts(joint: np.ndarray) -> float:
    p = np.asarray(joint, dtype=np.float64)
    total = p.sum()
    if total == 0:
        return 0.0
    p = p / total
    pc = p.sum(axis=1, keepdims=True)
    pg = p.sum(axis=0, keepdims=True)
    nz = p > 0
    return float((p[nz] * np.log2(p[nz] / (pc @ pg)[nz])).sum())


def usage_figures(counts: np.ndarray, n_clusters: int) -> dict[str, Any]:
    """How evenly the clusters are used (`counts`: frames per cluster): the usage entropy in bits,
    normalised by log2 k (1 = uniform), and the number of clusters never used."""
    h = entropy_bits(counts)
    return {"usage_entropy_bits": h, "usage_entropy_normalised": h / np.log2(n_clusters),
            "empty_clusters": int((np.asarray(counts) == 0).sum())}


def language_figures(joint: np.ndarray) -> dict[str, float]:
    """What the clusters say about the language (`joint`: frames per cluster and language):
    I(cluster; language) in bits, H(language), and their ratio (0 with one language)."""
    mi = mutual_information_from_counts(joint)
    lang_h = entropy_bits(np.asarray(joint).sum(axis=0))
    return {"mi_cluster_language_bits": mi, "language_entropy_bits": lang_h,
            "mi_over_language_entropy": mi / lang_h if lang_h > 0 else 0.0}
