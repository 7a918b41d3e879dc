"""Stop training at a clean point when Slurm warns of the time limit or preempts the job.

Slurm gives notice before it kills: `#SBATCH --signal=B:USR1@<seconds>` (scripts/slurm/train.sbatch)
sends SIGUSR1 to the batch script that many seconds before the time limit, and preemption or
`scancel` sends SIGTERM to every process. Without a handler either kills the trainer and up to
`train.save_every_steps` steps are lost. So each training process turns both signals into a flag
(`install`), and the batch script, which torchrun's agent stands between, touches the file named
by `UPS_PREEMPT_FILE` instead. The trainer asks `requested` at its logging step boundaries (the
sums it logs restart there, so a resumed run logs the same history); the ranks agree by an
all-reduce, rank 0 saves a state, and every process leaves with `Preempted` (exit code 75,
EX_TEMPFAIL), which the batch script turns into `scontrol requeue`.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from pathlib import Path
from types import FrameType
from typing import Any

log = logging.getLogger(__name__)

EXIT_CODE = 75  # EX_TEMPFAIL: come back later (scripts/slurm/train.sbatch requeues on it)
SIGNALS = (signal.SIGUSR1, signal.SIGTERM)
_flag = threading.Event()


class Preempted(SystemExit):
    """Raised after the state is saved: ends the process with EXIT_CODE, through every `finally`."""

    def __init__(self, step: int) -> None:
        super().__init__(EXIT_CODE)
        self.step = step


def _handler(signum: int, _frame: FrameType | None) -> None:
    if not _flag.is_set():
        log.warning("train: %s received: saving at the next step boundary, then exiting with %d",
                    signal.Signals(signum).name, EXIT_CODE)
    _flag.set()


_previous: dict[int, Any] = {}


def install() -> None:
    """Handle SIGUSR1 and SIGTERM from here on (main thread only); clears an earlier request."""
    _flag.clear()
    if threading.current_thread() is threading.main_thread():
        for sig in SIGNALS:
            _previous.setdefault(sig, signal.signal(sig, _handler))


def uninstall() -> None:
    """The handlers from before `install` (a process that goes on after training, e.g. tests)."""
    while _previous:
        sig, handler = _previous.popitem()
        signal.signal(sig, handler)


def _asked_here() -> bool:
    path = os.environ.get("UPS_PREEMPT_FILE")
    return _flag.is_set() or bool(path and Path(path).exists())


def requested(d: Any) -> bool:
    """Whether any rank was asked to stop; a collective when there are several (call on all)."""
    from ups import distributed

    return distributed.host_sum(d, [float(_asked_here())])[0] > 0

