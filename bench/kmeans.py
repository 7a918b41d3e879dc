"""fit-kmeans and assign-labels speed on synthetic 39-dim frames (a Gaussian mixture).

Fit: `ups.kmeans.fit_kmeans` with the params.yaml `kmeans` defaults but 100 clusters (fairseq's: k-means++,
batch 10000, n_init 20, max_no_improvement 100, max_iter 100) on `--frames` normalised frames of
a 150-component mixture. Baseline in the same run: sklearn's `MiniBatchKMeans.fit` with the same
settings on `--baseline-frames` frames, against `fit_kmeans` on those same frames (time and
inertia per frame on a held-out slice). Assignment: `ups.kmeans.assign` (the assign-labels path,
block 65536) with BLAS limited to 1 and to 2 threads, frames per second and per core, k = 100
and k = 500. The load average is recorded: the machine is shared.

    python -m bench.kmeans [--frames 10000000] [--baseline-frames 1000000]
    python -m bench.kmeans --realistic    # ups vs faiss-cpu on MFCC / layer-like frames (bench.kmeans_frames)
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import yaml
from threadpoolctl import threadpool_limits

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ups.atomic import write_json  # noqa: E402
from ups.config import KmeansConfig, load_section  # noqa: E402
from ups.kmeans import assign, fit_kmeans, fit_normaliser  # noqa: E402


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def mixture(n: int, dim: int, k: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((k, dim)).astype(np.float32) * 3
    scales = rng.uniform(0.5, 1.5, k).astype(np.float32)
    x = np.empty((n, dim), dtype=np.float32)
    step = 1_000_000
    for s in range(0, n, step):
        m = min(step, n - s)
        comp = rng.integers(0, k, m)
        x[s:s + m] = centres[comp] + scales[comp, None] * rng.standard_normal((m, dim), dtype=np.float32)
    return x


def sklearn_fit(x: np.ndarray, cfg: KmeansConfig) -> tuple[np.ndarray, int]:
    from sklearn.cluster import MiniBatchKMeans

    km = MiniBatchKMeans(
        n_clusters=cfg.n_clusters, init="k-means++", max_iter=cfg.max_iter,
        batch_size=cfg.batch_size, tol=cfg.tol, max_no_improvement=cfg.max_no_improvement,
        init_size=None, n_init=cfg.n_init, reassignment_ratio=cfg.reassignment_ratio,
        random_state=cfg.seed, compute_labels=False, verbose=0).fit(x)
    return km.cluster_centers_.astype(np.float32), int(km.n_steps_)


def main() -> None:
    if "--realistic" in sys.argv[1:]:
        from bench.kmeans_frames import main as realistic

        realistic([a for a in sys.argv[1:] if a != "--realistic"])
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--frames", type=int, default=10_000_000)
    ap.add_argument("--baseline-frames", type=int, default=1_000_000)
    ap.add_argument("--out", default=str(REPO / "bench/results/kmeans.json"))
    args = ap.parse_args()
    # the MFCC option's settings: params.yaml's kmeans section with 100 clusters (its default is
    # the HuBERT-layer recipe's 500; python -m bench.labels times that at 768 dims)
    cfg = dataclasses.replace(load_section(KmeansConfig, "kmeans", REPO / "params.yaml"), n_clusters=100)
    held_out = mixture(500_000, 39, 150, 1)
    x = mixture(args.frames, 39, 150, 0)
    norm = fit_normaliser(x)
    x = norm.apply(x)
    held_out = norm.apply(held_out)
    body: dict = {"machine": {"cpus": os.cpu_count()}, "frames": args.frames, "dim": 39,
                  "mixture_components": 150, "config": asdict(cfg)}

    load0 = loadavg()
    t = time.perf_counter()
    cpu = time.process_time()
    km = fit_kmeans(x, cfg)
    fit_s = time.perf_counter() - t
    body["fit"] = {
        "loadavg_before": load0, "seconds": fit_s, "cpu_seconds": time.process_time() - cpu,
        "steps": km.n_steps, "converged": km.converged, "within_180_s": fit_s <= 180,
        "held_out_inertia_per_frame": assign(held_out, km.centroids)[1] / len(held_out)}
    print(yaml.safe_dump(body, sort_keys=False), flush=True)

    small = x[:args.baseline_frames]
    base = {"frames": args.baseline_frames, "loadavg_before": loadavg()}
    for name, fn in (("ups", lambda: (lambda f: (f.centroids, f.n_steps))(fit_kmeans(small, cfg))),
                     ("sklearn_minibatchkmeans", lambda: sklearn_fit(small, cfg))):
        t, c = time.perf_counter(), time.process_time()
        centroids, steps = fn()
        base[name] = {"seconds": time.perf_counter() - t, "cpu_seconds": time.process_time() - c,
                      "steps": steps,
                      "held_out_inertia_per_frame": assign(held_out, centroids)[1] / len(held_out)}
    base["speedup_wall"] = base["sklearn_minibatchkmeans"]["seconds"] / base["ups"]["seconds"]
    base["speedup_cpu"] = base["sklearn_minibatchkmeans"]["cpu_seconds"] / base["ups"]["cpu_seconds"]
    base["inertia_ratio_ups_over_sklearn"] = (base["ups"]["held_out_inertia_per_frame"]
                                              / base["sklearn_minibatchkmeans"]["held_out_inertia_per_frame"])
    body["baseline_same_run"] = base
    print(yaml.safe_dump({"baseline_same_run": base}, sort_keys=False), flush=True)

    probe = x[:2_000_000]
    rates: dict = {"loadavg_before": loadavg(), "frames": len(probe), "block_frames": 65536}
    for k in (100, 500):
        c = x[np.random.default_rng(k).choice(len(x), k, replace=False)]
        for threads in (1, 2):
            with threadpool_limits(threads):
                assign(probe[:100_000], c)
                t = time.perf_counter()
                assign(probe, c)
                fps = len(probe) / (time.perf_counter() - t)
            rates[f"k{k}_threads{threads}"] = {"frames_per_s": fps, "frames_per_s_per_core": fps / threads}
    rates["loadavg_after"] = loadavg()
    body["assign"] = rates
    write_json(args.out, body)
    print(yaml.safe_dump({"assign": rates}, sort_keys=False))


if __name__ == "__main__":
    main()
