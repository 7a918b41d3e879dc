"""fetch-meta and the index and selection stages through `dvc repro` on the bundled sample corpus.

The scratch DVC project gets a copy of `sample/` as its local dataset mirror
(`dataset.source: local`); changing select.hours re-runs select only.
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

REPO = Path(__file__).resolve().parents[2]
STAGES = ("fetch-meta", "index-vad", "index-lang", "select")


def _sh(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "UPS_PROGRESS": "0", "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _repro(dvc: str, root: Path) -> dict[str, bool]:
    """Run the stages one by one (-s: only these, not the stages after them)."""
    ran = {}
    for st in STAGES:
        log = _sh([dvc, "repro", "-s", st], root)
        ran[st] = f"Running stage '{st}'" in log
    return ran


@pytest.mark.slow
def test_dvc_repro_and_select_hours_reruns_select_only(tmp_path):
    root = tmp_path / "proj"
    root.mkdir()
    shutil.copytree(REPO / "ups", root / "ups", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    shutil.copytree(REPO / "sample", root / "sample")
    params["dataset"].update(source="local", local_root="sample")
    params["select"].update(hours=0.2, hours_table="computed", max_tars=0, max_file_fraction=0.5,
                            max_tar_fraction=1.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    dvc = str(Path(sys.executable).parent / "dvc")
    _sh(["git", "init", "-q"], root)
    _sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty",
         "-m", "x"], root)
    _sh([dvc, "init", "-q"], root)
    all_ran = dict.fromkeys(STAGES, True)
    assert _repro(dvc, root) == all_ran
    assert (root / "data" / "meta" / "vad_results.jsonl").read_bytes() == \
        (REPO / "sample" / "vad_results.jsonl").read_bytes()
    vad_rep = json.loads((root / "data" / "index" / "vad" / "report.json").read_text())
    assert vad_rep["skipped"]["counts"] == {"malformed_json": 1}  # the corpus's planted bad line
    sel_rep = json.loads((root / "data" / "select" / "report.json").read_text())
    assert sel_rep["target_reached_within_1pct"] and sel_rep["join_coverage"]["vad_without_lid"] == 1
    assert _repro(dvc, root) == dict.fromkeys(STAGES, False)
    params["select"]["hours"] = 0.1
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _repro(dvc, root) == {**dict.fromkeys(STAGES, False), "select": True}

    # An edited local mirror re-runs fetch-meta (its metadata files are deps), and what follows
    # from the changed file only: the LID file is the same, so index-lang is not re-run.
    vad = root / "sample" / "vad_results.jsonl"
    lines = vad.read_bytes().splitlines(keepends=True)
    vad.write_bytes(b"".join(lines[:-1]))
    status = _sh([dvc, "status", "fetch-meta"], root)
    assert "sample/vad_results.jsonl" in status and "modified" in status, status
    assert _repro(dvc, root) == {"fetch-meta": True, "index-vad": True, "index-lang": False,
                                 "select": True}
    assert (root / "data" / "meta" / "vad_results.jsonl").read_bytes() == vad.read_bytes()
