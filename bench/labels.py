"""HuBERT-layer labels at 768 dims: extraction audio-s/s, k-means fit, assignment frames/s.

1. Extraction (`ups.hubert_features.LayerFeatures`, the fit-kmeans / assign-labels path) of layer
   `--layer` of a HuBERT-base-sized model (random weights: the hub is unreachable here; speed does
   not depend on the values) on `--chunks` 10 s chunks, `--device` cpu or cuda (bf16 autocast on a
   GPU: features.precision auto). Baseline in the same run: the whole 12-layer forward with
   `output_hidden_states=True`, as before the truncation. Audio seconds per wall and CPU second.
2. Fit (`ups.kmeans.fit_kmeans`) on `--frames` x 768 normalised frames of a Gaussian mixture,
   k = `--clusters`, `--n-init` inits, the other settings params.yaml's `kmeans` (fairseq's).
   Baseline in the same run, on one init subsample: sklearn's `kmeans_plusplus` run after run
   (the previous init path) vs `kmeans_plusplus_runs` in lockstep, `--baseline-inits` inits.
3. Assignment: `ups.kmeans.assign` (numpy, MFCC path) and `TorchAssigner` (the hubert path, on
   the extraction device) at 768 dims, k = 500, BLAS / torch threads 1 and all.
The load average is recorded: the 2-core machine is shared, CPU seconds are the steadier figure.

    python -m bench.labels [--device cpu] [--chunks 16] [--frames 1000000] [--n-init 20]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.kmeans import loadavg  # noqa: E402
from ups.atomic import write_json  # noqa: E402
from ups.config import KmeansConfig, load_section  # noqa: E402
from ups.kmeans import (  # noqa: E402
    Normaliser,
    TorchAssigner,
    assign,
    fit_kmeans,
    fit_normaliser,
    kmeans_plusplus_runs,
)


def timed(fn: Any) -> tuple[Any, float, float]:
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - t, time.process_time() - c


def mixture768(n: int, k: int, seed: int, draw_seed: int = 0) -> np.ndarray:
    """Frames of a k-component mixture in 768 dims (centres from `seed`, frames from `draw_seed`)."""
    centres = np.random.default_rng(seed).standard_normal((k, 768)).astype(np.float32)
    rng = np.random.default_rng([seed, draw_seed])
    x = np.empty((n, 768), dtype=np.float32)
    for s in range(0, n, 100_000):
        m = min(100_000, n - s)
        comp = rng.integers(0, k, m)
        x[s:s + m] = centres[comp] + 0.7 * rng.standard_normal((m, 768), dtype=np.float32)
    return x


def extraction(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import torch
    from transformers import HubertConfig, HubertModel

    from ups.hubert_features import FeatureModel, LayerFeatures
    from ups.hubert_model import base_config_dict, flops_per_audio_second

    torch.manual_seed(0)
    model_dir = work / "hubert-base-random"
    HubertModel(HubertConfig(**base_config_dict())).save_pretrained(model_dir)
    rng = np.random.default_rng(0)
    pcms = [rng.integers(-6000, 6000, 160_000).astype(np.int16) for _ in range(args.chunks)]
    audio_s = 10.0 * args.chunks
    lf = LayerFeatures(FeatureModel(str(model_dir)), args.layer, args.device, args.batch_chunks)
    lf(pcms[:args.batch_chunks])  # warm-up (allocator, kernels)
    if lf.device.startswith("cuda"):
        torch.cuda.synchronize()
    _, wall, cpu = timed(lambda: lf(pcms))
    full = HubertModel.from_pretrained(model_dir).eval().to(lf.device)

    def whole() -> None:
        for s in range(0, len(pcms), args.batch_chunks):
            x = torch.from_numpy(np.stack(pcms[s:s + args.batch_chunks]).astype(np.float32) / 32768)
            with torch.inference_mode():
                full(x.to(lf.device), output_hidden_states=True).hidden_states[args.layer].float().cpu()

    _, base_wall, base_cpu = timed(whole)
    cfg = HubertConfig(**base_config_dict())
    flops = flops_per_audio_second(cfg, training=False)
    return {
        "device": lf.device, "precision": lf.precision, "layer": args.layer, "chunks": args.chunks,
        "batch_chunks": args.batch_chunks, "torch_threads": torch.get_num_threads(),
        "loadavg_before": loadavg(),
        "layer_features": {"seconds": wall, "cpu_seconds": cpu, "audio_s_per_s": audio_s / wall,
                           "audio_s_per_cpu_s": audio_s / cpu},
        "baseline_whole_model_hidden_states": {"seconds": base_wall, "cpu_seconds": base_cpu,
                                               "audio_s_per_s": audio_s / base_wall},
        # wall seconds on a shared machine flatter or hide a gain: CPU seconds beside them
        "speedup_vs_baseline_wall": base_wall / wall,
        "speedup_vs_baseline_cpu_seconds": base_cpu / cpu,
        "model_gflop_per_audio_s_full_forward": flops / 1e9,
    }


def fit(args: argparse.Namespace) -> dict[str, Any]:
    from sklearn.cluster import kmeans_plusplus
    from threadpoolctl import threadpool_limits

    base = load_section(KmeansConfig, "kmeans", REPO / "params.yaml")
    cfg = dataclasses.replace(base, n_clusters=args.clusters, n_init=args.n_init)
    x = mixture768(args.frames, 2 * args.clusters, 0)
    held = mixture768(100_000, 2 * args.clusters, 0, draw_seed=1)  # same mixture, other frames
    norm = fit_normaliser(x)
    norm.apply_inplace(x)
    held = norm.apply(held)
    load0 = loadavg()
    km, wall, cpu = timed(lambda: fit_kmeans(x, cfg))
    out: dict[str, Any] = {
        "frames": args.frames, "dim": 768, "config": dataclasses.asdict(cfg), "loadavg_before": load0,
        "seconds": wall, "cpu_seconds": cpu, "steps": km.n_steps, "converged": km.converged,
        "held_out_inertia_per_frame": assign(held, km.centroids)[1] / len(held),
    }
    # the k-means++ inits alone, old path vs lockstep, on one subsample of init_size frames
    sub = x[np.random.default_rng(1).integers(0, len(x), min(len(x), 3 * cfg.batch_size))]
    n = args.baseline_inits
    with threadpool_limits(limits=None, user_api="blas"):
        _, lock_wall, lock_cpu = timed(lambda: kmeans_plusplus_runs(sub, cfg.n_clusters, n,
                                                                    np.random.default_rng(0)))
        sub64 = sub.astype(np.float64)
        _, sk_wall, sk_cpu = timed(lambda: [kmeans_plusplus(sub64, cfg.n_clusters, random_state=i)
                                            for i in range(n)])
    out["inits_baseline_same_run"] = {
        "init_size": len(sub), "inits": n, "loadavg_before": loadavg(),
        "lockstep_float32": {"seconds": lock_wall, "cpu_seconds": lock_cpu},
        "sklearn_kmeans_plusplus_float64_one_by_one": {"seconds": sk_wall, "cpu_seconds": sk_cpu},
        "speedup_cpu_seconds": sk_cpu / lock_cpu, "speedup_wall": sk_wall / lock_wall,
    }
    return out


def assignment(args: argparse.Namespace) -> dict[str, Any]:
    import torch
    from threadpoolctl import threadpool_limits

    x = mixture768(args.assign_frames, 1000, 2)
    c = x[np.random.default_rng(3).choice(len(x), 500, replace=False)].copy()
    norm = Normaliser(np.zeros(768, np.float32), np.ones(768, np.float32))
    out: dict[str, Any] = {"frames": len(x), "dim": 768, "clusters": 500, "loadavg_before": loadavg()}
    cores = os.cpu_count() or 1
    for threads in sorted({1, cores}):
        with threadpool_limits(limits=threads, user_api="blas"):
            assign(x[:20_000], c)
            _, wall, _ = timed(lambda: assign(x, c))
        out[f"numpy_threads{threads}"] = {"frames_per_s": len(x) / wall}
        torch.set_num_threads(threads)
        ta = TorchAssigner(norm, c, "cpu")
        xt = torch.from_numpy(x)
        ta(xt[:20_000])
        _, wall, _ = timed(lambda ta=ta, xt=xt: ta(xt))
        out[f"torch_cpu_threads{threads}"] = {"frames_per_s": len(x) / wall}
    if torch.cuda.is_available():
        ta = TorchAssigner(norm, c, "cuda")
        xt = torch.from_numpy(x).cuda()
        ta(xt[:20_000])
        torch.cuda.synchronize()
        _, wall, _ = timed(lambda: ta(xt))
        out["torch_cuda"] = {"frames_per_s": len(x) / wall}
    return out


def main() -> None:
    import tempfile

    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="cpu", help="cpu | cuda (extraction and assignment)")
    ap.add_argument("--chunks", type=int, default=16, help="10 s chunks for the extraction")
    ap.add_argument("--batch-chunks", type=int, default=16)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--frames", type=int, default=1_000_000, help="768-dim frames for the fit")
    ap.add_argument("--clusters", type=int, default=500)
    ap.add_argument("--n-init", type=int, default=20)
    ap.add_argument("--baseline-inits", type=int, default=3)
    ap.add_argument("--assign-frames", type=int, default=500_000)
    ap.add_argument("--only", nargs="*", default=["extraction", "fit", "assign"])
    ap.add_argument("--out", default=str(REPO / "bench/results/labels.json"))
    args = ap.parse_args()
    body: dict[str, Any] = {"machine": {"cpus": os.cpu_count()}, "args": vars(args)}
    with tempfile.TemporaryDirectory(prefix="bench-labels-") as tmp:
        if "extraction" in args.only:
            body["extraction"] = extraction(args, Path(tmp))
            body["extraction"]["peak_rss_mb_so_far"] = peak_rss_mb()
            print(yaml.safe_dump({"extraction": body["extraction"]}, sort_keys=False), flush=True)
    if "fit" in args.only:
        body["fit"] = fit(args)
        body["fit"]["peak_rss_mb_so_far"] = peak_rss_mb()  # the 768-dim frames dominate it
        print(yaml.safe_dump({"fit": body["fit"]}, sort_keys=False), flush=True)
    if "assign" in args.only:
        body["assign"] = assignment(args)
        print(yaml.safe_dump({"assign": body["assign"]}, sort_keys=False), flush=True)
    write_json(args.out, body)


def peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


if __name__ == "__main__":
    main()
