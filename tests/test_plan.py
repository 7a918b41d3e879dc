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
    venv = Path(sys.executable).resolve().parents[1] if not (REPO / ".venv").exists() else REPO / ".venv"
    (proj / ".venv").symlink_to(venv)
    stamp = venv / ".installed"
    if stamp.exists():  # never a rebuild of the shared venv from this copy (a pip install -e of it)
        for name in ("requirements.txt", "requirements-dev.txt", "pyproject.toml"):
            t = min((proj / name).stat().st_mtime, stamp.stat().st_mtime - 1)
            os.utime(proj / name, (t, t))
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
    assert "Download (dataset.fetch: members)" in out and "  header walk  " in out and "  members  " in out
    assert "Training schedule (" in out and "H200-141GB" in out and "warmup" in out
    for line in ("Download (dataset.fetch: members)", "Disk per stage:", "fetch-meta", "prepare-audio",
                 "assign-labels", "Time (transfers at --latency-ms", "Nothing has been downloaded"):
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

    # the figures: select's estimates until index-members ran; disk of the stages that ran is measured
    res = subprocess.run([sys.executable, "-m", "ups", "plan", "--hours", "0.3", "--no-repro",
                          "--json"], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    plan = orjson.loads(res.stdout)
    report = orjson.loads((proj / "data/select/report.json").read_bytes())
    est = report["download"]["members"]  # dataset.fetch members (the default): select's estimate
    assert plan["fetch"] == "members" and plan["download"]["n_tars"] == len(report["tars"])
    assert plan["download"]["members"] == {"n_members": est["n_files"], "bytes": est["bytes_estimate"],
                                           "how": "estimate (select.mp3_bytes_per_second)"}
    walk = plan["download"]["header_walk"]
    assert walk["requests"] == est["header_walk"]["requests_estimate"] > len(report["tars"])
    assert plan["disk"]["tar cache (prepare-audio)"]["bytes"] == 0
    assert plan["time"]["index-members"]["s"] > 0  # ~one header read per file of the chosen tars
    # once index-members has indexed this selection, the member bytes are exact
    venv_env = {**env, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    res = subprocess.run([sys.executable, "-m", "dvc", "repro", "index-members"], cwd=proj,
                         env=venv_env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    res = subprocess.run([sys.executable, "-m", "ups", "plan", "--hours", "0.3", "--no-repro",
                          "--json"], cwd=proj, env=env, capture_output=True, text=True, timeout=120)
    exact = orjson.loads(res.stdout)["download"]
    idx = orjson.loads((proj / "data/index/members/report.json").read_bytes())
    assert exact["members"]["how"] == "exact (index-members)"
    assert exact["members"]["bytes"] == idx["download"]["members"]["bytes"] > 0
    # the estimate (a read per file of the VAD index, one at the end) bounds what the walks read:
    # each stops after its last selected member
    assert exact["header_walk"]["requests"] == idx["header_walk"]["requests"]
    assert 0 < exact["header_walk"]["requests"] <= walk["requests"]
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


# --- the download, its hub requests and its time: from select's outputs, no stage run --------

def _select_into(project: Path, index_dir: Path, fetch: str, **select_kw) -> dict:
    from ups.atomic import read_json
    from ups.config import SelectConfig
    from ups.stages import select

    cfg = SelectConfig(hours_table="computed", max_file_fraction=1.0, max_tar_fraction=1.0,
                       **select_kw)
    select.run(cfg, index_dir=index_dir, out_dir=project / "data" / "select", fetch=fetch)
    return read_json(project / "data" / "select" / "report.json")


def _params(**dataset) -> dict:
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"].update(dataset)
    return params


def test_members_plan_counts_tars_headers_members_and_hub_calls(tmp_path):
    import math

    import pyarrow.parquet as pq

    from tests.stages.table_fixture import write_files
    from ups.plan import build, format_plan

    # 60 tars of 8 files: en in every tar, yo in 12 of them
    layout = [(t, "en", 120.0) for t in range(1, 61) for _ in range(7)]
    layout += [(t, "yo" if t % 5 == 0 else "en", 90.0) for t in range(1, 61)]
    index_dir = write_files(tmp_path / "index", layout)
    project = tmp_path / "proj"
    (project / "data" / "meta").mkdir(parents=True)
    (project / "data" / "meta" / "fetch_meta.json").write_bytes(orjson.dumps({"dataset": {
        "source": "hub", "repo_id": "MLCommons/unsupervised_peoples_speech", "revision": "main",
        "resolved_revision": "a" * 40}}))
    report = _select_into(project, index_dir, "members", hours=1.0, alpha=0.0)
    params = _params(source="hub", revision="main", download_workers=3)
    plan = build(project, params, mb_per_s=50.0, latency_s=0.04)

    n_files = dict(zip(*pq.read_table(index_dir / "vad" / "tars.parquet", columns=["tar", "n_files"])
                       .to_pydict().values(), strict=True))
    n_tars = len(report["tars"])
    requests = sum(n_files[t] + 1 for t in report["tars"])  # a read per member, one at the end
    est = report["download"]["members"]
    d = plan["download"]
    assert plan["fetch"] == "members" and "tars" not in d  # no whole-tar price of these tars
    assert d["n_tars"] == n_tars == est["n_tars"] and 1 < n_tars < 60
    assert d["header_walk"]["requests"] == requests and d["header_walk"]["bytes"] == requests * 2048
    assert d["members"] == {"n_members": est["n_files"], "bytes": est["bytes_estimate"],
                            "how": "estimate (select.mp3_bytes_per_second)"}
    assert d["bytes"] == est["bytes_estimate"] + requests * 2048
    hub = plan["hub"]
    assert hub["api"]["by_stage"] == {"index-members": math.ceil(n_tars / 50),
                                      "prepare-audio": math.ceil(n_tars / 50)}
    assert hub["resolve"]["calls"] == 2 * n_tars and hub["resolve"]["per_5min"] == 5000
    assert hub["api"]["least_time_s"] == hub["resolve"]["least_time_s"] == 0
    longest = max(n_files[t] for t in report["tars"]) + 1
    assert d["header_walk"]["max_tar_requests"] == longest
    # 256 walks at once (dataset.header_walks) > the tars: the longest tar's reads, one after another
    assert plan["time"]["index-members"]["s"] == pytest.approx(max(longest * 0.04, requests * 0.00034))
    streams = 3 * params["prepare_audio"]["workers"]
    assert plan["time"]["download"]["s"] == pytest.approx(d["bytes"] / 50e6 + est["n_files"] * 0.04 / streams)
    text = format_plan(plan)
    assert f"header walk  {requests} ranged reads" in text and "Hub requests after select" in text
    assert "/resolve/ (one per tar a stage)" in text and f"{2 * n_tars} of 5000" in text


def test_hub_budget_sets_the_least_time():
    from ups.plan import HUB_PER_5MIN, hub_requests, rate_floor_s

    assert HUB_PER_5MIN == {"api": 1000, "resolve": 5000}  # a free account's, per 5 minutes
    assert [rate_floor_s(n, 1000) for n in (0, 1000, 1001, 2000, 2001)] == [0, 0, 300, 300, 600]
    # 3 984 tars touched member by member: 7 968 /resolve/ need two windows of a free account
    hub = hub_requests("members", 3984, HUB_PER_5MIN)
    assert hub["resolve"]["calls"] == 7968 and hub["resolve"]["least_time_s"] == 300
    assert hub["api"]["calls"] == 2 * 80 and hub["api"]["least_time_s"] == 0
    whole = hub_requests("tars", 139, {"api": 1000, "resolve": 100})
    assert whole["resolve"] == {"calls": 139, "by_stage": {"prepare-audio": 139}, "per_5min": 100,
                                "least_time_s": 300}
    assert whole["api"]["by_stage"] == {"plan": 3, "prepare-audio": 3}


def test_tars_plan_gives_the_whole_tar_selection_at_its_sizes(tmp_path):
    from ups.config import IndexLangConfig, IndexVadConfig
    from ups.plan import build, format_plan
    from ups.stages import index_lang, index_vad

    sample = REPO / "sample"
    index_vad.run(IndexVadConfig(), vad_jsonl=sample / "vad_results.jsonl", out_dir=tmp_path / "i" / "vad")
    index_lang.run(IndexLangConfig(), lid_jsonl=sample / "lang_id_results.jsonl",
                   out_dir=tmp_path / "i" / "lang")
    project = tmp_path / "proj"
    (project / "data" / "meta").mkdir(parents=True)
    (project / "data" / "meta" / "fetch_meta.json").write_bytes(b"{}")
    report = _select_into(project, tmp_path / "i", "tars", hours=0.3, max_tars=2, min_speech_ratio=0.5)
    plan = build(project, _params(source="local", local_root=str(sample), fetch="tars"),
                 mb_per_s=10.0, latency_s=0.05)
    sizes = {int(p.stem): p.stat().st_size for p in sample.glob("audio*/*.tar")}
    total = sum(sizes[t] for t in report["tars"])
    assert 0 < len(report["tars"]) <= 2
    assert plan["download"] == {"n_tars": len(report["tars"]), "bytes": total,
                                "tars": {"bytes": total, "how": "exact (tar sizes)"}}
    assert plan["hub"] is None and "index-members" not in plan["time"]
    assert plan["time"]["download"]["s"] == pytest.approx(total / 10e6)
    assert plan["disk"]["tar cache (prepare-audio)"]["bytes"] == total  # under the cache budget
    assert "Hub requests: none (dataset.source: local)" in format_plan(plan)
    with pytest.raises(PlanError, match="made with dataset.fetch tars"):
        build(project, _params(source="local", local_root=str(sample), fetch="members"), mb_per_s=10.0)
