"""The train stage on a tiny synthetic corpus: learning, resume equality, export, DDP, NaN."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from tests.train_fixtures import (
    BASE,
    assert_same_training,
    run_train,
    train_config,
    train_history,
    write_corpus,
)
from ups.config import ConfigError, TrainConfig, from_dict
from ups.stages import train
from ups.tiny_model import write_tiny_hubert
from ups.train_state import latest_state

REPO = Path(__file__).resolve().parents[2]

def _untimed(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in ("train/audio_s_per_s", "train/tflops")} for r in history]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_train=24, n_valid=6, seconds=(1.0, 2.0))


@pytest.mark.slow
def test_loss_falls_and_outputs_land(tmp_path, corpus):
    summary = run_train(train_config("tiny", epochs=6), corpus, tmp_path)
    hist = [r for r in train_history(tmp_path) if "train/loss" in r]
    # means of three logs each (one log is 2 steps of batch 4: noisy)
    first = sum(r["train/loss"] for r in hist[:3]) / 3
    last = sum(r["train/loss"] for r in hist[-3:]) / 3
    assert last < first - 0.3, (first, last)
    assert hist[-1]["train/acc_masked"] > hist[0]["train/acc_masked"]
    assert 0.4 < hist[-1]["train/masked_fraction"] < 0.7  # masking really happens
    valid = [r["valid/loss"] for r in train_history(tmp_path) if "valid/loss" in r]
    assert summary["last"]["valid/loss"] == valid[-1] < valid[0] - 0.3  # 6 valid chunks: noisy
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
    cfg = train_config(str(init), epochs=3, num_workers=2, batch_size=2, grad_accum=2, save_every_steps=4)
    run_train(cfg, corpus, tmp_path / "whole")
    with pytest.raises(train.StopRequested):
        run_train(cfg, corpus, tmp_path / "killed", stop_after_steps=7)  # last state: step 4
    assert latest_state(tmp_path / "killed" / "state").name == "step-000000004"
    summary = run_train(cfg, corpus, tmp_path / "killed")
    assert summary["steps"] > 8
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa = latest_state(tmp_path / "whole" / "state")
    sb = latest_state(tmp_path / "killed" / "state")
    assert (sa / "optimizer.safetensors").read_bytes() == (sb / "optimizer.safetensors").read_bytes()
    assert _untimed(train_history(tmp_path / "whole")) == _untimed(train_history(tmp_path / "killed"))


def test_state_from_other_config_is_not_resumed(tmp_path, corpus, caplog):
    cfg = train_config("tiny", max_steps=2, warmup_steps=1, save_every_steps=2, valid_every_steps=100)
    run_train(cfg, corpus, tmp_path)
    run_train(replace(cfg, learning_rate=1e-3, max_steps=3), corpus, tmp_path)
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
    assert_same_training(train_history(one), train_history(two), one / "model", two / "model")
    assert (two / "state" / "catalog" / "train.npz").is_file()  # walked by rank 0, loaded by rank 1


@pytest.mark.slow
def test_nan_on_one_rank_skips_the_step_on_all(tmp_path, corpus):
    import json

    write_tiny_hubert(tmp_path / "init", seed=2)
    out, proc = _launch(
        tmp_path, corpus, "nan", {"UPS_TEST_NAN_AT": "1:2"}, gpus=2, num_workers=0, max_steps=5, batch_size=2
    )
    report = json.loads((out / "model" / "training.json").read_text())
    assert report["skipped_steps"] == 1 and report["steps"] == 5 and report["world_size"] == 2
    assert "update 2 skipped" in proc.stderr


def test_state_trained_on_other_labels_is_not_resumed(tmp_path, caplog):
    # The demo's bug: k-means re-fitted (same chunks and offsets, clusters renumbered), DVC re-ran
    # train, the finished state was resumed as is and its head, trained on the old numbering,
    # was exported and scored on the new labels: loss 3.57, below chance (ln 25 = 3.22).
    import json

    import numpy as np

    from ups.train_data import labels_digest

    corpus = write_corpus(tmp_path / "corpus", n_train=12, n_valid=4, seconds=(1.0, 1.5))
    cfg = train_config("tiny", max_steps=2, warmup_steps=1, save_every_steps=2, valid_every_steps=100)
    run_train(cfg, corpus, tmp_path)
    for split in ("train", "valid"):
        p = corpus["labels"] / split / "labels.npy"
        np.save(p, ((np.load(p) + 1) % 5).astype(np.int16))  # same files, renumbered clusters
    run_train(cfg, corpus, tmp_path)
    assert "starting afresh" in caplog.text
    head = json.loads((tmp_path / "model" / "head.json").read_text())
    assert head["labels_sha256"] == labels_digest(corpus["labels"])
    # one run's history: one final validation, none left over from the first labels
    assert [r["step"] for r in train_history(tmp_path) if "valid/loss" in r] == [2]


# --- at real scale: every stream, every chunk, resumes that keep their work ---------------------


def test_weight_decay_reaches_weight_matrices_only(tmp_path):
    # The positional conv's weight-norm gain and the label embeddings are not weight matrices.
    from ups.hubert_model import ModelSetup, load_hubert
    from ups.pretraining import PretrainingHead, PretrainModel

    hubert, _ = load_hubert(ModelSetup(str(write_tiny_hubert(tmp_path / "i")), 0.8, 10, 2, None, "sdpa"))
    model = PretrainModel(hubert, PretrainingHead(32, 5, final_dim=16))
    groups = train.param_groups(model, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    decay = {names[id(p)] for p in groups[0]["params"]}
    no_decay = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["weight_decay"] == 0.01 and groups[1]["weight_decay"] == 0.0
    assert "head.label_embs" in no_decay
    gains = {n for n in no_decay if "pos_conv_embed" in n and n.endswith(("original0", "weight_g"))}
    assert len(gains) == 1, sorted(no_decay)
    assert "hubert.masked_spec_embed" in no_decay
    assert all(n.endswith(("weight", "original1", "weight_v")) for n in decay), sorted(decay)
    assert "head.final_proj.weight" in decay and "hubert.feature_projection.projection.weight" in decay
    assert decay | no_decay == set(names.values())


@pytest.mark.slow
def test_an_epoch_is_every_chunk_across_2_ranks_x_2_workers(tmp_path):
    # Shards of 1, 3, 50 and 7 chunks dealt whole to 4 streams: the epoch ended at the first
    # stream's END, and total_steps assumed the whole split, so the LR decay never finished.
    import json

    from ups.schedule import lr_at

    corpus = write_corpus(tmp_path / "c", train_shard_sizes=[1, 3, 50, 7], n_valid=4, seconds=(0.6, 1.0))
    write_tiny_hubert(tmp_path / "init", seed=2)
    out, _ = _launch(
        tmp_path, corpus, "uneven", gpus=2, num_workers=2, batch_size=2, grad_accum=1, epochs=2,
        warmup_steps=2, lr_schedule="linear", valid_every_steps=1000, log_every_steps=1,
    )
    report = json.loads((out / "model" / "training.json").read_text())
    epochs = report["epochs"]
    assert [e["epoch"] for e in epochs] == [0, 1]
    for e in epochs:
        assert e["chunks_available"] == 61
        assert 61 - 4 * 2 < e["chunks_used"] <= 61  # at most one partial batch per stream
        assert e["steps"] * 2 * 2 == e["chunks_used"]  # 2 ranks x batch 2 per step
        assert e["hours"] == pytest.approx(e["audio_seconds"] / 3600)
    assert report["steps"] == report["total_steps"] == sum(e["steps"] for e in epochs)
    lrs = [r["lr"] for r in train_history(out) if "lr" in r]
    assert len(lrs) == report["steps"]
    end = lr_at(report["steps"] - 1, peak=5e-3, warmup_steps=2, total_steps=report["total_steps"])
    assert lrs[-1] == pytest.approx(end)


def test_a_changed_config_after_a_finished_run_resumes_its_own_state(tmp_path, corpus, caplog):
    # After a finished run (states 4 and 6 kept), the new config's state 2 was pruned as "not
    # among the two highest steps", latest.json named a missing directory, and every rerun
    # started afresh.
    import json
    import logging

    caplog.set_level(logging.INFO)
    cfg = train_config("tiny", max_steps=6, save_every_steps=2, valid_every_steps=100)
    run_train(cfg, corpus, tmp_path)
    new = replace(cfg, learning_rate=1e-3)
    with pytest.raises(train.StopRequested):
        run_train(new, corpus, tmp_path, stop_after_steps=3)
    latest = json.loads((tmp_path / "state" / "latest.json").read_text())
    assert latest["step"] == 2 and (tmp_path / "state" / latest["dir"] / "done.json").is_file()
    assert [p.name for p in (tmp_path / "state").glob("step-*")] == ["step-000000002"]  # old run's removed
    assert "step-000000006" in caplog.text  # ... with a line naming them
    caplog.clear()
    run_train(new, corpus, tmp_path)
    assert "resumed from" in caplog.text and "step 2," in caplog.text


def test_max_steps_runs_exactly_that_many_steps_past_epochs(tmp_path, corpus):
    from ups.schedule import lr_at

    # 24 chunks / batch 4 = 6 steps per epoch; 1 epoch requested, 10 steps
    cfg = train_config("tiny", epochs=1, max_steps=10, log_every_steps=1, valid_every_steps=100)
    summary = run_train(cfg, corpus, tmp_path)
    assert summary["steps"] == 10 and summary["epoch"] >= 1
    lrs = [r["lr"] for r in train_history(tmp_path) if "lr" in r]
    assert lrs[-1] == pytest.approx(lr_at(9, peak=5e-3, warmup_steps=2, total_steps=10))


@pytest.mark.parametrize("key,value", [("epochs", 5), ("max_steps", 12)])
def test_a_schedule_change_on_resume_is_refused_naming_the_key(tmp_path, corpus, key, value):
    cfg = train_config("tiny", epochs=2, save_every_steps=2, valid_every_steps=100)
    with pytest.raises(train.StopRequested):
        run_train(cfg, corpus, tmp_path, stop_after_steps=3)
    with pytest.raises(ConfigError, match=f"train.{key}"):
        run_train(replace(cfg, **{key: value}), corpus, tmp_path)
    run_train(replace(cfg, **{key: value}, resume=False), corpus, tmp_path / "fresh")  # the way out works


def test_crop_pad_is_refused_for_a_group_norm_cnn(tmp_path, corpus):
    # Group norm normalises over time: padding changes the real frames' features.
    with pytest.raises(ConfigError, match="train.crop"):
        run_train(train_config("tiny", crop="pad", max_steps=2, warmup_steps=1), corpus, tmp_path)
    assert not (tmp_path / "state").exists()
    init = write_tiny_hubert(tmp_path / "ln", feat_extract_norm="layer", do_stable_layer_norm=True)
    ln_cfg = train_config(str(init), crop="pad", max_steps=2, warmup_steps=1)
    assert run_train(ln_cfg, corpus, tmp_path / "ln-run")["steps"] == 2


def test_a_gpu_expected_but_absent_is_an_error(tmp_path, corpus, monkeypatch, caplog):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="train.device is cuda") as err:
        run_train(train_config("tiny", device="cuda", max_steps=1), corpus, tmp_path)
    assert "CUDA" in str(err.value)  # the reason torch gives
    with pytest.raises(RuntimeError, match="train.gpus"):
        run_train(train_config("tiny", device="auto", gpus=2, max_steps=1), corpus, tmp_path)
    assert not (tmp_path / "state").exists()
    run_train(train_config("tiny", device="auto", max_steps=1), corpus, tmp_path)
    assert any(r.levelname == "WARNING" and "CPU" in r.getMessage() for r in caplog.records)


def test_the_step_makes_at_most_one_host_sync(tmp_path, corpus, monkeypatch):
    # .item(), float(), bool() of a device tensor wait for the GPU: per micro-batch they stall
    # the pipeline. Count them in the trainer's own code between log steps (on this CPU every
    # tensor counts; ups.distributed.host_sum reads back host numbers only and is not counted).
    import sys as _sys

    counted = ("ups/stages/train.py", "ups/train_log.py", "ups/pretraining.py", "ups/hubert_model.py")
    calls = {"n": 0}
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def wrapper(self, *a, _orig=orig, **kw):
            if _sys._getframe(1).f_code.co_filename.endswith(counted):
                calls["n"] += 1
            return _orig(self, *a, **kw)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    quiet = {"log_every_steps": 1000, "valid_every_steps": 1000, "save_every_steps": 1000, "grad_accum": 2,
             "batch_size": 2, "epochs": 10}
    counts = []
    for steps in (3, 9):
        calls["n"] = 0
        run_train(train_config("tiny", max_steps=steps, **quiet), corpus, tmp_path / str(steps))
        counts.append(calls["n"])
    per_step = (counts[1] - counts[0]) / 6
    assert per_step <= 1.0, counts


def test_the_last_step_is_validated_once(tmp_path, corpus):
    # finish() compared the final validation with the last history record, which is always the
    # epoch record by then: a run ending on a validation step validated twice and logged it twice.
    cfg = train_config("tiny", max_steps=6, valid_every_steps=3, save_every_steps=100)
    run_train(cfg, corpus, tmp_path)
    valid_steps = [h["step"] for h in train_history(tmp_path) if "valid/loss" in h]
    assert valid_steps == [3, 6]


def test_an_epoch_without_one_readable_sample_stops_the_run(tmp_path):
    # The catalogue reads tar headers only, so shards whose samples cannot be decoded pass it;
    # each epoch then made no step and the loop started the next one, for ever.
    import io
    import signal
    import tarfile

    corpus = write_corpus(tmp_path / "c", n_train=8, n_valid=2, seconds=(1.0, 1.0))
    for shard in sorted((corpus["audio"] / "train").glob("*.tar")):
        members = []
        with tarfile.open(shard) as tf:
            for m in tf:
                data = tf.extractfile(m).read() if m.isfile() else b""
                members.append((m, b"\0" * len(data) if m.name.endswith(".pcm.npy") else data))
        with tarfile.open(shard, "w") as tf:
            for m, data in members:
                tf.addfile(m, io.BytesIO(data))

    def hung(*_):
        raise TimeoutError("train did not stop")

    old = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        with pytest.raises(RuntimeError, match="no readable sample"):
            run_train(train_config("tiny", max_steps=4, num_workers=0), corpus, tmp_path / "out")
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def test_another_batch_split_resumes_at_the_states_global_batch(tmp_path, corpus, caplog):
    # `batch_size: auto` resolves to another (batch, accum) on another GPU: the state used to be
    # discarded as "another config"; now the accumulation adapts and the run goes on.
    import logging

    caplog.set_level(logging.INFO)
    cfg = train_config("tiny", batch_size=4, grad_accum=1, max_steps=6, save_every_steps=2, warmup_steps=1)
    with pytest.raises(train.StopRequested):
        run_train(cfg, corpus, tmp_path, stop_after_steps=3)
    summary = run_train(replace(cfg, batch_size=2), corpus, tmp_path)
    assert "resumed from" in caplog.text and "starting afresh" not in caplog.text
    assert summary["steps"] == 6 and summary["grad_accum"] == 2 and summary["batch_size"] == 2


# --- the schedule fits the run; skipped steps are not updates ---------------------------------


def test_warmup_as_a_fraction_fits_the_run_and_a_warmup_as_long_as_the_run_is_refused(tmp_path, corpus):
    from ups.schedule import warmup_steps_for

    # 8 GPUs x 100 h on H200: 128 steps in all; the fixed 500 never left warmup
    assert warmup_steps_for(0.08, 128) == 10 and warmup_steps_for(500, 128) == 500
    assert warmup_steps_for(0.08, 3) == 1
    with pytest.raises(ConfigError, match=r"train.warmup_steps gives 10 warmup steps but the run has 10"):
        run_train(train_config("tiny", max_steps=10, warmup_steps=10), corpus, tmp_path)
    assert not (tmp_path / "state").exists() or not list((tmp_path / "state").glob("step-*"))
    with pytest.raises(ConfigError, match="train.warmup_steps"):
        from_dict(TrainConfig, {"warmup_steps": 1.5}, "train")
    cfg = train_config("tiny", max_steps=10, warmup_steps=0.2, log_every_steps=1)
    summary = run_train(cfg, corpus, tmp_path / "f")
    lrs = [r["lr"] for r in train_history(tmp_path / "f") if "lr" in r]
    assert lrs[1] == pytest.approx(5e-3) and lrs[-1] < lrs[1]  # 2 warmup steps, then decay
    assert summary["total_steps"] == 10


def test_a_skipped_step_is_not_an_update(tmp_path, corpus, monkeypatch):
    from ups.schedule import lr_at

    monkeypatch.setenv("UPS_TEST_NAN_AT", "0:2")  # the third data step's loss is NaN
    cfg = train_config("tiny", max_steps=5, warmup_steps=2, log_every_steps=1, valid_every_steps=100)
    summary = run_train(cfg, corpus, tmp_path)
    assert summary["steps"] == 5 and summary["skipped_steps"] == 1
    opt = load_file(str(latest_state(tmp_path / "state") / "optimizer.safetensors"))
    assert {float(v) for k, v in opt.items() if k.endswith(".step")} == {5.0}  # AdamW made 5 updates
    lrs = [r["lr"] for r in train_history(tmp_path) if "lr" in r]
    assert lrs == pytest.approx([lr_at(s, peak=5e-3, warmup_steps=2, total_steps=5) for s in range(5)])
    assert sum(e["steps"] for e in summary["epochs"]) == 6  # six data steps: five updates, one skip


# --- states are never lost to a config change before the new run has one ----------------------


def test_a_changed_config_killed_before_its_first_save_leaves_the_old_states(tmp_path, corpus, caplog):
    import logging

    caplog.set_level(logging.INFO)
    cfg = train_config("tiny", max_steps=8, save_every_steps=2, valid_every_steps=100)
    with pytest.raises(train.StopRequested):
        run_train(cfg, corpus, tmp_path, stop_after_steps=5)  # states 2 and 4
    with pytest.raises(train.StopRequested):  # another config, killed before its first save
        run_train(replace(cfg, learning_rate=1e-3, save_every_steps=4), corpus, tmp_path, stop_after_steps=1)
    assert "set the earlier states" in caplog.text and (tmp_path / "state" / "aside").is_dir()
    caplog.clear()
    resumed = run_train(cfg, corpus, tmp_path)  # the first config again: its states come back
    assert "took back" in caplog.text and "resumed from" in caplog.text and "step 4," in caplog.text
    assert resumed["steps"] == 8
    fresh = run_train(cfg, corpus, tmp_path / "uninterrupted")
    a = load_file(str(tmp_path / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "uninterrupted" / "model" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a) and fresh["steps"] == 8
    # a new config that saves removes what was set aside, naming it
    caplog.clear()
    run_train(replace(cfg, learning_rate=1e-3, max_steps=2, warmup_steps=1), corpus, tmp_path)
    assert "removed the earlier states set aside" in caplog.text and "step-000000008" in caplog.text
    assert not (tmp_path / "state" / "aside").exists()


# --- one host sync per optimizer step, counted where syncs happen -----------------------------


def test_one_host_sync_per_optimizer_step_in_a_profiler_trace(tmp_path, corpus):
    from torch.profiler import ProfilerActivity, profile

    from ups import distributed
    from ups.skips import Skips
    from ups.train_log import StepSums

    cfg = train_config("tiny", batch_size=2, grad_accum=4, max_steps=4, valid_every_steps=100)
    d = distributed.init("cpu")
    r = train.setup(cfg, d, torch.device("cpu"), corpus["audio"], corpus["labels"], tmp_path / "state")
    prog = train.fresh_start(r)
    r.train_ds.set_start(0, 0, r.global_batch)
    batches = iter(r.loader)
    sums = StepSums(r.device)
    skips = Skips("train")
    train.data_step(r, prog, train.next_micro_batches(batches, 4, skips, prog), sums, False)  # warm
    micro = train.next_micro_batches(batches, 4, skips, prog)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        assert train.data_step(r, prog, micro, sums, False)
    def in_optimizer(e):  # AdamW reads its per-parameter step counters, CPU tensors on a GPU too
        while e is not None:
            if e.name.startswith("Optimizer.step"):
                return True
            e = e.cpu_parent
        return False

    names = [e.name for e in prof.events() if not in_optimizer(e)]
    syncs = {k: names.count(k) for k in ("aten::nonzero", "aten::item", "aten::_local_scalar_dense")}
    assert syncs == {"aten::nonzero": 0, "aten::item": 1, "aten::_local_scalar_dense": 1}, syncs
    assert sum(n.startswith("aten::index_put") for n in names) == 0  # no boolean index put either


# --- validation does not depend on the number of data streams ----------------------------------


def test_validation_is_the_same_for_1_2_and_4_workers(tmp_path, corpus):
    from ups import distributed

    losses = []
    d = distributed.init("cpu")
    for workers in (0, 2, 4):
        cfg = train_config("tiny", num_workers=workers, max_steps=2, warmup_steps=1)
        r = train.setup(cfg, d, torch.device("cpu"), corpus["audio"], corpus["labels"], tmp_path / "s")
        losses.append(train.validate(r))
    for other in losses[1:]:
        for k, v in losses[0].items():
            assert other[k] == pytest.approx(v, abs=1e-6), k


# --- elastic resume: killed on 2 ranks x 2 workers, resumed on 4 x 1 and 1 x 4 ----------------


def _launch_cmd(tmp_path: Path, corpus: dict[str, Path], name: str, state: Path, **train_kw) -> list[str]:
    params = tmp_path / f"{name}.yaml"
    params.write_text(yaml.safe_dump({"train": {**BASE, "init": str(tmp_path / "init"), **train_kw}}))
    out = tmp_path / name
    return [sys.executable, "-m", "ups.launch", "train", "--params", str(params),
            "--audio-dir", str(corpus["audio"]), "--labels-dir", str(corpus["labels"]),
            "--model-dir", str(out / "model"), "--state-dir", str(state), "--live-dir", str(out / "live")]


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and every descendant (torchrun starts its ranks in sessions of their own)."""
    import signal

    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    todo, tree = [pid], []
    while todo:
        p = todo.pop()
        tree.append(p)
        todo += children.get(p, [])
    for p in tree:
        with contextlib.suppress(ProcessLookupError):
            os.kill(p, signal.SIGKILL)


def _trace(trace_dir: Path) -> list[dict]:
    import json

    files = sorted(trace_dir.glob("rank*.jsonl"))
    return [json.loads(line) for p in files for line in p.read_text().splitlines()]


@pytest.mark.slow
def test_a_run_killed_on_2x2_resumes_on_4x1_and_1x4_training_each_chunk_once(tmp_path):
    import json
    import shutil
    import time

    corpus = write_corpus(tmp_path / "c", n_train=24, n_valid=4, seconds=(0.6, 1.0))
    write_tiny_hubert(tmp_path / "init", seed=2)
    shape = {"batch_size": 1, "epochs": 2, "warmup_steps": 2, "save_every_steps": 2, "valid_every_steps": 100,
             "log_every_steps": 1}
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    killed_trace = tmp_path / "trace-killed"
    killed_trace.mkdir()
    state = tmp_path / "state"
    proc = subprocess.Popen(
        _launch_cmd(tmp_path, corpus, "killed", state, gpus=2, num_workers=2, grad_accum=2, **shape),
        cwd=REPO, env={**env, "UPS_TEST_TRACE_DIR": str(killed_trace)}, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 240
    try:
        while latest_state(state) is None or json.loads((state / "latest.json").read_text())["step"] < 4:
            assert proc.poll() is None, proc.stderr.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no state at step 4"
            time.sleep(0.2)
    finally:
        _kill_tree(proc.pid)  # every process: the launcher, torchrun, both ranks, their workers
        proc.wait()
    time.sleep(1)
    saved = json.loads((latest_state(state) / "state.json").read_text())
    assert saved["global_batch"] == 4 and saved["step"] >= 4
    position = (saved["epoch"], saved["steps_in_epoch"])
    before = [t for t in _trace(killed_trace) if (t["epoch"], t["step"]) < position]
    for name, gpus, workers in (("r4w1", 4, 1), ("r1w4", 1, 4)):
        shutil.copytree(state, tmp_path / f"state-{name}")
        trace = tmp_path / f"trace-{name}"
        trace.mkdir()
        # on 4 ranks, rank 1 reads the state 3 s after rank 0: nothing may move it meanwhile
        late = {"UPS_TEST_LOAD_DELAY": "1:3"} if gpus > 1 else {}
        done = subprocess.run(
            _launch_cmd(tmp_path, corpus, name, tmp_path / f"state-{name}", gpus=gpus, num_workers=workers,
                        grad_accum=1, **shape),
            cwd=REPO, env={**env, "UPS_TEST_TRACE_DIR": str(trace), **late}, capture_output=True, text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert "resumed from" in done.stderr and "starting afresh" not in done.stderr
        assert _trace(trace), (name, sorted(p.name for p in trace.iterdir()), done.stderr[-2000:])
        report = json.loads((tmp_path / name / "model" / "training.json").read_text())
        assert report["total_steps"] == 12 and report["steps"] == 12  # 24 chunks / 4 per step x 2 epochs
        assert report["grad_accum"] == 4 // gpus  # the global batch kept
        steps: dict[tuple[int, int], list[int]] = {}
        for t in before + _trace(trace):
            steps.setdefault((t["epoch"], t["step"]), []).extend(t["ids"])
        assert sorted(steps) == [(e, s) for e in range(2) for s in range(6)], name
        for epoch in range(2):
            ids = sorted(i for (e, _), v in steps.items() if e == epoch for i in v)
            assert ids == list(range(24)), (name, epoch)  # each chunk exactly once, by id
        assert all(e["complete"] and e["chunks_used"] == 24 for e in report["epochs"]), report["epochs"]


@pytest.mark.slow
def test_a_signal_during_training_saves_at_the_next_log_step_exits_75_and_resumes_identically(
        tmp_path, corpus, monkeypatch):
    import signal

    from ups import preempt

    init = write_tiny_hubert(tmp_path / "init", seed=1, hidden_dropout=0.1, layerdrop=0.3)
    # save_every_steps 8: the periodic saves alone would leave step 0 or 8, never 6
    cfg = train_config(str(init), epochs=2, num_workers=2, batch_size=2, grad_accum=2, save_every_steps=8)
    run_train(cfg, corpus, tmp_path / "whole")
    real_step = train.train_step

    def step_then_signal(r, prog, *args, **kw):
        applied = real_step(r, prog, *args, **kw)
        if prog.step == 5:  # as Slurm would: SIGUSR1 at the time-limit margin, mid-interval
            os.kill(os.getpid(), signal.SIGUSR1)
        return applied

    monkeypatch.setattr(train, "train_step", step_then_signal)
    with pytest.raises(preempt.Preempted) as stopped:
        run_train(cfg, corpus, tmp_path / "preempted")
    assert stopped.value.code == preempt.EXIT_CODE == 75 and stopped.value.step == 6  # log_every_steps 2
    assert latest_state(tmp_path / "preempted" / "state").name == "step-000000006"
    assert not (tmp_path / "preempted" / "model").exists()
    monkeypatch.setattr(train, "train_step", real_step)
    summary = run_train(cfg, corpus, tmp_path / "preempted")  # the requeued job
    assert summary["steps"] > 8
    a = load_file(str(tmp_path / "whole" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "preempted" / "model" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert _untimed(train_history(tmp_path / "whole")) == _untimed(train_history(tmp_path / "preempted"))


def test_the_request_file_stops_a_run_too(tmp_path, corpus, monkeypatch):
    from ups import preempt

    request = tmp_path / ".preempt"
    request.touch()  # what scripts/slurm/train.sbatch writes on SIGUSR1
    monkeypatch.setenv("UPS_PREEMPT_FILE", str(request))
    with pytest.raises(preempt.Preempted) as stopped:
        cfg = train_config("tiny", max_steps=6, save_every_steps=100, valid_every_steps=100)
        run_train(cfg, corpus, tmp_path)
    assert stopped.value.step == 2 and latest_state(tmp_path / "state").name == "step-000000002"
    import signal

    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handlers end with the run
