"""What the trainer logs: the step sums, the records made of them, dvclive fed from the history.

A record is one dict of figures at one optimizer step. The history (saved in every state) is the
list of records, and dvclive is fed from it, so a resumed run shows one continuous curve.
Timings go to dvclive and the log only, never into a record: the history is a tracked output and
stays the same bytes when a run is repeated.

The sums are kept where they arise, so a step reads nothing back from the device: the loss terms
on the device, the counts on the host; one collective at a log step reduces both over ranks.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import torch

from ups import distributed
from ups.frames import SAMPLE_RATE
from ups.pretraining import SUM_NAMES

# Summed per step on the device (the loss terms) and on the host (counts), reduced at log time.
DEVICE_SUMS = (*SUM_NAMES, "penalty")
HOST_SUMS = ("micro_batches", "audio_samples")


class StepSums:
    """The logged sums since the last log step: loss terms on the device, counts on the host."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.grad_norm: torch.Tensor | None = None
        self._reset()
        self.restart_clock()

    def _reset(self) -> None:
        self.loss = torch.zeros(len(DEVICE_SUMS), dtype=torch.float64, device=self.device)
        self.micro_batches = 0
        self.audio_samples = 0

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def add(self, loss_sums: torch.Tensor, penalty: torch.Tensor, n_samples: int) -> None:
        self.loss += torch.cat([loss_sums, penalty.double().reshape(1)])
        self.micro_batches += 1
        self.audio_samples += n_samples

    def reduce(self, d: distributed.Dist) -> tuple[dict[str, float], float]:
        """Every rank's sums (one collective, read back once) and the seconds since the clock."""
        host = torch.tensor([self.micro_batches, self.audio_samples], dtype=torch.float64, device=self.device)
        tot = distributed.all_sum(d, torch.cat([self.loss, host])).tolist()
        seconds = time.perf_counter() - self.t0
        self._reset()
        self.restart_clock()
        return dict(zip((*DEVICE_SUMS, *HOST_SUMS), tot, strict=True)), seconds


def _ratio(num: float, den: float) -> float:
    return num / max(den, 1.0)


def train_figures(v: dict[str, float]) -> dict[str, float]:
    """The training figures of summed loss terms (`StepSums.reduce`): means over scored frames."""
    return {
        "train/loss": _ratio(v["ce_masked"], v["n_masked"]),
        "train/loss_unmasked": _ratio(v["ce_unmasked"], v["n_unmasked"]),
        "train/acc_masked": _ratio(v["correct_masked"], v["n_masked"]),
        "train/acc_unmasked": _ratio(v["correct_unmasked"], v["n_unmasked"]),
        "train/masked_fraction": _ratio(v["n_masked"], v["n_masked"] + v["n_unmasked"]),
        "train/feature_penalty": _ratio(v["penalty"], v["micro_batches"]),
    }


def throughput(audio_samples: float, seconds: float, flops_per_audio_second: float) -> dict[str, float]:
    """Audio seconds trained per second and the model TFLOP/s they make (dvclive and log only)."""
    rate = audio_samples / SAMPLE_RATE / max(seconds, 1e-9)
    return {"train/audio_s_per_s": rate, "train/tflops": rate * flops_per_audio_second / 1e12}


def valid_figures(t: dict[str, float]) -> dict[str, float]:
    """The validation figures of summed loss terms (`SUM_NAMES`, over every rank)."""
    return {
        "valid/loss": _ratio(t["ce_masked"], t["n_masked"]),
        "valid/acc_masked": _ratio(t["correct_masked"], t["n_masked"]),
        "valid/loss_unmasked": _ratio(t["ce_unmasked"], t["n_unmasked"]),
        "valid/acc_unmasked": _ratio(t["correct_unmasked"], t["n_unmasked"]),
    }


def epoch_summary(epoch: int, steps: int, steps_per_epoch: int, chunks: float, samples: float,
                  chunks_available: int) -> dict[str, Any]:
    """What one epoch trained on (every rank's counts); `complete`: all its steps ran, rather
    than the schedule's end or a dry stream."""
    return {
        "epoch": epoch,
        "steps": steps,
        "complete": steps >= steps_per_epoch,
        "chunks_used": int(chunks),
        "chunks_available": chunks_available,
        "audio_seconds": samples / SAMPLE_RATE,
        "hours": samples / SAMPLE_RATE / 3600,
    }


def last_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last training log and the last validation, one dict (the validation's step wins)."""
    last: dict[str, Any] = {}
    for key in ("train/loss", "valid/loss"):
        last.update(next((h for h in reversed(history) if key in h), {}))
    return last


class Live:
    """dvclive on rank 0 (a fresh directory each run, refilled from the history); a no-op elsewhere."""

    def __init__(self, live_dir: Path, enabled: bool) -> None:
        self.live = None
        if enabled:
            from dvclive import Live as DvcLive

            if Path(live_dir).exists():
                shutil.rmtree(live_dir)
            self.live = DvcLive(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=False)

    def log(self, record: dict[str, Any]) -> None:
        if self.live is None:
            return
        self.live.step = int(record["step"])
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                self.live.log_metric(k, float(v))

    def flush(self) -> None:
        if self.live is not None:
            self.live.make_summary()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def record(history: list[dict[str, Any]], live: Live, rec: dict[str, Any],
           timing: dict[str, float] | None = None) -> None:
    """Append `rec` to the history and show it (with `timing`, which the history never holds)."""
    history.append(rec)
    live.log({**rec, **(timing or {})})
    live.flush()
