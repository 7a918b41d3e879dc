"""Fail points: the n-th hit of a named point ends the process at once (exit 86), as SIGKILL would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCRIPT = """
from ups.failpoints import hit
for i in range(5):
    print(i, flush=True)
    hit("UPS_FAIL_UNIT")
print("done", flush=True)
"""


def _run(env_extra: dict[str, str]) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "UPS_FAIL_UNIT"}
    return subprocess.run([sys.executable, "-c", SCRIPT], cwd=REPO, env={**env, **env_extra},
                          capture_output=True, text=True, timeout=60)


def test_unset_a_point_only_counts():
    out = _run({})
    assert out.returncode == 0 and out.stdout.split() == ["0", "1", "2", "3", "4", "done"]


def test_the_nth_hit_exits_86_without_cleanup():
    out = _run({"UPS_FAIL_UNIT": "3"})
    assert out.returncode == 86 and out.stdout.split() == ["0", "1", "2"]
