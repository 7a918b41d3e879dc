"""Every DVC stage of the demo, rerun from scratch, writes byte-identical tracked outputs.

A clock value (elapsed seconds, throughput) or any other run-dependent byte inside a tracked
output changes its hash in dvc.lock at every rerun: `dvc repro` would report a changed pipeline
and `dvc push` would store a new copy of the same result. Timings belong in logs or dvclive.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

# The trainer's throughput is the one clock value the pipeline keeps, and it lives in dvclive
# only (the state's history and training.json hold none): those figures are left out of the
# comparison, everything else of the train stage (model, state, the other metrics) must match.
TIMED_METRICS = ("audio_s_per_s", "tflops")
DVCLIVE = "dvclive/"


def _untimed(rel: str, data: bytes) -> bytes | None:
    """The bytes to compare: dvclive's timing plots dropped, its summary without timings."""
    if not rel.startswith(DVCLIVE):
        return data
    if rel.endswith(tuple(f"/{m}.tsv" for m in TIMED_METRICS)):
        return None
    if rel.endswith("metrics.json"):
        summary = json.loads(data)
        for m in TIMED_METRICS:
            summary.get("train", {}).pop(m, None)
        return json.dumps(summary, sort_keys=True).encode()
    return data


def _lock_without_dvclive(lock: bytes) -> dict:
    """dvc.lock with the hashes of dvclive's files (they hold the timings) left out, as train's
    outputs and as evaluate's deps."""
    data = yaml.safe_load(lock)
    for stage in data["stages"].values():
        for key in ("outs", "deps"):
            stage[key] = [o for o in stage.get(key, []) if not o["path"].startswith(DVCLIVE)]
    return data


def _tracked(stage: dict) -> list[str]:
    paths = []
    for key in ("outs", "metrics", "plots"):
        for item in stage.get(key, []):
            paths.append(next(iter(item)) if isinstance(item, dict) else item)
    return paths


def _snapshot(root: Path, rels: list[str]) -> dict[str, bytes]:
    out = {}
    for rel in rels:
        p = root / rel
        files = [p] if p.is_file() else sorted(q for q in p.rglob("*") if q.is_file())
        for q in files:
            key = q.relative_to(root).as_posix()
            data = _untimed(key, q.read_bytes())
            if data is not None:
                out[key] = data
    return out


@pytest.mark.e2e
@pytest.mark.identity
@pytest.mark.slow
def test_each_stage_rerun_from_scratch_writes_the_same_bytes(demo_run, tmp_path):
    run_dir, first = demo_run
    assert first.returncode == 0, first.stderr[-3000:]
    root = tmp_path / "demo"
    shutil.copytree(run_dir, root, symlinks=True)
    # the first run had the machine's BLAS thread count (2 here): the rerun has one BLAS thread,
    # and must still write the same bytes (ups.blas; torch's own threads are not varied here,
    # see docs/reproducibility.md)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(root), "UPS_PROGRESS": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OPENBLAS_NUM_THREADS": "1"}
    lock_before = (root / "dvc.lock").read_bytes()
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    rels = {name: _tracked(stage) for name, stage in stages.items()}
    before = {name: _snapshot(root, r) for name, r in rels.items()}
    assert all(before.values()), before.keys()
    for r in rels.values():  # persistent outs too: a rerun must recompute, not resume
        for rel in r:
            p = root / rel
            shutil.rmtree(p) if p.is_dir() else p.unlink(missing_ok=True)
    # one dvc call (its start-up is seconds): each stage alone (-s), in pipeline order, forced
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro", "-f", "-s", "--no-run-cache", *stages],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, (proc.stdout[-3000:], proc.stderr[-3000:])
    assert all(f"Running stage '{name}'" in proc.stdout + proc.stderr for name in stages)
    differ = {}
    for name, r in rels.items():
        after = _snapshot(root, r)
        changed = sorted(k for k in before[name].keys() | after.keys() if before[name].get(k) != after.get(k))
        if changed:
            differ[name] = changed
    assert differ == {}
    lock_after = _lock_without_dvclive((root / "dvc.lock").read_bytes())
    lock_was = _lock_without_dvclive(lock_before)
    changed_lock = {(name, key, str(item.get("path"))): (item, lock_was["stages"][name].get(key))
                    for name, stage in lock_after["stages"].items() for key in ("deps", "params", "outs")
                    for item in (stage.get(key) or []) if isinstance(item, dict)
                    and item not in (lock_was["stages"].get(name, {}).get(key) or [])}
    assert lock_after == lock_was, changed_lock
