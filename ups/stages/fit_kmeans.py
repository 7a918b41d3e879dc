"""fit-kmeans: one MiniBatchKMeans model on a sample of `kmeans.sample_hours` of training frames.

Sampling never loads all features: frame counts come from the per-tar offsets, a seeded draw picks
frame indices, and only those rows are read from the memory-mapped MFCC files (kind mfcc). For kind
hubert whole training chunks are drawn (seeded) until the frame budget is met and their layer
features are computed from the PCM shards (no MP3 decoding). The frames are clustered raw, as
fairseq's `learn_kmeans.py` does (no per-dimension normalisation, so the labels are the recipe's
for the same features); `<out_dir>/model.npz` (no pickle) stores the centroids with an identity
`mean` / `std` that assign-labels applies. The report gives the sample's inertia and cluster-usage histogram.
"""

from __future__ import annotations

import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from ups.atomic import clear_stale_tmp
from ups.centroids import write_model
from ups.config import FeaturesConfig, KmeansConfig, TrainConfig
from ups.feature_store import iter_layer_features, list_tars
from ups.kmeans import Normaliser, assign, fit_kmeans, sample_frames, usage, usage_figures
from ups.progress import bar
from ups.stage_report import write_report

log = logging.getLogger(__name__)

STAGE = "fit-kmeans"
FRAME_RATE_HZ = 50


def sample_training_frames(cfg: KmeansConfig, features: FeaturesConfig, features_dir: Path,
                           audio_dir: Path, extract: Any = None) -> np.ndarray:
    """The fit sample, float32 (frames x dim). kind mfcc: `sample_hours` of frames drawn uniformly
    from the memory-mapped MFCC; kind hubert: whole training chunks drawn (seeded) until the frame
    budget is met, their layer features written straight into one preallocated array."""
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

    chunks = [(ti, int(cid), int(t.offsets[i + 1] - t.offsets[i]))
              for ti, t in enumerate(tars) for i, cid in enumerate(t.chunk_ids)]
    order = rng.permutation(len(chunks))
    lengths = np.array([chunks[i][2] for i in order])
    n_take = int(np.searchsorted(np.cumsum(lengths), n_sample) + 1)
    wanted: dict[int, set[int]] = {}
    for i in order[:n_take]:
        ti, cid, _ = chunks[i]
        wanted.setdefault(ti, set()).add(cid)
    # rows of each chosen chunk in the sample: tar order, then the tar's chunk order
    row: dict[tuple[int, int], int] = {}
    total = 0
    for ti in sorted(wanted):
        t = tars[ti]
        for i, cid in enumerate(t.chunk_ids):
            if int(cid) in wanted[ti]:
                row[(ti, int(cid))] = total
                total += int(t.offsets[i + 1] - t.offsets[i])
    x = np.empty((total, extract.dim), dtype=np.float32)
    for ti in bar(sorted(wanted), desc=STAGE, unit="tar"):
        for ids, h in iter_layer_features(tars[ti], audio_dir, "train", extract, wanted[ti]):
            hn = h.cpu().numpy()
            for j, cid in enumerate(ids):
                x[row[(ti, cid)]:row[(ti, cid)] + hn.shape[1]] = hn[j]
    return x


def run(cfg: KmeansConfig, features: FeaturesConfig, *, features_dir: Path, audio_dir: Path,
        out_dir: Path, train: TrainConfig | None = None) -> dict[str, Any]:
    """`train` resolves `features.hubert_model: init` (its init, init_revision, seed)."""
    t0 = time.perf_counter()
    extract, source = None, {}
    if features.kind == "hubert":
        from ups.hubert_features import LayerFeatures, feature_model

        fm = feature_model(features, train)
        normalize_audio = (train or TrainConfig()).normalize_audio
        extract = LayerFeatures(fm, features.layer, features.device, features.batch_chunks,
                                features.precision, normalize_audio)
        source = {"hubert_model": fm.name, "revision": fm.pinned_revision, "commit": extract.commit or "",
                  "device": extract.device, "precision": extract.precision,
                  "normalize_audio": normalize_audio}
    x = sample_training_frames(cfg, features, features_dir, audio_dir, extract)
    extract_s = time.perf_counter() - t0
    log.info("%s: %d sampled frames (%.2f h) of dim %d in %.1f s", STAGE, len(x),
             len(x) / FRAME_RATE_HZ / 3600, x.shape[1], extract_s)
    norm = Normaliser.identity(x.shape[1])  # raw features, as learn_kmeans.py / dump_km_label.py
    t1 = time.perf_counter()
    km = fit_kmeans(x, cfg)
    fit_s = time.perf_counter() - t1
    centroids = km.centroids
    labels, inertia = assign(x, centroids)
    counts = usage(labels, cfg.n_clusters)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_tmp(out_dir)  # temporaries of a killed run
    write_model(out_dir / "model.npz", centroids, norm, features, source, cfg.n_clusters)
    fields = {
        "features": asdict(features), "feature_model": source,
        "n_sample_frames": int(len(x)), "sample_hours": round(len(x) / FRAME_RATE_HZ / 3600, 6),
        "dim": int(x.shape[1]), "inertia_per_frame": inertia / len(x),
        "n_steps": km.n_steps, "converged": km.converged,
        "fit": "ups.kmeans mini-batch k-means, numpy on the CPU",
        "normalisation": "none: raw features, as fairseq's learn_kmeans.py",
        **usage_figures(counts, cfg.n_clusters), "usage_histogram": counts.tolist(),
    }
    write_report(out_dir / "report.json", stage=STAGE, config=cfg, **fields)
    # timings are logged, not reported: report.json is a DVC output (tests/test_demo_rerun.py)
    log.info("%s: %d clusters, inertia/frame %.3f, usage entropy %.2f of %.2f bits, %d steps, "
             "features %.1f s, fit %.1f s, total %.1f s", STAGE, cfg.n_clusters, fields["inertia_per_frame"],
             fields["usage_entropy_bits"], np.log2(cfg.n_clusters), km.n_steps, extract_s, fit_s,
             time.perf_counter() - t0)
    return fields
