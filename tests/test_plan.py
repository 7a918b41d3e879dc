"""`make plan HOURS=N`: stages up to the selection only, then download / disk / time figures."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from ups.plan import PlanError, set_param

REPO = Path(__file__).resolve().parents[1]


def test_set_param_edits_one_line_and_keeps_comments(tmp_path):
    p = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", p)
    before = p.read_text().splitlines()
    assert set_param(p, "select", "hours", 2.5) is True
    after = p.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert len(changed) == 1
    old, new = changed[0]
    assert new.startswith("  hours: 2.5 ") and new.index("#") == old.index("#")
    assert set_param(p, "select", "hours", 2.5) is False  # already so: no write
    assert set_param(p, "dataset", "local_root", "/some/where") is True
    assert "  local_root: /some/where " in p.read_text()
    with pytest.raises(PlanError, match="select.nope"):
        set_param(p, "select", "nope", 1)


def _project(tmp_path: Path) -> Path:
    """A copy of the repo's project files on the bundled sample corpus (a local mirror)."""
    proj = tmp_path / "proj"
    proj.mkdir()
    for name in ("Makefile", "dvc.yaml", "params.yaml", "requirements.txt", "requirements-dev.txt",
                 "pyproject.toml"):
        shutil.copy2(REPO / name, proj / name)  # copy2: the venv stamp stays newer
    shutil.copytree(REPO / "ups", proj / "ups", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "bench" / "results", proj / "bench" / "results")
    (proj / ".venv").symlink_to(Path(sys.executable).resolve().parents[1]
                                if not (REPO / ".venv").exists() else REPO / ".venv")
    params = proj / "params.yaml"
    for section, key, value in [("dataset", "source", "local"),
                                ("dataset", "local_root", str(REPO / "sample")),
                                ("select", "max_tars", 0), ("select", "hours_table", "computed"),
                                ("select", "max_file_fraction", 0.2), ("select", "max_tar_fraction", 0.6)]:
        set_param(params, section, key, value)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=proj, check=True, env=env)
    return proj


@pytest.mark.slow
def test_make_plan_on_the_sample_corpus_as_typed(tmp_path):
    proj = _project(tmp_path)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "UPS_PROGRESS": "0"}
    res = subprocess.run(["make", "plan", "HOURS=0.3"], cwd=proj, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    out = res.stdout
    assert "Plan for select.hours=0.3: 0.30 h in 108 chunks, target reached" in out
    assert "  tars     " in out and "  members  " in out and "<- dataset.fetch" in out
    assert "Training schedule (" in out and "H200-141GB" in out and "warmup" in out
    for line in ("Download:", "Disk per stage:", "fetch-meta", "prepare-audio", "assign-labels",
                 "Time (bench/results", "Nothing has been downloaded"):
        assert line in out, out
    # stages up to the selection ran; nothing audio-related did
    for stage in ("fetch-meta", "index-vad", "index-lang", "select"):
        assert f"Running stage '{stage}'" in res.stdout + res.stderr
    assert "prepare-audio'" not in res.stdout + res.stderr
    assert not (proj / "data" / "audio").exists() and not (proj / "cache").exists()
    assert "  hours: 0.3 " in (proj / "params.yaml").read_text()
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "select", "--json"], cwd=proj,
                            env=env, capture_output=True, text=True, check=True)
    assert orjson.loads(status.stdout or "{}") == {}  # make train with the same hours redoes none

    # the figures: the chosen tars' real sizes; disk of the stages that ran is measured
    res = subprocess.run([sys.executable, "-m", "ups", "plan", "--hours", "0.3", "--no-repro",
                          "--json"], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    plan = orjson.loads(res.stdout)
    report = orjson.loads((proj / "data/select/report.json").read_bytes())
    sizes = {int(p.stem): p.stat().st_size for p in (REPO / "sample").glob("audio*/*.tar")}
    assert plan["download"]["tars"] == {"n_tars": len(report["tars"]), "how": "exact (tar sizes)",
                                        "bytes": sum(sizes[t] for t in report["tars"])}
    est = report["download"]["members"]  # dataset.fetch members (the default): select's estimate
    assert plan["fetch"] == "members" and plan["download"]["members"] == {
        "n_tars": est["n_tars"], "n_members": est["n_files"], "bytes": est["bytes_estimate"],
        "how": "estimate (select.mp3_bytes_per_second)"}
    assert plan["disk"]["tar cache (prepare-audio)"]["bytes"] == 0
    assert plan["time"]["index-members"]["s"] > 0  # ~one header read per file of the chosen tars
    # once index-members has indexed this selection, the member bytes are exact
    venv_env = {**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run([sys.executable, "-m", "dvc", "repro", "index-members"], cwd=proj,
                         env=venv_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "ups", "plan", "--hours", "0.3", "--no-repro",
                          "--json"], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    exact = orjson.loads(res.stdout)["download"]["members"]
    idx = orjson.loads((proj / "data/index/members/report.json").read_bytes())["download"]["members"]
    assert exact["how"] == "exact (index-members)" and exact["bytes"] == idx["bytes"] > 0
    assert plan["disk"]["fetch-meta"]["bytes"] == sum(
        p.stat().st_size for p in (proj / "data/meta").iterdir())
    assert plan["disk"]["prepare-audio"]["bytes"] == pytest.approx(0.3 * 3600 * (32000 + 50 * 39 * 4))
    assert plan["time"]["prepare-audio"]["s"] > 0 and plan["time"]["train"]["s"] is None
    # HuBERT-base: the export + 2 kept states + the one being written (weights, 2 AdamW moments)
    assert plan["disk"]["train"]["bytes"] == int(94.4e6 * 4 * (1 + 3 * 3))


def test_plan_refuses_nonpositive_hours(tmp_path):
    from ups.plan import run

    p = tmp_path / "params.yaml"
    shutil.copy(REPO / "params.yaml", p)
    with pytest.raises(PlanError, match="HOURS must be > 0"):
        run(tmp_path, 0, params_path=p, mb_per_s=100, repro=False)
