"""Bad input is counted, not fatal: a tally keyed by reason, logged at the end, stored in reports."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

log = logging.getLogger(__name__)


class Skips:
    """Counts skipped items by reason and keeps a few examples of each for the report."""

    def __init__(self, stage: str, max_examples: int = 5) -> None:
        self.stage = stage
        self.counts: Counter[str] = Counter()
        self.examples: dict[str, list[str]] = {}
        self.max_examples = max_examples

    def add(self, reason: str, example: str = "", n: int = 1) -> None:
        self.counts[reason] += n
        ex = self.examples.setdefault(reason, [])
        if example and len(ex) < self.max_examples:
            ex.append(example)
        log.debug("%s: skipped (%s) %s", self.stage, reason, example)

    def merge(self, other: Skips) -> None:
        for reason, n in other.counts.items():
            self.counts[reason] += n
            ex = self.examples.setdefault(reason, [])
            for e in other.examples.get(reason, []):
                if len(ex) < self.max_examples:
                    ex.append(e)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def log_summary(self) -> None:
        if not self.counts:
            log.info("%s: no bad input", self.stage)
            return
        for reason, n in sorted(self.counts.items()):
            log.warning("%s: skipped %d item(s): %s (e.g. %s)", self.stage, n, reason,
                        "; ".join(self.examples.get(reason, [])[:3]) or "-")

    def to_dict(self) -> dict[str, Any]:
        return {"counts": dict(sorted(self.counts.items())), "examples": self.examples}
