"""The LR schedule's warmup against the run's real length, as `make plan` and the trainer see it."""

from __future__ import annotations

import pytest

from ups.config import ConfigError
from ups.plan import format_plan
from ups.schedule import (
    check_same_schedule,
    check_warmup,
    lr_at,
    plan_rows,
    planned_steps,
    warmup_steps_for,
)

# 8 GPUs x 100 h: about 32,400 training chunks after the valid and eval splits
RUN = {"gpus": 8, "batch_size": "auto", "grad_accum": "auto", "epochs": 4, "max_steps": None}


def test_a_fixed_500_step_warmup_never_ends_at_8_gpus_x_100_h():
    rows = {r["gpu"]: r for r in plan_rows(32400, warmup=500, **RUN)}
    h200 = rows["H200-141GB"]
    assert h200["global_batch"] == 1024 and h200["total_steps"] == 124 and not h200["ok"]
    peak = max(lr_at(s, peak=1.0, warmup_steps=500, total_steps=124) for s in range(124))
    assert peak == pytest.approx(124 / 500)  # the LR never reaches its peak
    with pytest.raises(ConfigError, match="train.warmup_steps gives 500 warmup steps but the run has 124"):
        check_warmup(500, 124)


def test_the_default_fraction_warms_up_and_decays_on_every_gpu_row():
    for r in plan_rows(32400, warmup=0.08, **RUN):
        assert r["ok"] and 0 < r["warmup_steps"] < r["total_steps"] // 10 + 1, r
        assert r["hours_per_step"] == pytest.approx(r["global_batch"] * 10 / 3600)
    assert warmup_steps_for(0.08, 124) == 10
    lrs = [lr_at(s, peak=1.0, warmup_steps=10, total_steps=124) for s in range(124)]
    assert max(lrs) == 1.0 and lrs[-1] < 0.01


def test_the_plan_prints_the_schedule_and_flags_a_warmup_too_long():
    rows = plan_rows(32400, warmup=500, **RUN)
    text = format_plan({
        "select_hours": 100, "selected_hours": 100.0, "n_chunks": 36000, "target_reached": True,
        "decoded_hours": 120.0, "fetch": "tars", "source": "local", "disk": {}, "time": {},
        "download": {"bytes": 183e9, "n_tars": 139, "tars": {"bytes": 183e9, "how": "exact (tar sizes)"}},
        "schedule": {"train_chunks": 32400, "processes": 8, "learning_rate": 5e-5, "lr_schedule": "linear",
                     "rows": rows},
    })
    h200 = next(line for line in text.splitlines() if "H200" in line)
    assert "global batch  1024 (2.84 h/step), 31 steps/epoch, 124 steps, warmup 500" in h200
    assert "refused" in h200 and "train.warmup_steps" in h200


def test_max_steps_sets_the_total_else_epochs_do():
    assert planned_steps(None, 3, 40) == 120
    assert planned_steps(50, 3, 40) == 50  # epochs repeat as needed, or stop early


def test_a_resume_with_another_schedule_is_refused_naming_the_key():
    saved = {"max_steps": None, "epochs": 3}
    check_same_schedule(saved, None, 3, "s")
    with pytest.raises(ConfigError, match=r"train.epochs is 4 but the state s was made with train.epochs=3"):
        check_same_schedule(saved, None, 4, "s")
    with pytest.raises(ConfigError, match=r"train.max_steps is 10 .* train.max_steps=None"):
        check_same_schedule(saved, 10, 3, "s")
    check_same_schedule({"max_steps": 10, "epochs": 3}, 10, 7, "s")  # epochs do not count beside max_steps
