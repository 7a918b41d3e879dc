"""k-means on realistic frames: `ups.kmeans.fit_kmeans` and faiss-cpu side by side, same run.

Frames: the bundled sample corpus decoded (its MP3 members, 16 kHz mono) into the recipe's 39-dim
MFCC (`ups.mfcc.hubert_mfcc`), and 768-dim layer-like frames made from them (9 frames of context,
a fixed random projection to 768 and tanh: correlated, anisotropic, non-Gaussian, as layer
features are). Training frames and held-out frames come from different files. Both fits see the
raw frames (fairseq's recipe); the held-out inertia per frame is measured with the same
nearest-centroid search. CPU seconds (this process's threads and children) beside wall seconds,
with the load average before and after: the machine is shared.

    python -m bench.kmeans --realistic [--n-init-768 3]   (needs faiss-cpu, not a project dependency)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tarfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ups.atomic import write_json  # noqa: E402
from ups.audio import CorruptAudio, decode_mono_16k  # noqa: E402
from ups.config import KmeansConfig, load_section  # noqa: E402
from ups.kmeans import assign, fit_kmeans  # noqa: E402
from ups.mfcc import hubert_mfcc  # noqa: E402


def cpu_seconds() -> float:
    t = os.times()
    return time.process_time() + t.children_user + t.children_system


def sample_mfcc() -> list[np.ndarray]:
    """One (frames x 39) array per audio file of the sample corpus."""
    out = []
    for tar in sorted((REPO / "sample").glob("audio*/*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf.getmembers():
                if m.isfile() and m.name.endswith(".mp3"):
                    data = tf.extractfile(m).read()  # type: ignore[union-attr]
                    try:
                        out.append(hubert_mfcc(decode_mono_16k(data)))
                    except CorruptAudio:  # the corpus plants undecodable members
                        continue
    return out


def layer_like(mfcc: np.ndarray, proj: np.ndarray, context: int = 4) -> np.ndarray:
    """768-dim frames: MFCC with +-context frames stacked, projected, tanh."""
    pad = np.pad(mfcc, ((context, context), (0, 0)), mode="edge")
    stacked = np.concatenate([pad[i:i + len(mfcc)] for i in range(2 * context + 1)], axis=1)
    return np.tanh(stacked @ proj).astype(np.float32)


def timed(fn):
    w, c = time.perf_counter(), cpu_seconds()
    out = fn()
    return out, time.perf_counter() - w, cpu_seconds() - c


def faiss_fit(x: np.ndarray, k: int, seed: int, nredo: int) -> np.ndarray:
    import faiss

    km = faiss.Kmeans(x.shape[1], k, niter=25, nredo=nredo, seed=seed + 1, verbose=False)
    km.train(np.ascontiguousarray(x, dtype=np.float32))
    return np.asarray(km.centroids, dtype=np.float32)


def compare(name: str, train: np.ndarray, held: np.ndarray, cfg: KmeansConfig) -> dict:
    row: dict = {"train_frames": len(train), "held_out_frames": len(held), "dim": train.shape[1],
                 "k": cfg.n_clusters, "n_init": cfg.n_init, "loadavg_before": list(os.getloadavg())}
    fit, w, c = timed(lambda: fit_kmeans(train, cfg))
    row["ups"] = {"wall_s": w, "cpu_s": c, "steps": fit.n_steps,
                  "held_out_inertia_per_frame": assign(held, fit.centroids)[1] / len(held)}
    cents, w, c = timed(lambda: faiss_fit(train, cfg.n_clusters, cfg.seed, cfg.n_init))
    row["faiss_cpu"] = {"wall_s": w, "cpu_s": c, "niter": 25, "nredo": cfg.n_init,
                        "max_points_per_centroid": 256,
                        "held_out_inertia_per_frame": assign(held, cents)[1] / len(held)}
    row["inertia_ratio_faiss_over_ups"] = (row["faiss_cpu"]["held_out_inertia_per_frame"]
                                           / row["ups"]["held_out_inertia_per_frame"])
    row["cpu_ratio_faiss_over_ups"] = row["faiss_cpu"]["cpu_s"] / row["ups"]["cpu_s"]
    row["loadavg_after"] = list(os.getloadavg())
    print(name, json.dumps(row), flush=True)
    return row


def main(argv: list[str] | None = None) -> None:
    import faiss

    ap = argparse.ArgumentParser()
    ap.add_argument("--n-init-768", type=int, default=3)
    ap.add_argument("--out", default=str(REPO / "bench/results/kmeans.json"))
    args = ap.parse_args(argv)
    base = load_section(KmeansConfig, "kmeans", REPO / "params.yaml")
    files, w, c = timed(sample_mfcc)
    n_held = max(1, len(files) // 5)  # held-out frames come from other files
    train39, held39 = np.concatenate(files[n_held:]), np.concatenate(files[:n_held])
    body: dict = {"machine": {"cpus": os.cpu_count(), "faiss": faiss.__version__,
                              "faiss_omp_threads": faiss.omp_get_max_threads()},
                  "files": len(files), "decode_mfcc": {"wall_s": w, "cpu_s": c}}
    body["mfcc_39d_k100"] = compare("mfcc", train39, held39, dataclasses.replace(base, n_clusters=100))
    proj = np.random.default_rng(0).standard_normal((9 * 39, 768)).astype(np.float32) / np.sqrt(9 * 39)
    train768 = np.concatenate([layer_like(f, proj) for f in files[n_held:]])
    held768 = np.concatenate([layer_like(f, proj) for f in files[:n_held]])
    body["layer_like_768d_k500"] = compare(
        "768", train768, held768, dataclasses.replace(base, n_clusters=500, n_init=args.n_init_768))
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results["realistic_frames"] = body  # beside bench.kmeans' synthetic figures
    write_json(out, results)


if __name__ == "__main__":
    main()
