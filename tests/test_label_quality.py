"""Label quality as evaluate reports it: usage, I(cluster; language), the label set's summary."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ups.label_quality import label_quality, label_set_summary


def _labels(root, split, per_chunk: list[list[int]], first_id: int) -> None:
    d = root / split
    d.mkdir(parents=True)
    np.save(d / "chunk_ids.npy", np.arange(first_id, first_id + len(per_chunk), dtype=np.int64))
    np.save(d / "offsets.npy", np.concatenate([[0], np.cumsum([len(c) for c in per_chunk])]).astype(np.int64))
    np.save(d / "labels.npy", np.concatenate(per_chunk).astype(np.int16))


def test_clusters_that_follow_the_language_carry_all_of_it(tmp_path):
    # English frames fall in clusters 0 and 1, German ones in cluster 2, cluster 3 is never used;
    # chunk 2 has no language row: its frames count for usage, not for the language figures
    _labels(tmp_path, "train", [[0, 1, 0, 1], [2, 2, 2, 2], [0, 0, 1, 1]], 0)
    _labels(tmp_path, "valid", [[2, 2], [0, 1]], 3)
    (tmp_path / "meta.json").write_text(json.dumps({"n_clusters": 4}))
    rows = {"train": [{"chunk_id": 0, "language": "en"}, {"chunk_id": 1, "language": "de"}],
            "valid": [{"chunk_id": 3, "language": "de"}, {"chunk_id": 4, "language": "en"}]}
    q = label_quality(tmp_path, rows)
    assert q["n_clusters"] == 4 and q["n_languages"] == 2
    assert q["train"] == {"usage_entropy_bits": pytest.approx(np.log2(3)),
                          "usage_entropy_normalised": pytest.approx(np.log2(3) / 2), "empty_clusters": 1,
                          "mi_cluster_language_bits": pytest.approx(1.0)}
    assert q["valid"]["usage_entropy_bits"] == pytest.approx(1.5)
    assert q["mi_cluster_language_bits"] == pytest.approx(1.0) and q["language_entropy_bits"] == 1.0
    assert q["mi_over_language_entropy"] == pytest.approx(1.0)
    assert q["majority_cluster_share"] == 0.5  # cluster 2: 6 of the 12 frames with a language


def test_without_labels_there_is_nothing_to_judge(tmp_path):
    assert label_quality(tmp_path, {"train": []}) == {"reason": "no labels"}


def test_the_label_set_sits_beside_the_figures_that_judge_it(tmp_path):
    report = {"label_set": {"kind": "mfcc", "layer": 0, "n_clusters": 4}}
    (tmp_path / "report.json").write_text(json.dumps(report))
    masked = {"init_fitted_head": {"acc": 0.3, "loss": 1.2}, "chance_loss": 1.38}
    labels = {"majority_cluster_share": 0.5, "mi_cluster_language_bits": 0.2, "mi_over_language_entropy": 0.1}
    s = label_set_summary(tmp_path, masked, labels)
    assert s == {"kind": "mfcc", "layer": 0, "n_clusters": 4, "init_masked_acc": 0.3, "init_masked_loss": 1.2,
                 "chance_loss": 1.38, "majority_cluster_share": 0.5, "mi_cluster_language_bits": 0.2,
                 "mi_over_language_entropy": 0.1}
    assert label_set_summary(tmp_path / "none", {}, {})["kind"] is None  # no report: nothing known
