"""assign-labels: every chunk labelled per CNN frame by the one final model, resumable per tar,
the same bytes for array tasks and ranks, centroids of another kind, waveform or precision refused."""

import dataclasses

import numpy as np
import pytest

from tests.stages.conftest import check_labels, fit_and_label
from ups.atomic import read_json
from ups.config import (
    AssignLabelsConfig,
    FeaturesConfig,
    KmeansConfig,
    load_section,
)
from ups.shards import iter_shard
from ups.stages import assign_labels, fit_kmeans


def test_mfcc_kmeans_labels_every_chunk_per_cnn_frame(prepared, corpus):
    out, params = prepared
    report = fit_and_label(out, params, corpus, "mfcc")
    check_labels(out, "mfcc", 8)
    with np.load(out / "mfcc" / "kmeans" / "model.npz", allow_pickle=False) as z:
        assert z["centroids"].shape == (8, 39) and z["mean"].shape == (39,)
        assert str(z["kind"]) == "mfcc"
    fit_report = read_json(out / "mfcc" / "kmeans" / "report.json")
    assert fit_report["n_sample_frames"] == round(0.01 * 3600 * 50)  # 1800 of 3043 frames
    assert sum(fit_report["usage_histogram"]) == 1800 and fit_report["inertia_per_frame"] > 0
    assert report["splits"]["train"]["n_chunks"] == 5 and report["splits"]["valid"]["n_chunks"] == 2
    assert 0 < report["splits"]["train"]["usage_entropy_bits"] <= 3.0
    assert 0 <= report["mi_cluster_language_bits"] <= report["language_entropy_bits"]
    assert report["languages"] == ["de", "en", "sw", "yo"]
    assert report["nearest_centroid"] == "numpy on the CPU"


def test_model_of_another_feature_kind_is_refused(prepared, corpus, tmp_path):
    out, params = prepared
    fit_and_label(out, params, corpus, "m2")
    feats = load_section(FeaturesConfig, "features", params)
    import dataclasses
    with pytest.raises(ValueError, match="re-run fit-kmeans"):
        assign_labels.run(AssignLabelsConfig(), dataclasses.replace(feats, kind="hubert"),
                          model=out / "m2" / "kmeans" / "model.npz", features_dir=out / "features",
                          audio_dir=out / "audio", chunks=corpus / "chunks.parquet", out_dir=tmp_path)


def test_hubert_layer_features_label_every_chunk(prepared, corpus, tiny_hubert):
    out, params = prepared
    report = fit_and_label(out, params, corpus, "hub", kind="hubert", layer=2,
                           hubert_model=str(tiny_hubert), device="cpu")
    check_labels(out, "hub", 8)
    with np.load(out / "hub" / "kmeans" / "model.npz", allow_pickle=False) as z:
        assert z["centroids"].shape == (8, 32) and str(z["kind"]) == "hubert" and int(z["layer"]) == 2
    assert report["features_kind"] == "hubert"
    # which search ran is in the reports (on a GPU: "torch on cuda...", tests/test_cuda.py)
    assert report["nearest_centroid"] == "numpy on the CPU"
    assert read_json(out / "hub" / "kmeans" / "report.json")["fit"].endswith("numpy on the CPU")


def test_tiny_init_labels_every_chunk_with_the_trainers_tiny_model(prepared, corpus):
    """features.hubert_model: init with train.init: tiny -> the trainer's seeded tiny model."""
    from ups.config import TrainConfig

    out, params = prepared
    feats = dataclasses.replace(load_section(FeaturesConfig, "features", params), kind="hubert",
                                layer=1, hubert_model="init", device="cpu")
    km = load_section(KmeansConfig, "kmeans", params)
    train = TrainConfig(init="tiny", seed=3)
    fit = fit_kmeans.run(km, feats, features_dir=out / "features", audio_dir=out / "audio",
                         out_dir=out / "tinyinit" / "kmeans", train=train)
    assert fit["feature_model"]["hubert_model"] == "tiny" and fit["dim"] == 32
    report = assign_labels.run(AssignLabelsConfig(), feats, model=out / "tinyinit/kmeans/model.npz",
                               features_dir=out / "features", audio_dir=out / "audio",
                               chunks=corpus / "chunks.parquet", out_dir=out / "tinyinit" / "labels",
                               train=train)
    check_labels(out, "tinyinit", 8)
    assert report["label_set"] == {"kind": "hubert", "layer": 1, "hubert_model": "tiny",
                                   "revision": "", "n_clusters": 8}
    # the same features, labelled again by hand: TorchAssigner's labels are the numpy ones
    from ups.centroids import load_model
    from ups.hubert_features import FeatureModel, LayerFeatures
    from ups.kmeans import Normaliser, assign

    m = load_model(out / "tinyinit/kmeans/model.npz")
    lf = LayerFeatures(FeatureModel("tiny", tiny_seed=3), 1, "cpu")
    ids = np.load(out / "tinyinit/labels/train/chunk_ids.npy")
    offsets = np.load(out / "tinyinit/labels/train/offsets.npy")
    labels = np.load(out / "tinyinit/labels/train/labels.npy")
    pcm = {meta["chunk_id"]: p for shard in (out / "audio" / "train").glob("*.tar")
           for _, p, meta in iter_shard(shard)}
    for i, cid in enumerate(ids):
        x = Normaliser(m["mean"], m["std"]).apply(lf([pcm[int(cid)]])[0])
        assert (assign(x, m["centroids"])[0] == labels[offsets[i]:offsets[i + 1]]).mean() > 0.99
    # another initial model is another label set: the centroids are refused
    with pytest.raises(ValueError, match="re-run fit-kmeans"):
        assign_labels.run(AssignLabelsConfig(), feats, model=out / "tinyinit/kmeans/model.npz",
                          features_dir=out / "features", audio_dir=out / "audio",
                          chunks=corpus / "chunks.parquet", out_dir=out / "tinyinit" / "other",
                          train=TrainConfig(init="org/model"))


@pytest.mark.identity
@pytest.mark.parametrize("fail_after", ["1", "3"])
def test_killed_assign_labels_resumes_to_identical_bytes(prepared, corpus, tmp_path, fail_after):
    from tests.stages.conftest import tree_bytes, ups

    out, params = prepared
    fit_and_label(out, params, corpus, "resume-ref")
    args = ["assign-labels", "--params", str(params), "--model", str(out / "resume-ref/kmeans/model.npz"),
            "--features-dir", str(out / "features"), "--audio-dir", str(out / "audio"),
            "--chunks", str(corpus / "chunks.parquet"), "--out-dir", str(tmp_path / "labels")]
    killed = ups(*args, env={"UPS_ASSIGN_FAIL_AFTER_TARS": fail_after})
    assert killed.returncode == 86, killed.stderr[-2000:]
    assert not (tmp_path / "labels" / "report.json").exists()
    assert len(list((tmp_path / "labels" / "_done").glob("*.done.json"))) == int(fail_after)
    resumed = ups(*args)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "reused" in resumed.stderr
    assert tree_bytes(tmp_path / "labels") == tree_bytes(out / "resume-ref" / "labels")


def test_assign_labels_does_not_trust_a_marker_of_another_model(prepared, corpus, tmp_path):
    import shutil

    out, params = prepared
    fit_and_label(out, params, corpus, "trust-ref")
    shutil.copytree(out / "trust-ref" / "labels", tmp_path / "labels")
    part = tmp_path / "labels" / "_parts" / "train" / "000001.npz"
    with np.load(part) as z:
        tampered = {k: z[k] for k in z.files}
    tampered["labels"] = np.zeros_like(tampered["labels"])
    with open(part, "wb") as fh:
        np.savez(fh, **tampered)
    # same model: the marker is trusted (a valid marker means the part is complete)
    model = out / "trust-ref" / "kmeans" / "model.npz"
    with np.load(model) as z:
        m = {k: z[k] for k in z.files}
    m["centroids"] = m["centroids"] + np.float32(1e-3)
    other = tmp_path / "other.npz"
    with open(other, "wb") as fh:
        np.savez(fh, **m)
    assign_labels.run(load_section(AssignLabelsConfig, "assign_labels", params),
                      load_section(FeaturesConfig, "features", params), model=other,
                      features_dir=out / "features", audio_dir=out / "audio",
                      chunks=corpus / "chunks.parquet", out_dir=tmp_path / "labels")
    with np.load(tmp_path / "labels" / "_parts" / "train" / "000001.npz") as z:
        assert z["labels"].any()


@pytest.mark.identity
@pytest.mark.parametrize("tasks", [(2, 0, 1), (0,)])
def test_slurm_array_tasks_then_one_final_run_give_the_same_labels(prepared, corpus, tmp_path, monkeypatch,
                                                                  caplog, tasks):
    from tests.stages.conftest import slurm_array_task, tree_bytes

    out, params = prepared
    fit_and_label(out, params, corpus, "array-ref")
    ref = out / "array-ref" / "labels"

    def run() -> dict:
        return assign_labels.run(load_section(AssignLabelsConfig, "assign_labels", params),
                                 load_section(FeaturesConfig, "features", params),
                                 model=out / "array-ref" / "kmeans" / "model.npz",
                                 features_dir=out / "features", audio_dir=out / "audio",
                                 chunks=corpus / "chunks.parquet", out_dir=tmp_path / "labels")

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    for task in tasks:  # in any order; a one-task array labels everything itself
        slurm_array_task(monkeypatch, task, count=len(tasks))
        assert run() == {}
    done = sorted(p.name for p in (tmp_path / "labels" / "_done").iterdir())
    assert done == sorted(p.name for p in (ref / "_done").iterdir()) and len(done) == 5
    assert not (tmp_path / "labels" / "report.json").exists()
    assert not (tmp_path / "labels" / "train").exists()  # the join is the final step's
    slurm_array_task(monkeypatch, None)
    with caplog.at_level("INFO"):
        report = run()
    assert "train: reused 3 of 3" in caplog.text and "valid: reused 2 of 2" in caplog.text
    assert report["splits"]["train"]["n_chunks"] > 0
    assert tree_bytes(tmp_path / "labels") == tree_bytes(ref)


@pytest.mark.identity
@pytest.mark.slow
def test_torchrun_two_gloo_ranks_give_the_same_labels(prepared, corpus, tmp_path):
    import os
    import subprocess
    import sys

    from tests.stages.conftest import REPO, tree_bytes

    out, params = prepared
    fit_and_label(out, params, corpus, "ddp-ref")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           "29573", "-m", "ups", "assign-labels", "--params", str(params),
           "--model", str(out / "ddp-ref/kmeans/model.npz"), "--features-dir", str(out / "features"),
           "--audio-dir", str(out / "audio"), "--chunks", str(corpus / "chunks.parquet"),
           "--out-dir", str(tmp_path / "labels")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    # rank 0 labels units 0, 2 and 4 of the 5 (logs are rank 0's); the join reuses every part
    assert "rank 0/2 labelled 3 of its 3 tar(s)" in res.stderr
    assert "train: reused 3 of 3" in res.stderr and "valid: reused 2 of 2" in res.stderr
    assert tree_bytes(tmp_path / "labels") == tree_bytes(out / "ddp-ref" / "labels")


def test_normalize_audio_is_recorded_and_centroids_of_the_other_waveform_are_refused(prepared, corpus):
    from ups.config import TrainConfig

    out, params = prepared
    feats = dataclasses.replace(load_section(FeaturesConfig, "features", params), kind="hubert",
                                layer=1, hubert_model="init", device="cpu")
    km = load_section(KmeansConfig, "kmeans", params)
    train = TrainConfig(init="tiny", normalize_audio=True)
    fit = fit_kmeans.run(km, feats, features_dir=out / "features", audio_dir=out / "audio",
                         out_dir=out / "normwave" / "kmeans", train=train)
    assert fit["feature_model"]["normalize_audio"] is True
    with np.load(out / "normwave/kmeans/model.npz", allow_pickle=False) as z:
        assert bool(z["normalize_audio"]) is True
    with pytest.raises(ValueError, match="train.normalize_audio: true; it is now false"):
        assign_labels.run(AssignLabelsConfig(), feats, model=out / "normwave/kmeans/model.npz",
                          features_dir=out / "features", audio_dir=out / "audio",
                          chunks=corpus / "chunks.parquet", out_dir=out / "normwave" / "other",
                          train=TrainConfig(init="tiny"))
    assign_labels.run(AssignLabelsConfig(), feats, model=out / "normwave/kmeans/model.npz",
                      features_dir=out / "features", audio_dir=out / "audio",
                      chunks=corpus / "chunks.parquet", out_dir=out / "normwave" / "labels", train=train)
    check_labels(out, "normwave", 8)


def test_centroids_of_another_precision_are_refused_unless_allowed(prepared, corpus):
    from ups.config import TrainConfig

    out, params = prepared
    feats = dataclasses.replace(load_section(FeaturesConfig, "features", params), kind="hubert",
                                layer=1, hubert_model="init", device="cpu", precision="auto")
    km = load_section(KmeansConfig, "kmeans", params)
    train = TrainConfig(init="tiny")
    fit = fit_kmeans.run(km, feats, features_dir=out / "features", audio_dir=out / "audio",
                         out_dir=out / "prec" / "kmeans", train=train)
    assert fit["feature_model"]["precision"] == "fp32"  # auto, resolved on the CPU
    with np.load(out / "prec/kmeans/model.npz", allow_pickle=False) as z:
        assert str(z["precision"]) == "fp32"
    bf16 = dataclasses.replace(feats, precision="bf16")
    kwargs = dict(model=out / "prec/kmeans/model.npz", features_dir=out / "features",
                  audio_dir=out / "audio", chunks=corpus / "chunks.parquet", train=train)
    with pytest.raises(ValueError, match=r"computed in fp32; features.precision resolves to bf16"):
        assign_labels.run(AssignLabelsConfig(), bf16, out_dir=out / "prec" / "refused", **kwargs)
    assert not (out / "prec" / "refused" / "train").exists()
    assign_labels.run(AssignLabelsConfig(allow_precision_mismatch=True), bf16,
                      out_dir=out / "prec" / "bf16", **kwargs)
    labels = np.load(out / "prec/bf16/train/labels.npy")
    assert labels.dtype == np.int16 and labels.max() < 8
