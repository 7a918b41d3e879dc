"""The evaluate stage end to end on a tiny synthetic corpus, and `ups report`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.train_fixtures import write_corpus
from ups import html_report
from ups.config import ConfigError, EvaluateConfig, MfccParams, TrainConfig, from_dict
from ups.stages import evaluate, train

TRAIN = {"init": "tiny", "device": "cpu", "batch_size": 4, "grad_accum": 1, "num_workers": 0,
         "learning_rate": 5e-3, "warmup_steps": 2,
         "final_dim": 16, "min_sample_seconds": 0.5, "log_every_steps": 2, "valid_every_steps": 4,
         "save_every_steps": 100, "max_steps": 32}  # 8 steps left the head near chance (seed luck)
EVAL = {"device": "cpu", "batch_size": 4, "head_fit_chunks": 12, "head_fit_steps": 30,
        "head_fit_lr": 1e-2, "probe_max_iter": 500}


def _write_lid(corpus_root: Path) -> Path:
    """A LID index for the fixture's files: file 0 nospeech, then en (odd files) and de (even)."""
    import tarfile

    rows: dict[tuple[int, str], str] = {}
    for shard in sorted((corpus_root / "audio").glob("*/*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    f = int(meta["key"].removeprefix("item/file"))
                    rows[(meta["tar"], meta["key"])] = "nospeech" if f == 0 else ("en" if f % 2 else "de")
    path = corpus_root / "lid.parquet"
    keys = sorted(rows)
    pq.write_table(pa.table({"tar": pa.array([k[0] for k in keys], pa.int32()), "key": [k[1] for k in keys],
                             "raw_path": [k[1] for k in keys], "language": [rows[k] for k in keys],
                             "lid_split": ["train"] * len(keys)}), path)
    return path


def _split_files(corpus_root: Path) -> dict[str, set[str]]:
    import tarfile

    out: dict[str, set[str]] = {}
    for shard in sorted((corpus_root / "audio").glob("*/*.tar")):
        with tarfile.open(shard) as tf:
            for m in tf:
                if m.name.endswith(".json"):
                    meta = json.loads(tf.extractfile(m).read())
                    out.setdefault(meta["split"], set()).add(f"{meta['tar']:06d}/{meta['key']}")
    return out


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalrun")
    corpus = write_corpus(root / "data", n_train=24, n_valid=8, n_eval=16, chunks_per_file=2,
                          seconds=(1.0, 1.6))
    lid = _write_lid(root / "data")
    tcfg = from_dict(TrainConfig, TRAIN, "train")
    train.run(tcfg, audio_dir=corpus["audio"], labels_dir=corpus["labels"],
              model_dir=root / "models" / "hubert-cpt", state_dir=root / "data" / "train" / "state",
              live_dir=root / "dvclive")
    evaluate.run(from_dict(EvaluateConfig, EVAL, "evaluate"), tcfg, MfccParams(),
                 audio_dir=corpus["audio"], labels_dir=corpus["labels"], lid=lid,
                 model_dir=root / "models" / "hubert-cpt", live_dir=root / "dvclive",
                 out_dir=root / "reports" / "evaluate")
    return root


@pytest.mark.slow
def test_metrics_hold_init_and_continued(run_dir):
    m = json.loads((run_dir / "reports" / "evaluate" / "metrics.json").read_text())
    masked = m["masked"]
    for name in ("continued_trained_head", "init_fitted_head", "continued_fitted_head"):
        r = masked[name]
        assert 0 < r["loss"] < 10 and 0 <= r["acc"] <= 1, (name, r)
        assert 0.3 < r["masked_fraction"] < 0.8, r  # masking really happened
    assert masked["n_chunks"] == 8
    assert masked["n_clusters"] == 5
    # the trained head beats chance (log 5) on tones; the trainer's own losses are quoted
    assert masked["continued_trained_head"]["loss"] < masked["chance_loss"]
    assert masked["train_first_logged_loss"] > 0
    probe = m["probe"]
    layers = [f"layer_{k}" for k in range(3)]  # tiny model: 2 layers -> 0, 1, 2
    for model in ("init", "continued"):
        assert sorted(probe[model]["accuracy"]) == layers
        for v in probe[model]["accuracy"].values():
            assert 0 <= v <= 1
        assert probe[model]["best_layer"] in (0, 1, 2)
    assert probe["n_languages_train"] == 2 and probe["n_languages_test"] == 2
    assert probe["chance_uniform"] == 0.5
    assert 0 <= probe["mfcc"]["accuracy"] <= 1
    # held out: the 16 eval chunks (8 files, 4 per language), half the files of each language scored
    assert probe["n_train"] + probe["n_test"] == 16
    assert probe["n_files_fit"] == 4 and probe["n_files_test"] == 4 and probe["n_test"] == 8
    on_train = m["probe_training_files"]
    assert on_train["n_train"] + on_train["n_test"] == 22  # 24 train chunks minus file 0 (nospeech)
    assert on_train["continued"]["best_accuracy"] is not None
    labels = m["labels"]
    assert labels["n_clusters"] == 5 and 0 < labels["valid"]["usage_entropy_normalised"] <= 1
    assert labels["mi_cluster_language_bits"] >= 0
    # the label set's two judging figures, side by side
    ls = m["label_set"]
    assert ls["init_masked_acc"] == masked["init_fitted_head"]["acc"]
    assert ls["mi_cluster_language_bits"] == labels["mi_cluster_language_bits"]
    assert 1 / 5 <= ls["majority_cluster_share"] <= 1 and ls["chance_loss"] == masked["chance_loss"]
    rows = list(csv.DictReader(open(run_dir / "reports" / "evaluate" / "probe_layers.csv")))
    assert [r["layer"] for r in rows] == ["0", "1", "2"]
    assert all(r["init_accuracy"] and r["continued_accuracy"] for r in rows)
    detail = run_dir / "reports" / "evaluate" / "detail"
    assert (detail / "probe_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    rep = json.loads((detail / "report.json").read_text())
    assert rep["skipped"]["counts"] == {}
    assert "flatters the continued model" in rep["probe_training_files_note"]
    assert rep["skipped_probe_training_files"]["counts"] == {"not_a_language": 2}


@pytest.mark.slow
def test_probe_fits_and_scores_on_held_out_files_only(run_dir):
    # regression: the probe once used chunks of both shard splits, so most of its test files were in
    # the continued model's training data. Now every probe file is an eval file, fit and test
    # sides share no file, and no probe file is in a split any model trained on.
    files = _split_files(run_dir / "data")
    detail = run_dir / "reports" / "evaluate" / "detail"
    held = json.loads((detail / "probe.json").read_text())
    assert held["split"] == "eval"
    fit, test = set(held["files_fit"]), set(held["files_test"])
    assert fit and test and not fit & test
    assert fit | test <= files["eval"]
    assert not (fit | test) & (files["train"] | files["valid"])
    shown = json.loads((detail / "probe_training_files.json").read_text())
    assert set(shown["files_fit"]) | set(shown["files_test"]) <= files["train"]


@pytest.mark.slow
def test_report_embeds_figures_and_metrics(run_dir):
    out = html_report.write(run_dir)
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 3  # loss curve, accuracy curve, probe
    assert "masked.continued_trained_head.acc" in page
    assert "probe.init.best_accuracy" in page
    assert "selection (data/select): not run" in page  # no selection in this run


def test_bad_layers_name_the_parameter():
    with pytest.raises(ConfigError, match="evaluate.layers"):
        from_dict(EvaluateConfig, {"layers": [-1]}, "evaluate")
    with pytest.raises(ConfigError, match="evaluate.layers"):
        evaluate.resolve_layers(from_dict(EvaluateConfig, {"layers": [3]}, "evaluate"), 2)
    assert evaluate.resolve_layers(from_dict(EvaluateConfig, {"layers": "all"}, "evaluate"), 2) == [0, 1, 2]


@pytest.mark.slow
def test_trained_head_loss_is_the_trainers_model_on_the_same_masks(tmp_path):
    # Evaluate's `continued_trained_head` must be exactly the trainer's model (its last state)
    # scored on evaluate's masks. The init has mask_time_prob 0, as a model whose config turns
    # SpecAugment off: the export used to drop the trained mask embedding, and evaluate masked
    # with a fresh random one.
    import numpy as np
    import torch

    from ups.eval_chunks import iter_batches, scan_shards
    from ups.hubert_model import ModelSetup, load_hubert
    from ups.masked_scoring import labelled, masked_batch
    from ups.pretraining import PretrainingHead, PretrainModel, masked_prediction_sums
    from ups.skips import Skips
    from ups.tiny_model import write_tiny_hubert
    from ups.train_data import LabelIndex
    from ups.train_state import latest_state, load_state

    corpus = write_corpus(tmp_path / "data", n_train=12, n_valid=4, seconds=(1.0, 1.4))
    init = write_tiny_hubert(tmp_path / "init", seed=0, mask_time_prob=0.0)
    tcfg = from_dict(TrainConfig, {**TRAIN, "init": str(init), "max_steps": 4}, "train")
    train.run(tcfg, audio_dir=corpus["audio"], labels_dir=corpus["labels"], model_dir=tmp_path / "model",
              state_dir=tmp_path / "state", live_dir=tmp_path / "live")
    ecfg = from_dict(EvaluateConfig, {**EVAL, "head_fit_steps": 0, "max_probe_chunks": 4}, "evaluate")
    metrics = evaluate.run(ecfg, tcfg, MfccParams(), audio_dir=corpus["audio"], labels_dir=corpus["labels"],
                           lid=_write_lid(tmp_path / "data"), model_dir=tmp_path / "model", live_dir=None,
                           out_dir=tmp_path / "eval")
    got = metrics["masked"]["continued_trained_head"]

    hubert, _ = load_hubert(ModelSetup(str(init), tcfg.mask_prob, tcfg.mask_length, tcfg.min_masks, None,
                                       tcfg.attn_implementation))
    model = PretrainModel(hubert, PretrainingHead(32, metrics["masked"]["n_clusters"], kind=tcfg.head,
                                                  final_dim=tcfg.final_dim,
                                                  temperature=tcfg.logit_temperature))
    model.load_state_dict(load_state(latest_state(tmp_path / "state"))["model"])
    model.eval()
    ce = n = 0.0
    skips = Skips("test")
    rows = labelled(scan_shards(corpus["audio"] / "valid", skips), LabelIndex(corpus["labels"] / "valid"),
                    skips)
    for batch in iter_batches(rows, 1, skips):
        x, mask, labels = masked_batch(batch, tcfg, ecfg.mask_seed, torch.device("cpu"))
        with torch.no_grad():
            logits, _ = model(x, None, mask)
        s = masked_prediction_sums(logits, labels, mask, torch.ones_like(mask))
        ce, n = ce + float(s.ce_masked), n + float(s.n_masked)
    assert metrics["masked"]["n_chunks"] == len(rows) == 4
    np.testing.assert_allclose(got["loss"], ce / n, rtol=1e-5)
