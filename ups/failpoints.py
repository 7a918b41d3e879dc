"""Fail points for kill tests: a stage calls `hit(NAME)` after each unit it finishes.

With the environment variable NAME set to n, the n-th hit exits the process at once with code
86, without cleanup, as SIGKILL would. Unset (always, outside tests), a hit only counts.
"""

from __future__ import annotations

import os
from collections import Counter

_hits: Counter[str] = Counter()


def hit(name: str) -> None:
    _hits[name] += 1
    limit = os.environ.get(name)
    if limit and _hits[name] >= int(limit):
        os._exit(86)
