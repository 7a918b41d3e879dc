"""fit-kmeans and assign-labels speed on synthetic 39-dim frames (a Gaussian mixture).

Fit: MiniBatchKMeans with the params.yaml defaults (fairseq's: k-means++, batch 10000, n_init 20,
max_no_improvement 100, max_iter 100) on `--frames` frames, all cores (2 here). Assignment:
`ups.kmeans.assign` with BLAS limited to one thread, frames per second per core, for k = 100
and k = 500.

    python -m bench.kmeans [--frames 10000000] [--out bench/results/kmeans.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ups.atomic import write_json  # noqa: E402
from ups.config import KmeansConfig, load_section  # noqa: E402
from ups.kmeans import assign, fit_kmeans, fit_normaliser  # noqa: E402


def mixture(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)).astype(np.float32) * 3
    x = np.empty((n, dim), dtype=np.float32)
    step = 1_000_000
    for s in range(0, n, step):
        m = min(step, n - s)
        x[s:s + m] = centres[rng.integers(0, k, m)] + rng.standard_normal((m, dim), dtype=np.float32)
    return x


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=10_000_000)
    ap.add_argument("--out", default=str(REPO / "bench/results/kmeans.json"))
    args = ap.parse_args()
    cfg = load_section(KmeansConfig, "kmeans", REPO / "params.yaml")
    x = mixture(args.frames, 39, 150, 0)
    norm = fit_normaliser(x)
    x = norm.apply(x)
    t = time.perf_counter()
    km = fit_kmeans(x, cfg)
    fit_s = time.perf_counter() - t
    assign_rates = {}
    probe = x[:2_000_000]
    for k in (100, 500):
        c = x[np.random.default_rng(k).choice(len(x), k, replace=False)]
        with threadpool_limits(1):
            assign(probe[:100_000], c)
            t = time.perf_counter()
            assign(probe, c)
            assign_rates[f"k{k}_frames_per_s_per_core"] = len(probe) / (time.perf_counter() - t)
    body = {
        "machine": {"cpus": os.cpu_count()},
        "frames": args.frames, "dim": 39, "config": cfg.__dict__,
        "fit_seconds": fit_s, "fit_steps": int(km.n_steps_), "fit_within_180_s": fit_s <= 180,
        **assign_rates,
    }
    write_json(args.out, body)
    print(yaml.safe_dump(body, sort_keys=False))


if __name__ == "__main__":
    main()
