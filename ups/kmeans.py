"""k-means maths: frame sampling, normalisation, fitting, nearest-centroid labels, cluster report.

Fitting follows fairseq's `learn_kmeans.py` (MiniBatchKMeans, k-means++, batch 10000, tol 0,
max_no_improvement 100, reassignment_ratio 0, n_init 20, max_iter 100) on normalised features;
assignment is a blocked nearest-centroid search in float32 BLAS: argmin_c (|c|^2 - 2 x.c).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ups.config import KmeansConfig

STD_FLOOR = 1e-5


@dataclass(frozen=True)
class Normaliser:
    mean: np.ndarray  # (d,) float32
    std: np.ndarray  # (d,) float32, floored at STD_FLOOR

    def apply(self, x: np.ndarray) -> np.ndarray:
        return ((x - self.mean) / self.std).astype(np.float32, copy=False)


def fit_normaliser(x: np.ndarray) -> Normaliser:
    """Per-dimension mean and standard deviation (float64 accumulation) of the training sample."""
    mean = x.mean(axis=0, dtype=np.float64)
    std = x.std(axis=0, dtype=np.float64)
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


def fit_kmeans(x: np.ndarray, cfg: KmeansConfig):
    """MiniBatchKMeans with the configured (fairseq) settings on normalised frames."""
    from sklearn.cluster import MiniBatchKMeans

    if len(x) < cfg.n_clusters:
        raise ValueError(f"{len(x)} sampled frames cannot make {cfg.n_clusters} clusters "
                         "(raise kmeans.sample_hours or lower kmeans.n_clusters)")
    km = MiniBatchKMeans(
        n_clusters=cfg.n_clusters, init="k-means++", max_iter=cfg.max_iter,
        batch_size=cfg.batch_size, tol=cfg.tol, max_no_improvement=cfg.max_no_improvement,
        init_size=None, n_init=cfg.n_init, reassignment_ratio=cfg.reassignment_ratio,
        random_state=cfg.seed, compute_labels=False, verbose=0,
    )
    km.fit(x)
    return km


def assign(x: np.ndarray, centroids: np.ndarray, block_frames: int = 65536,
           c_sq: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Nearest centroid of each row: (int16 labels, sum of squared distances)."""
    centroids = np.ascontiguousarray(centroids, dtype=np.float32)
    if c_sq is None:
        c_sq = np.einsum("kd,kd->k", centroids, centroids)
    labels = np.empty(len(x), dtype=np.int16)
    inertia = 0.0
    ct = np.ascontiguousarray(centroids.T)
    for s in range(0, len(x), block_frames):
        xb = np.ascontiguousarray(x[s:s + block_frames], dtype=np.float32)
        d = xb @ ct
        d *= -2.0
        d += c_sq
        best = d.argmin(axis=1)
        labels[s:s + len(xb)] = best
        inertia += float(d[np.arange(len(xb)), best].sum(dtype=np.float64)
                         + np.einsum("nd,nd->", xb, xb, dtype=np.float64))
    return labels, inertia


def usage(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    return np.bincount(labels.astype(np.int64), minlength=n_clusters)


def entropy_bits(counts: np.ndarray) -> float:
    p = np.asarray(counts, dtype=np.float64)
    total = p.sum()
    if total == 0:
        return 0.0
    p = p[p > 0] / total
    return float(-(p * np.log2(p)).sum())


def mutual_information_bits(labels: np.ndarray, groups: np.ndarray, n_clusters: int,
                            n_groups: int) -> float:
    """I(cluster; group) in bits from per-frame cluster labels and group indices."""
    joint = np.bincount(labels.astype(np.int64) * n_groups + groups.astype(np.int64),
                        minlength=n_clusters * n_groups).reshape(n_clusters, n_groups)
    return mutual_information_from_counts(joint)


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
