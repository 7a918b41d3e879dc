"""The training schedule, pure functions: how many optimizer updates a run makes, its warmup,
and the learning rate at each update (linear warmup, then decay).

Steps per epoch = training chunks // global batch; `max_steps` set means exactly that many
applied optimizer updates (epochs repeat as needed), else `epochs` x steps per epoch. A skipped
(non-finite) step is not an update: the LR does not move. `warmup_steps` is a count or a
fraction of the total; a warmup as long as the run is refused. The schedule is fixed when a run
starts: resuming with another `epochs` / `max_steps` is refused with a message naming the key.
"""

from __future__ import annotations

import math


def planned_steps(max_steps: int | None, epochs: int, steps_per_epoch: int) -> int:
    """`max_steps` when set (epochs repeat as needed), else `epochs` x steps per epoch."""
    return max_steps or epochs * steps_per_epoch


def check_same_schedule(saved: dict[str, object], max_steps: int | None, epochs: int, where: str) -> None:
    """A resume keeps the LR schedule its state was made with: `train.max_steps` and
    `train.epochs` as `saved` (the state's config) has them, else a ConfigError naming the key.
    `epochs` only counts while `max_steps` is unset. `where` names the state in the message."""
    before = saved.get("max_steps"), saved.get("epochs")
    if max_steps == before[0] and (max_steps is not None or epochs == before[1]):
        return
    from ups.config import ConfigError

    key = "max_steps" if max_steps != before[0] else "epochs"
    was, now = (before[0], max_steps) if key == "max_steps" else (before[1], epochs)
    raise ConfigError(
        f"train.{key} is {now} but the state {where} was made with "
        f"train.{key}={was}: resuming would change the LR schedule mid-run. Set train.{key} back to "
        f"{was} to resume it, or train.resume: false to start afresh (its states are then removed)"
    )


def warmup_steps_for(warmup: int | float, total_steps: int) -> int:
    """`train.warmup_steps` as steps: an int is a count, a float in (0, 1) a fraction of the
    total (so one setting fits a 128-step run on 8 GPUs and a 20 k-step run on one)."""
    if isinstance(warmup, float):
        return max(1, round(warmup * total_steps))
    return int(warmup)


def check_warmup(warmup: int, total_steps: int) -> None:
    """A warmup as long as the run never reaches the peak LR nor decays: refuse it."""
    if total_steps > 1 and warmup >= total_steps:
        from ups.config import ConfigError

        raise ConfigError(
            f"train.warmup_steps gives {warmup} warmup steps but the run has {total_steps} steps in all: "
            f"the LR would never reach train.learning_rate nor decay; give fewer steps or a fraction "
            f"of the total (e.g. 0.08)"
        )


def lr_at(step: int, *, peak: float, warmup_steps: int, total_steps: int, kind: str = "linear") -> float:
    """LR for optimizer step `step` (0-based): warmup from peak/warmup to peak, then linear or
    cosine decay to 0 at `total_steps` (constant: stay at peak)."""
    if warmup_steps > 0 and step < warmup_steps:
        return peak * (step + 1) / warmup_steps
    if kind == "constant":
        return peak
    span = max(1, total_steps - warmup_steps)
    frac = min(1.0, max(0.0, (step - warmup_steps) / span))
    if kind == "linear":
        return peak * (1.0 - frac)
    if kind == "cosine":
        return peak * 0.5 * (1.0 + math.cos(math.pi * frac))
    raise ValueError(f"unknown schedule {kind!r}")


def plan_rows(
    train_chunks: int, *, gpus: int, batch_size: int | str, grad_accum: int | str, epochs: int,
    max_steps: int | None, warmup: int | float, chunk_seconds: float = 10.0,
) -> list[dict[str, object]]:
    """What the schedule will be on each row of the GPU batch table (the GPU is not known
    before the run): global batch, audio hours per step, steps per epoch, total, warmup."""
    from ups.batch_table import TABLE, resolve_batch

    rows = []
    for limit, name, _, _ in TABLE:
        b, a = resolve_batch(batch_size, grad_accum, limit if limit != float("inf") else 141.0)
        g = b * a * gpus
        per_epoch = train_chunks // g
        total = max_steps or epochs * per_epoch
        w = warmup_steps_for(warmup, total)
        rows.append({"gpu": name, "global_batch": g, "hours_per_step": g * chunk_seconds / 3600,
                     "steps_per_epoch": per_epoch, "total_steps": total, "warmup_steps": w,
                     "ok": total > 0 and (total <= 1 or w < total)})
    return rows
