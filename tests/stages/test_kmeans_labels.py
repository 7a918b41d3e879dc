import dataclasses

import numpy as np
import pytest

from tests.stages.conftest import write_params
from ups.atomic import read_json
from ups.config import (
    AssignLabelsConfig,
    DatasetConfig,
    FeaturesConfig,
    KmeansConfig,
    PrepareAudioConfig,
    load_section,
)
from ups.frames import n_cnn_frames
from ups.shards import iter_shard
from ups.stages import assign_labels, fit_kmeans, prepare_audio


@pytest.fixture(scope="module")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("km")
    params = write_params(out / "params.yaml", corpus / "sample")
    prepare_audio.run(load_section(PrepareAudioConfig, "prepare_audio", params),
                      load_section(FeaturesConfig, "features", params).mfcc,
                      load_section(DatasetConfig, "dataset", params),
                      chunks=corpus / "chunks.parquet", audio_dir=out / "audio",
                      features_dir=out / "features", report=out / "audio" / "report.json")
    return out, params


def fit_and_label(out, params, corpus, tag, **features_overrides):
    feats = load_section(FeaturesConfig, "features", params)
    if features_overrides:
        import dataclasses
        feats = dataclasses.replace(feats, **features_overrides)
    km = load_section(KmeansConfig, "kmeans", params)
    fit_kmeans.run(km, feats, features_dir=out / "features", audio_dir=out / "audio",
                   out_dir=out / tag / "kmeans")
    report = assign_labels.run(load_section(AssignLabelsConfig, "assign_labels", params), feats,
                               model=out / tag / "kmeans" / "model.npz", features_dir=out / "features",
                               audio_dir=out / "audio", chunks=corpus / "chunks.parquet",
                               out_dir=out / tag / "labels")
    return report


def n_samples_by_chunk(out):
    return {meta["chunk_id"]: meta["n_samples"]
            for shard in (out / "audio").glob("*/*.tar") for _, _, meta in iter_shard(shard)}


def check_labels(out, tag, k):
    lengths = n_samples_by_chunk(out)
    seen = []
    for split in ("train", "valid"):
        d = out / tag / "labels" / split
        ids, offsets, labels = (np.load(d / f"{n}.npy") for n in ("chunk_ids", "offsets", "labels"))
        assert ids.dtype == np.int64 and offsets.dtype == np.int64 and labels.dtype == np.int16
        assert list(ids) == sorted(ids) and offsets[-1] == len(labels)
        for i, cid in enumerate(ids):
            assert offsets[i + 1] - offsets[i] == n_cnn_frames(lengths[int(cid)])
        assert labels.min() >= 0 and labels.max() < k
        seen.extend(ids.tolist())
    assert sorted(seen) == sorted(lengths)  # every chunk, train and valid, labelled once


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


def test_default_fit_and_assign_cluster_the_raw_features(prepared, corpus):
    """fairseq's learn_kmeans.py / dump_km_label.py cluster the features as they are: the
    centroids live in the raw MFCC space and each label is the nearest raw centroid."""
    out, params = prepared
    fit_and_label(out, params, corpus, "raw")
    with np.load(out / "raw" / "kmeans" / "model.npz", allow_pickle=False) as z:
        centroids, mean, std = z["centroids"], z["mean"], z["std"]
    np.testing.assert_array_equal(mean, np.zeros(39, np.float32))
    np.testing.assert_array_equal(std, np.ones(39, np.float32))
    from ups.feature_store import list_tars
    from ups.kmeans import assign

    tars = list_tars(out / "features", "train")
    raw = np.concatenate([np.asarray(t.mfcc()) for t in tars])
    # the centroids are means of raw frames: inside the raw data's range, per dimension
    assert np.all(centroids >= raw.min(axis=0) - 1e-3) and np.all(centroids <= raw.max(axis=0) + 1e-3)
    assert abs(float(raw[:, 0].mean())) > 1.0  # c0 is far from 0: z-scored centroids would not fit it
    assert np.allclose(centroids[:, 0].mean(), raw[:, 0].mean(), rtol=0.5)
    want = np.concatenate([assign(np.asarray(t.mfcc()), centroids)[0] for t in tars])
    ids = np.load(out / "raw/labels/train/chunk_ids.npy")
    labels = np.load(out / "raw/labels/train/labels.npy")
    by_tar = np.concatenate([t.chunk_ids for t in tars])
    starts = np.concatenate([[0], np.cumsum(np.concatenate([np.diff(t.offsets) for t in tars]))])
    pos = {int(c): i for i, c in enumerate(by_tar)}
    got = np.concatenate([want[starts[pos[int(c)]]:starts[pos[int(c)] + 1]] for c in ids])
    np.testing.assert_array_equal(labels, got)


def test_fit_is_deterministic(prepared, corpus):
    out, params = prepared
    fit_and_label(out, params, corpus, "a")
    fit_and_label(out, params, corpus, "b")
    for rel in ("kmeans/model.npz", "labels/train/labels.npy", "labels/valid/labels.npy"):
        assert (out / "a" / rel).read_bytes() == (out / "b" / rel).read_bytes()


def test_model_of_another_feature_kind_is_refused(prepared, corpus, tmp_path):
    out, params = prepared
    fit_and_label(out, params, corpus, "m2")
    feats = load_section(FeaturesConfig, "features", params)
    import dataclasses
    with pytest.raises(ValueError, match="re-run fit-kmeans"):
        assign_labels.run(AssignLabelsConfig(), dataclasses.replace(feats, kind="hubert"),
                          model=out / "m2" / "kmeans" / "model.npz", features_dir=out / "features",
                          audio_dir=out / "audio", chunks=corpus / "chunks.parquet", out_dir=tmp_path)


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    import torch
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    cfg = HubertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                       conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=2)
    path = tmp_path_factory.mktemp("hubert")
    HubertModel(cfg).save_pretrained(path)
    return path


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


def test_hubert_layer_out_of_range_fails_naming_the_parameter(tiny_hubert):
    from ups.hubert_features import FeatureModel, LayerFeatures

    with pytest.raises(ValueError, match="features.layer"):
        LayerFeatures(FeatureModel(str(tiny_hubert)), 3, "cpu")


@pytest.mark.parametrize("layer", [1, 2])
def test_layer_features_are_transformers_hidden_states_of_that_layer(tiny_hubert, layer):
    """The truncated forward (layers above `layer` dropped, output read by a hook) gives exactly
    hidden_states[layer] of the whole model, on the trainer's input scaling (int16 / 32768)."""
    import torch
    from transformers import HubertModel

    from ups.hubert_features import FeatureModel, LayerFeatures

    rng = np.random.default_rng(0)
    pcms = [rng.integers(-8000, 8000, n).astype(np.int16) for n in (16000, 16000, 9000, 16000)]
    lf = LayerFeatures(FeatureModel(str(tiny_hubert)), layer, "cpu", batch_chunks=2)
    assert len(lf.model.encoder.layers) == layer
    got = lf(pcms)
    full = HubertModel.from_pretrained(tiny_hubert).eval()
    for pcm, g in zip(pcms, got, strict=True):
        x = torch.from_numpy(pcm.astype(np.float32)[None] / 32768.0)
        with torch.inference_mode():
            want = full(x, output_hidden_states=True).hidden_states[layer][0].numpy()
        assert g.shape == (n_cnn_frames(len(pcm)), 32)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
    # the GPU's bf16 autocast path, run on the CPU: same frames, bf16 rounding only
    bf = LayerFeatures(FeatureModel(str(tiny_hubert)), layer, "cpu", batch_chunks=2, precision="bf16")
    for a, b in zip(got, bf(pcms), strict=True):
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.98


def test_hubert_model_init_follows_the_trainers_initial_model_and_revision(monkeypatch, tmp_path):
    import transformers

    from ups.config import TrainConfig
    from ups.hubert_features import FeatureModel, feature_model, load_feature_model

    feats = FeaturesConfig()
    assert (feats.kind, feats.layer, feats.hubert_model) == ("hubert", 9, "init")
    train = TrainConfig(init="org/model", init_revision="abc123", seed=5)
    assert feature_model(feats, train) == FeatureModel("org/model", "abc123", 5)
    import dataclasses
    other = dataclasses.replace(feats, hubert_model="org/other", revision="def456")
    assert feature_model(other, train) == FeatureModel("org/other", "def456", 0)
    calls = []
    monkeypatch.setattr(transformers.HubertModel, "from_pretrained",
                        classmethod(lambda cls, name, **kw: calls.append((str(name), kw)) or
                                    transformers.HubertModel(transformers.HubertConfig(
                                        hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=8, conv_dim=(4,) * 7,
                                        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2))))
    load_feature_model(FeatureModel("org/model", "abc123"))
    load_feature_model(FeatureModel(str(tmp_path), "abc123"))  # a local directory: no revision
    assert calls == [("org/model", {"revision": "abc123"}), (str(tmp_path), {})]


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


def test_layer_features_stream_a_few_chunks_at_a_time(prepared):
    """assign-labels never holds a tar's features: the extractor sees at most `read_chunks` PCMs."""
    from ups.feature_store import iter_layer_features, list_tars

    out, _ = prepared

    class Recorder:
        calls: list[int] = []

        def batches(self, pcms):
            self.calls.append(len(pcms))
            for i, p in enumerate(pcms):
                yield [i], np.full((1, n_cnn_frames(len(p)), 4), float(len(p)), np.float32)

    (tf,) = [t for t in list_tars(out / "features", "train") if len(t.chunk_ids) >= 2][:1]
    rec = Recorder()
    got = list(iter_layer_features(tf, out / "audio", "train", rec, read_chunks=1))
    assert rec.calls == [1] * len(tf.chunk_ids)
    assert sorted(cid for ids, _ in got for cid in ids) == sorted(tf.chunk_ids.tolist())
    with pytest.raises(ValueError, match="lack chunk"):
        list(iter_layer_features(tf, out / "audio", "train", rec, wanted={10**6}))


@pytest.mark.parametrize("tasks", [(2, 0, 1), (0,)])
def test_slurm_array_tasks_then_one_final_run_give_the_same_labels(prepared, corpus, tmp_path, monkeypatch,
                                                                  caplog, tasks):
    from tests.stages.conftest import tree_bytes
    from tests.stages.test_prepare_audio import slurm_array_task

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


def test_with_normalize_audio_the_feature_model_sees_the_trainers_normalised_waveform():
    from ups.hubert_features import FeatureModel, LayerFeatures

    pcm = (np.random.default_rng(0).standard_normal(16000) * 3000 + 700).astype(np.int16)
    seen = {}
    for normalize in (False, True):
        lf = LayerFeatures(FeatureModel("tiny"), 1, "cpu", normalize_audio=normalize)
        lf.model.register_forward_pre_hook(lambda _m, args, n=normalize: seen.__setitem__(n, args[0].numpy()))
        lf([pcm])
    x = pcm.astype(np.float32) / 32768.0
    np.testing.assert_array_equal(seen[False][0], x)
    got = seen[True][0]
    assert abs(float(got.mean())) < 1e-5 and float(got.std()) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(got, (x - x.mean()) / np.sqrt(x.var() + 1e-7), atol=1e-5)  # train_data's


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
