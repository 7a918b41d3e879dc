"""The train stage on a tiny synthetic corpus: learning, resume equality, export, DDP, NaN."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train_fixtures import assert_same_training, write_corpus
from ups.config import ConfigError, TrainConfig, from_dict
from ups.stages import train
from ups.tiny_model import write_tiny_hubert
from ups.train_state import latest_state

REPO = Path(__file__).resolve().parents[2]

BASE = {
    "device": "cpu",
    "batch_size": 4,
    "grad_accum": 1,
    "num_workers": 0,
    "learning_rate": 5e-3,
    "warmup_steps": 2,
    "shuffle_buffer": 8,
    "bucket_batches": 2,
    "final_dim": 16,
    "min_sample_seconds": 0.5,
    "log_every_steps": 2,
    "valid_every_steps": 4,
    "save_every_steps": 4,
}


def _cfg(init: str, **kw) -> TrainConfig:
    return from_dict(TrainConfig, {**BASE, "init": init, **kw}, "train")


def _run(cfg: TrainConfig, corpus: dict[str, Path], out: Path, **kw) -> dict:
    return train.run(
        cfg,
        audio_dir=corpus["audio"],
        labels_dir=corpus["labels"],
        model_dir=out / "model",
        state_dir=out / "state",
        live_dir=out / "live",
        **kw,
    )


def _history(out: Path) -> list[dict]:
    import json

    return json.loads((latest_state(out / "state") / "history.json").read_text())


def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("train/audio_s_per_s", "train/tflops")} for r in history]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_train=24, n_valid=6, seconds=(1.0, 2.0))


@pytest.mark.slow
def test_loss_falls_and_outputs_land(tmp_path, corpus):
    summary = _run(_cfg("tiny", epochs=6), corpus, tmp_path)
    hist = [r for r in _history(tmp_path) if "train/loss" in r]
    first, last = hist[0]["train/loss"], hist[-1]["train/loss"]
    assert last < first - 0.3, (first, last)
    assert hist[-1]["train/acc_masked"] > hist[0]["train/acc_masked"]
    assert 0.4 < hist[-1]["train/masked_fraction"] < 0.7  # masking really happens
    assert summary["last"]["valid/loss"] < 1.55  # log(5) = 1.61 is chance
    # outputs: export, state, dvclive metrics and plots
    for name in ("config.json", "model.safetensors", "head.safetensors", "head.json", "training.json"):
        assert (tmp_path / "model" / name).is_file()
    assert (tmp_path / "live" / "metrics.json").is_file()
    assert (tmp_path / "live" / "plots" / "metrics" / "train" / "loss.tsv").is_file()
    # the export holds the final state's weights
    state = load_file(str(latest_state(tmp_path / "state") / "model.safetensors"))
    exported = load_file(str(tmp_path / "model" / "model.safetensors"))
    for k, v in exported.items():
        assert torch.equal(v, state[f"hubert.{k}"]), k


@pytest.mark.slow
def test_killed_and_resumed_run_is_bit_identical(tmp_path, corpus):
    # dropout and layerdrop on, so the restored RNG state matters; 2 workers, accumulation 2
    init = write_tiny_hubert(
        tmp_path / "init", seed=1, hidden_dropout=0.1, attention_dropout=0.1, layerdrop=0.3
    )
    cfg = _cfg(str(init), epochs=3, num_workers=2, batch_size=2, grad_accum=2, save_every_steps=4)
    _run(cfg, corpus, tmp_path / "whole")
    with pytest.raises(train.StopRequested):
        _run(cfg, corpus, tmp_path / "killed", stop_after_steps=7)  # last state: step 4
    assert latest_state(tmp_path / "killed" / "state").name == "step-000000004"
    summary = _run(cfg, corpus, tmp_path / "killed")
    assert summary["steps"] > 8
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = latest_state(tmp_path / "whole" / "state")
    sb = latest_state(tmp_path / "killed" / "state")
    assert (sa / "optimizer.safetensors").read_bytes() == (sb / "optimizer.safetensors").read_bytes()
    assert _untimed(_history(tmp_path / "whole")) == _untimed(_history(tmp_path / "killed"))


def test_state_from_other_config_is_not_resumed(tmp_path, corpus, caplog):
    cfg = _cfg("tiny", max_steps=2, save_every_steps=2, valid_every_steps=100)
    _run(cfg, corpus, tmp_path)
    _run(replace(cfg, learning_rate=1e-3, max_steps=3), corpus, tmp_path)
    assert "starting afresh" in caplog.text


def test_bad_config_names_the_parameter():
    with pytest.raises(ConfigError, match="train.mask_length"):
        from_dict(TrainConfig, {"mask_length": 0}, "train")
    with pytest.raises(ConfigError, match="train.batch_size"):
        from_dict(TrainConfig, {"batch_size": "big"}, "train")
    with pytest.raises(ConfigError, match="train.gpus"):
        from_dict(TrainConfig, {"gpus": 0}, "train")


def _launch(tmp_path: Path, corpus: dict[str, Path], name: str, env_extra: dict | None = None, **train_kw):
    params = tmp_path / f"{name}.yaml"
    params.write_text(yaml.safe_dump({"train": {**BASE, "init": str(tmp_path / "init"), **train_kw}}))
    out = tmp_path / name
    env = {**os.environ, "PYTHONPATH": str(REPO), **(env_extra or {})}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "ups.launch",
            "train",
            "--params",
            str(params),
            "--audio-dir",
            str(corpus["audio"]),
            "--labels-dir",
            str(corpus["labels"]),
            "--model-dir",
            str(out / "model"),
            "--state-dir",
            str(out / "state"),
            "--live-dir",
            str(out / "live"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out, proc


@pytest.mark.slow
def test_two_gloo_ranks_match_one_rank_at_the_same_global_batch(tmp_path, corpus):
    write_tiny_hubert(tmp_path / "init", seed=2)
    common = {"epochs": 2, "batch_size": 2, "valid_every_steps": 3}
    one, _ = _launch(tmp_path, corpus, "one", gpus=1, num_workers=2, grad_accum=2, **common)
    two, _ = _launch(tmp_path, corpus, "two", gpus=2, num_workers=1, grad_accum=1, **common)
    assert_same_training(_history(one), _history(two), one / "model", two / "model")


@pytest.mark.slow
def test_nan_on_one_rank_skips_the_step_on_all(tmp_path, corpus):
    import json

    write_tiny_hubert(tmp_path / "init", seed=2)
    out, proc = _launch(
        tmp_path, corpus, "nan", {"UPS_TEST_NAN_AT": "1:2"}, gpus=2, num_workers=0, max_steps=5, batch_size=2
    )
    report = json.loads((out / "model" / "training.json").read_text())
    assert report["skipped_steps"] == 1 and report["steps"] == 5 and report["world_size"] == 2
    assert "step 2 skipped" in proc.stderr


def test_state_trained_on_other_labels_is_not_resumed(tmp_path, caplog):
    # The demo's bug: k-means re-fitted (same chunks and offsets, clusters renumbered), DVC re-ran
    # train, the finished state was resumed as is and its head, trained on the old numbering,
    # was exported and scored on the new labels: loss 3.57, below chance (ln 25 = 3.22).
    import json

    import numpy as np

    from ups.train_data import labels_digest

    corpus = write_corpus(tmp_path / "corpus", n_train=12, n_valid=4, seconds=(1.0, 1.5))
    cfg = _cfg("tiny", max_steps=2, save_every_steps=2, valid_every_steps=100)
    _run(cfg, corpus, tmp_path)
    for split in ("train", "valid"):
        p = corpus["labels"] / split / "labels.npy"
        np.save(p, ((np.load(p) + 1) % 5).astype(np.int16))  # same files, renumbered clusters
    _run(cfg, corpus, tmp_path)
    assert "starting afresh" in caplog.text
    head = json.loads((tmp_path / "model" / "head.json").read_text())
    assert head["labels_sha256"] == labels_digest(corpus["labels"])
    # one run's history: one final validation, none left over from the first labels
    assert [r["step"] for r in _history(tmp_path) if "valid/loss" in r] == [2]
