"""The three stages through `dvc repro` in a scratch DVC project; select.hours re-runs select only."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.stages.meta_fixture import write_meta

REPO = Path(__file__).resolve().parents[2]
STAGES = ("index-vad", "index-lang", "select")


def _sh(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "UPS_PROGRESS": "0", "DVC_NO_ANALYTICS": "1"}
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout + out.stderr


def _repro(dvc: str, root: Path) -> dict[str, bool]:
    """Run the three stages one by one (-s: fetch-meta, seeded by hand, is not run)."""
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
    params["dataset"].update(source="local", local_root=str(tmp_path / "corpus"))
    params["select"].update(hours=0.5, hours_table="computed", max_file_fraction=0.5,
                            max_tar_fraction=1.0)
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    write_meta(root / "data" / "meta", n_files=120)
    dvc = str(Path(sys.executable).parent / "dvc")
    _sh(["git", "init", "-q"], root)
    _sh(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-q", "--allow-empty", "-m", "x"], root)
    _sh([dvc, "init", "-q"], root)
    assert _repro(dvc, root) == {"index-vad": True, "index-lang": True, "select": True}
    assert (root / "data" / "select" / "chunks.parquet").is_file()
    assert _repro(dvc, root) == {"index-vad": False, "index-lang": False, "select": False}
    params["select"]["hours"] = 0.3
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _repro(dvc, root) == {"index-vad": False, "index-lang": False, "select": True}
