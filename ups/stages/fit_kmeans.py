"""fit-kmeans: one MiniBatchKMeans model on a sample of `kmeans.sample_hours` of training frames.

Sampling never loads all features: frame counts come from the per-tar offsets, a seeded draw picks
frame indices, and only those rows are read from the memory-mapped MFCC files (kind mfcc). For kind
hubert whole training chunks are drawn (seeded) until the frame budget is met and their layer
features are computed from the PCM shards (no MP3 decoding). Normalisation (per-dimension mean and
std) is estimated on the same sample and stored with the centroids in `<out_dir>/model.npz`
(no pickle). The report gives the sample's inertia and cluster-usage histogram.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ups.atomic import atomic_write, clear_stale_tmp
from ups.config import FeaturesConfig, KmeansConfig
from ups.feature_store import layer_features_for, list_tars
from ups.kmeans import assign, entropy_bits, fit_kmeans, fit_normaliser, sample_frames, usage
from ups.progress import bar
from ups.report import write_report

log = logging.getLogger(__name__)

STAGE = "fit-kmeans"
FRAME_RATE_HZ = 50


def sample_training_frames(cfg: KmeansConfig, features: FeaturesConfig, features_dir: Path,
                           audio_dir: Path) -> np.ndarray:
    tars = list_tars(features_dir, "train")
    if not tars:
        raise FileNotFoundError(f"no training features under {features_dir}/train (run prepare-audio)")
    n_sample = int(round(cfg.sample_hours * 3600 * FRAME_RATE_HZ))
    rng = np.random.default_rng(cfg.seed)
    if features.kind == "mfcc":
        picks = sample_frames(np.array([t.n_frames for t in tars]), n_sample, rng)
        parts = [t.mfcc()[p] for t, p in zip(bar(tars, desc=STAGE, unit="tar"), picks, strict=True)
                 if len(p)]
        return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)

    from ups.hubert_features import LayerFeatures

    extract = LayerFeatures(features.hubert_model, features.layer, features.device,
                            features.batch_chunks)
    chunks = [(ti, int(cid), int(t.offsets[i + 1] - t.offsets[i]))
              for ti, t in enumerate(tars) for i, cid in enumerate(t.chunk_ids)]
    order = rng.permutation(len(chunks))
    lengths = np.array([chunks[i][2] for i in order])
    n_take = int(np.searchsorted(np.cumsum(lengths), n_sample) + 1)
    wanted: dict[int, set[int]] = {}
    for i in order[:n_take]:
        ti, cid, _ = chunks[i]
        wanted.setdefault(ti, set()).add(cid)
    parts = []
    for ti in bar(sorted(wanted), desc=STAGE, unit="tar"):
        feats = layer_features_for(tars[ti], audio_dir, "train", extract, wanted[ti])
        parts.extend(feats[c] for c in sorted(feats))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float32)


def run(cfg: KmeansConfig, features: FeaturesConfig, *, features_dir: Path, audio_dir: Path,
        out_dir: Path) -> dict[str, Any]:
    t0 = time.perf_counter()
    x = sample_training_frames(cfg, features, features_dir, audio_dir)
    log.info("%s: %d sampled frames (%.2f h) of dim %d", STAGE, len(x),
             len(x) / FRAME_RATE_HZ / 3600, x.shape[1])
    norm = fit_normaliser(x)
    x = norm.apply(x)
    t1 = time.perf_counter()
    km = fit_kmeans(x, cfg)
    fit_s = time.perf_counter() - t1
    centroids = km.centroids
    labels, inertia = assign(x, centroids)
    counts = usage(labels, cfg.n_clusters)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_tmp(out_dir)  # temporaries of a killed run
    with atomic_write(out_dir / "model.npz") as fh:
        np.savez(fh, centroids=centroids, mean=norm.mean, std=norm.std,
                 kind=np.array(features.kind), layer=np.array(features.layer if features.kind == "hubert"
                                                              else 0, dtype=np.int64),
                 hubert_model=np.array(features.hubert_model if features.kind == "hubert" else ""),
                 n_clusters=np.array(cfg.n_clusters, dtype=np.int64))
    h = entropy_bits(counts)
    fields = {
        "features": asdict(features),
        "n_sample_frames": int(len(x)), "sample_hours": round(len(x) / FRAME_RATE_HZ / 3600, 6),
        "dim": int(x.shape[1]), "inertia_per_frame": inertia / len(x),
        "n_steps": km.n_steps, "converged": km.converged,
        "usage_entropy_bits": h, "usage_entropy_normalised": h / np.log2(cfg.n_clusters),
        "empty_clusters": int((counts == 0).sum()), "usage_histogram": counts.tolist(),
    }
    write_report(out_dir / "report.json", stage=STAGE, config=cfg, **fields)
    # timings are logged, not reported: report.json is a DVC output (tests/test_demo_rerun.py)
    log.info("%s: %d clusters, inertia/frame %.3f, usage entropy %.2f of %.2f bits, %d steps, fit %.1f s, "
             "total %.1f s", STAGE, cfg.n_clusters, fields["inertia_per_frame"], h, np.log2(cfg.n_clusters),
             km.n_steps, fit_s, time.perf_counter() - t0)
    return fields


def load_model(path: Path) -> dict[str, Any]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}
