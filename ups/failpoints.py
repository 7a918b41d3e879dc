"""Fail points and other test hooks, read from the environment; unset (always, outside tests),
each is a no-op.

- `hit(NAME)`: a stage calls it after each unit it finishes; with the environment variable NAME
  set to n, the n-th hit exits the process at once with code 86, without cleanup, as SIGKILL
  would. Unset, a hit only counts.
- The trainer's hooks: `nan_step` (a rank's loss made NaN at one data step), `delay_load` (a
  rank slow to read its state) and `StepTrace` (the chunk ids each rank trained on, per step).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

_hits: Counter[str] = Counter()


def hit(name: str) -> None:
    _hits[name] += 1
    limit = os.environ.get(name)
    if limit and _hits[name] >= int(limit):
        os._exit(86)


def nan_step(rank: int) -> int | None:
    """UPS_TEST_NAN_AT=<rank>:<k> makes that rank's loss NaN at its k-th data step (0-based,
    counted from the process's start): the data step to poison on this rank, or None."""
    spec = os.environ.get("UPS_TEST_NAN_AT")
    if not spec:
        return None
    r, s = spec.split(":")
    return int(s) if int(r) == rank else None


def delay_load(rank: int) -> None:
    """UPS_TEST_LOAD_DELAY=<rank>:<seconds> delays that rank's reading of the training state."""
    spec = os.environ.get("UPS_TEST_LOAD_DELAY")
    if spec and int(spec.split(":")[0]) == rank:
        time.sleep(float(spec.split(":")[1]))


class StepTrace:
    """UPS_TEST_TRACE_DIR=<dir> makes each rank append, per data step, the chunk ids it trained
    on to `<dir>/rank<k>.jsonl` (flushed at once, so a killed run leaves its steps)."""

    def __init__(self, rank: int) -> None:
        where = os.environ.get("UPS_TEST_TRACE_DIR")
        self.fh = open(Path(where) / f"rank{rank}.jsonl", "ab") if where else None  # noqa: SIM115

    def write(self, epoch: int, step: int, update: int, micro: list[dict[str, Any]]) -> None:
        if self.fh is not None:
            ids = [c for b in micro for c in b["chunk_ids"]]
            self.fh.write(orjson.dumps({"epoch": epoch, "step": step, "update": update, "ids": ids}) + b"\n")
            self.fh.flush()
