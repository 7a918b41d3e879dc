"""The trainer's logged figures: means over scored frames, epoch summaries, dvclive from the history."""

from __future__ import annotations

import json

import pytest
import torch

from ups import distributed
from ups.train_log import (
    Live,
    StepSums,
    epoch_summary,
    last_metrics,
    record,
    throughput,
    train_figures,
    valid_figures,
)

SUMS = {"ce_masked": 6.0, "n_masked": 3.0, "correct_masked": 2.0, "ce_unmasked": 1.0, "n_unmasked": 1.0,
        "correct_unmasked": 1.0, "penalty": 0.5, "micro_batches": 2.0, "audio_samples": 32000.0}


def test_figures_are_means_over_scored_frames():
    f = train_figures(SUMS)
    assert f == {"train/loss": 2.0, "train/loss_unmasked": 1.0, "train/acc_masked": pytest.approx(2 / 3),
                 "train/acc_unmasked": 1.0, "train/masked_fraction": 0.75, "train/feature_penalty": 0.25}
    v = valid_figures(SUMS)
    assert v == {"valid/loss": 2.0, "valid/acc_masked": pytest.approx(2 / 3), "valid/loss_unmasked": 1.0,
                 "valid/acc_unmasked": 1.0}
    empty = dict.fromkeys(SUMS, 0.0)  # no scored frame: zeros, never a division by zero
    assert set(train_figures(empty).values()) == {0.0} and set(valid_figures(empty).values()) == {0.0}


def test_throughput_is_audio_seconds_per_second_and_the_flops_they_make():
    t = throughput(32000, 4.0, 2e12)  # 2 s of 16 kHz audio in 4 s
    assert t == {"train/audio_s_per_s": 0.5, "train/tflops": 1.0}


def test_an_epoch_is_complete_only_when_all_its_steps_ran():
    e = epoch_summary(3, 5, 6, 20.0, 16000.0 * 3600, 26)
    assert e == {"epoch": 3, "steps": 5, "complete": False, "chunks_used": 20, "chunks_available": 26,
                 "audio_seconds": 3600.0, "hours": 1.0}
    assert epoch_summary(0, 6, 6, 24.0, 0.0, 26)["complete"]


def test_last_metrics_join_the_last_training_log_and_the_last_validation():
    history = [{"step": 2, "train/loss": 3.0}, {"step": 4, "train/loss": 2.0}, {"step": 4, "valid/loss": 2.5},
               {"step": 6, "train/loss": 1.0}]
    assert last_metrics(history) == {"step": 4, "train/loss": 1.0, "valid/loss": 2.5}
    assert last_metrics([]) == {}


def test_sums_reduce_once_and_start_again():
    d = distributed.init("cpu")
    sums = StepSums(torch.device("cpu"))
    sums.add(torch.tensor([1.0, 2.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64), torch.tensor(0.5), 16000)
    sums.add(torch.tensor([1.0, 2.0, 1.0, 0.0, 0.0, 0.0], dtype=torch.float64), torch.tensor(0.25), 8000)
    v, seconds = sums.reduce(d)
    assert v["ce_masked"] == 2.0 and v["n_masked"] == 4.0 and v["penalty"] == 0.75
    assert v["micro_batches"] == 2 and v["audio_samples"] == 24000 and seconds >= 0
    again, _ = sums.reduce(d)
    assert set(again.values()) == {0.0}


def test_the_history_keeps_records_and_dvclive_gets_the_timings_too(tmp_path):
    live_dir = tmp_path / "live"
    live_dir.mkdir()
    (live_dir / "stale.txt").write_text("from an earlier run")
    live = Live(live_dir, enabled=True)
    assert not (live_dir / "stale.txt").exists()  # a fresh directory, refilled from the history
    history: list[dict] = []
    record(history, live, {"step": 2, "train/loss": 1.5, "epoch": 0}, {"train/audio_s_per_s": 9.0})
    assert history == [{"step": 2, "train/loss": 1.5, "epoch": 0}]
    summary = json.loads((live_dir / "metrics.json").read_text())
    assert summary["step"] == 2 and summary["train"] == {"loss": 1.5, "audio_s_per_s": 9.0}
    live.end()
    off = Live(tmp_path / "other", enabled=False)  # not rank 0: nothing written
    record(history, off, {"step": 3, "train/loss": 1.0})
    off.end()
    assert len(history) == 2 and not (tmp_path / "other").exists()
