"""model.npz: the k-means centroids and what they were fitted on. fit-kmeans writes it;
assign-labels reads it, refuses centroids of other features, another waveform normalisation or
another precision, and fingerprints it (`model_digest`) so a label part of other centroids is
never reused. No pickle: plain arrays, strings as 0-d unicode arrays.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from ups.atomic import atomic_write
from ups.config import FeaturesConfig
from ups.kmeans import Normaliser


def write_model(path: Path, centroids: np.ndarray, norm: Normaliser, features: FeaturesConfig,
                source: dict[str, Any], n_clusters: int) -> None:
    """model.npz: the centroids and what they were fitted on (assign-labels refuses other features)."""
    with atomic_write(path) as fh:
        np.savez(fh, centroids=centroids, mean=norm.mean, std=norm.std,
                 kind=np.array(features.kind), layer=np.array(features.layer if features.kind == "hubert"
                                                              else 0, dtype=np.int64),
                 hubert_model=np.array(source.get("hubert_model", "")),
                 revision=np.array(source.get("revision", "")),
                 normalize_audio=np.array(bool(source.get("normalize_audio", False))),
                 precision=np.array(source.get("precision", "")),
                 n_clusters=np.array(n_clusters, dtype=np.int64))


def load_model(path: Path) -> dict[str, Any]:
    """Every array of model.npz, by name."""
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def model_digest(model: dict[str, Any]) -> str:
    """sha256 of what labels depend on in model.npz (arrays, not the zip's timestamps)."""
    h = hashlib.sha256()
    for name in ("centroids", "mean", "std", "kind", "layer", "hubert_model", "revision", "n_clusters",
                 "normalize_audio", "precision"):
        if name not in model:  # models fitted before `revision` was recorded
            continue
        a = np.asarray(model[name])
        h.update(name.encode() + str(a.dtype).encode() + str(a.shape).encode())
        h.update(a.tobytes() if a.dtype.kind != "U" else str(a).encode())
    return h.hexdigest()


def check_model(m: dict[str, Any], model: Path, features: FeaturesConfig, source: Any) -> None:
    """Refuse centroids fitted on other features than the ones configured now."""
    fitted = (str(m["kind"]), int(m["layer"]), str(m["hubert_model"]), str(m.get("revision", "")))
    wanted = (features.kind, features.layer if features.kind == "hubert" else 0,
              source.name if source is not None else "",
              source.pinned_revision if source is not None else "")
    if fitted[:3] != wanted[:3] or (features.kind == "hubert" and "revision" in m
                                    and fitted[3] != wanted[3]):
        raise ValueError(f"{model} was fitted on {fitted[0]} features (layer {fitted[1]}, model "
                         f"{fitted[2] or '-'} {fitted[3]}); features are now {wanted[0]} (layer "
                         f"{wanted[1]}, model {wanted[2] or '-'} {wanted[3]}): re-run fit-kmeans")


def check_waveform(m: dict[str, Any], model: Path, normalize_audio: bool) -> None:
    """Refuse centroids fitted on features of another waveform normalisation than the trainer's."""
    fitted = bool(m.get("normalize_audio", False))
    if fitted != normalize_audio:
        raise ValueError(f"{model} was fitted on features of audio with train.normalize_audio: "
                         f"{str(fitted).lower()}; it is now {str(normalize_audio).lower()}: "
                         "re-run fit-kmeans")


def check_precision(m: dict[str, Any], model: Path, precision: str, allow_mismatch: bool) -> None:
    """Refuse centroids fitted at another resolved precision (`features.precision: auto` is bf16
    on a GPU and fp32 on a CPU: a fit on one machine and labels on another would mix them)."""
    fitted = str(m.get("precision", ""))
    if fitted and fitted != precision and not allow_mismatch:
        raise ValueError(f"{model} was fitted on features computed in {fitted}; features.precision "
                         f"resolves to {precision} here: set features.precision: {fitted} (or re-run "
                         "fit-kmeans, or set assign_labels.allow_precision_mismatch: true)")
