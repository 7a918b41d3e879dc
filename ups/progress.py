"""Progress bars: one look for every long loop, shown on rank 0 and on a terminal only.

`UPS_PROGRESS=1` forces bars on (e.g. under a CI log viewer), `UPS_PROGRESS=0` turns them off.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def rank() -> int:
    """This process's global rank under torchrun (0 when not distributed)."""
    return int(os.environ.get("RANK", "0"))


def _enabled() -> bool:
    forced = os.environ.get("UPS_PROGRESS")
    if forced is not None:
        return forced not in ("0", "", "false", "no")
    return rank() == 0 and sys.stderr.isatty()


def bar(
    iterable: Iterable[T] | None = None,
    *,
    desc: str,
    unit: str,
    total: float | None = None,
    **kwargs: Any,
) -> tqdm:
    """A tqdm bar with the stage name as `desc`; disabled off-terminal and on ranks > 0."""
    return tqdm(
        iterable,
        desc=desc,
        unit=unit,
        total=total,
        disable=not _enabled(),
        dynamic_ncols=True,
        mininterval=0.5,
        **kwargs,
    )
