"""assign-labels: every chunk, train and valid, labelled by the one final k-means model.

For each split and source tar the stage reads the chunks' features (MFCC from prepare-audio, or
HuBERT layer features computed from the PCM shards), normalises them with the model's statistics
and takes the nearest centroid per 50 Hz frame. Outputs per split, written atomically:
`chunk_ids.npy` (int64, sorted), `offsets.npy` (int64, n + 1) and `labels.npy` (int16);
chunk i's labels are labels[offsets[i]:offsets[i + 1]], one per CNN frame. The report gives usage
entropy, inertia and the mutual information between clusters and language per frame.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ups.atomic import atomic_write, clear_stale_tmp
from ups.config import AssignLabelsConfig, FeaturesConfig
from ups.feature_store import layer_features_for, list_tars
from ups.kmeans import Normaliser, assign, entropy_bits, mutual_information_from_counts, usage
from ups.progress import bar
from ups.report import write_report
from ups.stages.fit_kmeans import load_model

log = logging.getLogger(__name__)

STAGE = "assign-labels"
SPLITS = ("train", "valid")


def _write_npy(path: Path, a: np.ndarray) -> None:
    with atomic_write(path) as fh:
        np.save(fh, a, allow_pickle=False)


def label_split(cfg: AssignLabelsConfig, features: FeaturesConfig, model: dict[str, Any],
                features_dir: Path, audio_dir: Path, split: str, extract: Any):
    norm = Normaliser(model["mean"], model["std"])
    centroids = model["centroids"]
    c_sq = np.einsum("kd,kd->k", centroids, centroids)
    ids_parts, len_parts, label_parts = [], [], []
    inertia = 0.0
    for tf in bar(list_tars(features_dir, split), desc=f"{STAGE} {split}", unit="tar"):
        lengths = np.diff(tf.offsets)
        if features.kind == "mfcc":
            x = tf.mfcc()
            labels = np.empty(tf.n_frames, dtype=np.int16)
            step = cfg.block_frames
            for s in range(0, tf.n_frames, step):
                lab, ine = assign(norm.apply(np.asarray(x[s:s + step])), centroids, step, c_sq)
                labels[s:s + step] = lab
                inertia += ine
        else:
            feats = layer_features_for(tf, audio_dir, split, extract)
            x = np.concatenate([feats[int(c)] for c in tf.chunk_ids])
            labels, ine = assign(norm.apply(x), centroids, cfg.block_frames, c_sq)
            inertia += ine
        ids_parts.append(tf.chunk_ids)
        len_parts.append(lengths)
        label_parts.append(labels)
    if not ids_parts:
        return np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int16), 0.0
    ids = np.concatenate(ids_parts)
    lengths = np.concatenate(len_parts)
    labels = np.concatenate(label_parts)
    order = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    sorted_labels = np.concatenate([labels[starts[i]:starts[i] + lengths[i]] for i in order]) \
        if len(order) else labels
    offsets = np.concatenate([[0], np.cumsum(lengths[order])]).astype(np.int64)
    return ids[order].astype(np.int64), offsets, sorted_labels.astype(np.int16), inertia


def run(cfg: AssignLabelsConfig, features: FeaturesConfig, *, model: Path, features_dir: Path,
        audio_dir: Path, chunks: Path, out_dir: Path) -> dict[str, Any]:
    clear_stale_tmp(out_dir)  # temporaries of a killed run
    m = load_model(model)
    if str(m["kind"]) != features.kind or (features.kind == "hubert" and int(m["layer"]) != features.layer):
        raise ValueError(f"{model} was fitted on {m['kind']} features (layer {int(m['layer'])}); "
                         f"features.kind is {features.kind}: re-run fit-kmeans")
    k = int(m["n_clusters"])
    extract = None
    if features.kind == "hubert":
        from ups.hubert_features import LayerFeatures

        extract = LayerFeatures(features.hubert_model, features.layer, features.device,
                                features.batch_chunks)
    table = pq.read_table(chunks, columns=["chunk_id", "language"])
    lang_of = dict(zip(table.column("chunk_id").to_pylist(), table.column("language").to_pylist(),
                       strict=True))
    languages = sorted(set(lang_of.values()))
    lang_index = {lang: i for i, lang in enumerate(languages)}
    per_split: dict[str, Any] = {}
    joint = np.zeros((k, len(languages)), dtype=np.int64)
    for split in SPLITS:
        ids, offsets, labels, inertia = label_split(cfg, features, m, features_dir, audio_dir, split,
                                                    extract)
        out = out_dir / split
        out.mkdir(parents=True, exist_ok=True)
        _write_npy(out / "chunk_ids.npy", ids)
        _write_npy(out / "offsets.npy", offsets)
        _write_npy(out / "labels.npy", labels)
        counts = usage(labels, k)
        frame_lang = np.repeat(np.array([lang_index[lang_of[int(c)]] for c in ids], dtype=np.int64),
                               np.diff(offsets))
        joint += np.bincount(labels.astype(np.int64) * len(languages) + frame_lang,
                             minlength=k * len(languages)).reshape(k, len(languages))
        h = entropy_bits(counts)
        per_split[split] = {
            "n_chunks": int(len(ids)), "n_frames": int(len(labels)),
            "inertia_per_frame": inertia / max(1, len(labels)),
            "usage_entropy_bits": h, "usage_entropy_normalised": h / np.log2(k),
            "empty_clusters": int((counts == 0).sum()), "usage_histogram": counts.tolist(),
        }
        log.info("%s: %s: %d chunks, %d frames, usage entropy %.2f bits", STAGE, split, len(ids),
                 len(labels), h)
    mi = mutual_information_from_counts(joint)
    lang_h = entropy_bits(joint.sum(axis=0))
    fields = {"features_kind": features.kind, "n_clusters": k, "splits": per_split,
              "languages": languages, "mi_cluster_language_bits": mi,
              "language_entropy_bits": lang_h,
              "mi_over_language_entropy": mi / lang_h if lang_h > 0 else 0.0}
    write_report(out_dir / "report.json", stage=STAGE, config=cfg, **fields)
    log.info("%s: I(cluster; language) = %.3f bits of H(language) = %.3f bits", STAGE, mi, lang_h)
    return fields
