"""How good the labels are, as evaluate reports them: cluster usage, what the clusters say about
the language, and the label set beside the figures that judge the choice.

Per frame, over the labelled training and validation chunks: usage entropy (normalised by
log2 k), empty clusters, I(cluster; language) from the chunks' own language, and the share of
the commonest cluster (the accuracy of always answering it). `label_set_summary` puts what the
labels are (assign-labels' report) beside the initial model's masked accuracy on them and that
mutual information.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ups.atomic import read_json
from ups.kmeans import joint_counts, language_figures, mutual_information_from_counts, usage_figures
from ups.train_data import LabelIndex, count_clusters


def label_quality(labels_dir: Path, rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Usage entropy, empty clusters and I(cluster; language) per frame, per split and overall;
    `rows`: the chunks of every shard split (their `language`)."""
    lang_of = {r["chunk_id"]: r["language"] for s in rows.values() for r in s}
    languages = sorted({v for v in lang_of.values() if v})
    if not (labels_dir / "train" / "labels.npy").is_file():
        return {"reason": "no labels"}
    k = count_clusters(labels_dir)
    li = {lang: i for i, lang in enumerate(languages)}
    n_groups = max(1, len(languages))
    out: dict[str, Any] = {"n_clusters": k, "n_languages": len(languages)}
    joint_all = np.zeros((k, n_groups), dtype=np.int64)
    for split in ("train", "valid"):
        if not (labels_dir / split / "labels.npy").is_file():
            continue
        idx = LabelIndex(labels_dir / split)
        labels = np.asarray(idx.labels, dtype=np.int64)
        per_chunk = np.array([li.get(lang_of.get(int(c), ""), -1) for c in np.asarray(idx.chunk_ids)],
                             dtype=np.int64)
        joint = joint_counts(labels, np.repeat(per_chunk, np.diff(np.asarray(idx.offsets))), k, n_groups)
        joint_all += joint
        out[split] = {**usage_figures(np.bincount(labels, minlength=k), k),
                      "mi_cluster_language_bits": mutual_information_from_counts(joint)}
    per_cluster = joint_all.sum(axis=1)
    out.update(language_figures(joint_all),
               majority_cluster_share=float(per_cluster.max() / max(1, per_cluster.sum())))
    return out


def label_set_summary(labels_dir: Path, masked: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """What the labels are (assign-labels' report) beside the two figures that judge the choice:
    how well the initial model's frozen encoder already predicts them under masking (high: a
    gentle continuation; near chance: training must first move toward new targets) and how much
    they say about the language, I(cluster; language)."""
    report = labels_dir / "report.json"
    rep: dict[str, Any] = read_json(report) if report.is_file() else {}
    out: dict[str, Any] = dict(rep.get("label_set") or {"kind": rep.get("features_kind"),
                                                         "n_clusters": rep.get("n_clusters")})
    init = masked.get("init_fitted_head") or {}
    out.update(init_masked_acc=init.get("acc"), init_masked_loss=init.get("loss"),
               chance_loss=masked.get("chance_loss"),
               majority_cluster_share=labels.get("majority_cluster_share"),
               mi_cluster_language_bits=labels.get("mi_cluster_language_bits"),
               mi_over_language_entropy=labels.get("mi_over_language_entropy"))
    return out
