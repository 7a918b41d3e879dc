"""Fixtures of the fault suite: the reference run, and the figures it reports.

`figures` collects kill points tried and survived per stage, faults injected and bad inputs tried.
At the end of the session it writes them as JSON: to `bench/results/stress.json` when the run was
`make stress` (`-m stress`), else to the session's tmp dir (CI must not dirty the repo).
"""

from __future__ import annotations

import os
import platform
import time
from collections import Counter
from typing import Any

import pytest

from tests.faults.harness import REPO, KillResult, Reference, build_reference
from ups.atomic import write_json


class Figures:
    def __init__(self) -> None:
        self.kills: dict[str, dict[str, Any]] = {}
        self.faults: Counter[str] = Counter()
        self.bad_inputs: Counter[str] = Counter()
        self.t0 = time.time()

    def kill_point(self, r: KillResult, trigger: str) -> None:
        s = self.kills.setdefault(r.stage, {"kill_points_tried": 0, "survived": 0,
                                            "killed_while_running": 0, "killed_after_output": 0,
                                            "points": []})
        s["kill_points_tried"] += 1
        s["survived"] += int(r.same)
        s["killed_while_running"] += int(r.killed)
        s["killed_after_output"] += int(r.killed and r.had_output)
        s["points"].append({"trigger": trigger, "delay_s": round(r.delay_s, 3), "killed": r.killed,
                            "had_output": r.had_output, "identical": r.same, "diff": r.diff[:5]})

    def fault(self, kind: str, n: int = 1) -> None:
        self.faults[kind] += n

    def bad_input(self, kind: str, n: int = 1) -> None:
        self.bad_inputs[kind] += n

    def to_dict(self) -> dict[str, Any]:
        return {
            "kill_points_tried": sum(s["kill_points_tried"] for s in self.kills.values()),
            "kill_points_survived": sum(s["survived"] for s in self.kills.values()),
            "kills": dict(sorted(self.kills.items())),
            "faults_injected": sum(self.faults.values()),
            "faults_by_kind": dict(sorted(self.faults.items())),
            "bad_inputs_tried": sum(self.bad_inputs.values()),
            "bad_inputs_by_kind": dict(sorted(self.bad_inputs.items())),
            "wall_s": round(time.time() - self.t0, 1),
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        }


def _is_stress_run(config: pytest.Config) -> bool:
    """`make stress` (UPS_STRESS=1: the whole fault suite, CI subset included) or `-m stress`."""
    if os.environ.get("UPS_STRESS") == "1":
        return True
    expr = (config.getoption("markexpr") or "").replace(" ", "")
    return "stress" in expr and "notstress" not in expr


@pytest.fixture(scope="session")
def figures(request, tmp_path_factory):
    fig = Figures()
    yield fig
    stress = _is_stress_run(request.config)
    out = (REPO / "bench" / "results" / "stress.json" if stress
           else tmp_path_factory.getbasetemp() / "stress.json")
    write_json(out, {"run": "make stress" if stress else "make test (CI subset)", **fig.to_dict()})


@pytest.fixture(scope="session")
def reference(tmp_path_factory) -> Reference:
    """The pipeline up to assign-labels on the sample corpus, run once, uninterrupted."""
    return build_reference(tmp_path_factory.mktemp("reference"), upto="assign-labels")


@pytest.fixture(scope="session")
def reference_trained(reference) -> Reference:
    """The reference plus an uninterrupted train run (tiny model, 8 steps)."""
    from tests.faults.harness import run_stage

    if "train" not in reference.seconds:
        t0 = time.monotonic()
        res = run_stage(reference.root, "train")
        assert res.returncode == 0, res.stderr[-3000:]
        reference.seconds["train"] = time.monotonic() - t0
    return reference
