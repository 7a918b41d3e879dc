"""A stage's `report.json`: its resolved config, its bad-input tally and its own numbers."""

from __future__ import annotations

from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from ups.atomic import write_json
from ups.skips import Skips


def write_report(path: str | Path, *, stage: str, config: Any, skips: Skips | None = None,
                 **fields: Any) -> None:
    """The stage's JSON report: resolved config, bad-input tally and the stage's own numbers."""
    cfg = asdict(config) if is_dataclass(config) and not isinstance(config, type) else config
    body: dict[str, Any] = {"stage": stage, "config": cfg, **fields}
    if skips is not None:
        body["skipped"] = skips.to_dict()
    write_json(path, body)
