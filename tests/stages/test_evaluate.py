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
         "learning_rate": 5e-3, "warmup_steps": 2, "shuffle_buffer": 8, "bucket_batches": 2,
         "final_dim": 16, "min_sample_seconds": 0.5, "log_every_steps": 2, "valid_every_steps": 4,
         "save_every_steps": 100, "max_steps": 8}
EVAL = {"device": "cpu", "batch_size": 4, "head_fit_chunks": 12, "head_fit_steps": 30,
        "head_fit_lr": 1e-2, "probe_max_iter": 500}


def _write_lid(corpus_root: Path) -> Path:
    """A LID index for the fixture's chunks: two languages, every third file in the test split."""
    tars, keys, langs, splits = [], [], [], []
    for split in ("train", "valid"):
        for shard in sorted((corpus_root / "audio" / split).glob("*.tar")):
            import tarfile

            with tarfile.open(shard) as tf:
                for m in tf:
                    if m.name.endswith(".json"):
                        meta = json.loads(tf.extractfile(m).read())
                        c = meta["chunk_id"]
                        tars.append(meta["tar"])
                        keys.append(meta["key"])
                        langs.append("nospeech" if c == 0 else ("en" if c % 2 else "de"))
                        splits.append("test" if c % 3 == 0 else "train")
    path = corpus_root / "lid.parquet"
    pq.write_table(pa.table({"tar": pa.array(tars, pa.int32()), "key": keys, "raw_path": keys,
                             "language": langs, "lid_split": splits}), path)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("evalrun")
    corpus = write_corpus(root / "data", n_train=24, n_valid=8, seconds=(1.0, 1.6))
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
    assert probe["n_languages_train"] == 2  # nospeech dropped
    assert probe["chance_uniform"] == 0.5
    assert 0 <= probe["mfcc"]["accuracy"] <= 1
    assert probe["n_train"] + probe["n_test"] == 31  # 32 chunks minus chunk 0 (nospeech)
    labels = m["labels"]
    assert labels["n_clusters"] == 5 and 0 < labels["valid"]["usage_entropy_normalised"] <= 1
    assert labels["mi_cluster_language_bits"] >= 0
    rows = list(csv.DictReader(open(run_dir / "reports" / "evaluate" / "probe_layers.csv")))
    assert [r["layer"] for r in rows] == ["0", "1", "2"]
    assert all(r["init_accuracy"] and r["continued_accuracy"] for r in rows)
    detail = run_dir / "reports" / "evaluate" / "detail"
    assert (detail / "probe_accuracy.png").read_bytes()[:4] == b"\x89PNG"
    rep = json.loads((detail / "report.json").read_text())
    assert rep["skipped"]["counts"] == {"not_a_language": 1}


@pytest.mark.slow
def test_report_embeds_figures_and_metrics(run_dir):
    out = html_report.write(run_dir)
    page = out.read_text()
    assert page.count("data:image/png;base64,") >= 3  # loss curve, accuracy curve, probe
    assert "masked.continued_trained_head.acc" in page
    assert "probe.init.best_accuracy" in page
    assert "selection (data/select): not run" in page  # no selection in this run


def test_report_on_an_empty_run_says_not_run(tmp_path):
    page = html_report.build(tmp_path)
    for what in ("selection", "k-means", "training", "evaluation"):
        assert f"{what}" in page
    assert page.count(": not run") == 4
    assert "<img" not in page


def test_bad_layers_name_the_parameter():
    with pytest.raises(ConfigError, match="evaluate.layers"):
        from_dict(EvaluateConfig, {"layers": [-1]}, "evaluate")
    with pytest.raises(ConfigError, match="evaluate.layers"):
        evaluate.resolve_layers(from_dict(EvaluateConfig, {"layers": [3]}, "evaluate"), 2)
    assert evaluate.resolve_layers(from_dict(EvaluateConfig, {"layers": "all"}, "evaluate"), 2) == [0, 1, 2]
