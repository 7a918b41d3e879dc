from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from ups.cli import build_parser, main

STAGES = ["fetch-meta", "index-vad", "index-lang", "select", "prepare-audio", "fit-kmeans",
          "assign-labels", "train", "evaluate"]


def test_help_lists_every_stage(capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for stage in STAGES:
        assert stage in out


@pytest.mark.parametrize("stage", STAGES)
def test_each_stage_has_help(stage, capsys):
    with pytest.raises(SystemExit) as exc:
        build_parser().parse_args([stage, "--help"])
    assert exc.value.code == 0
    assert "--params" in capsys.readouterr().out


def test_python_dash_m_works():
    out = subprocess.run([sys.executable, "-m", "ups", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ups ")


def test_bad_config_fails_fast_with_name(tmp_path, capfd):
    p = tmp_path / "params.yaml"
    p.write_text("select:\n  hours: -5\n")
    assert main(["select", "--params", str(p), "--index-dir", str(tmp_path)]) == 2
    assert "select.hours must be > 0, got -5" in capfd.readouterr().err


def _fetch_meta_against_hub(tmp_path, fault_path: str, status: int, token: str | None,
                            verbose: bool = False) -> subprocess.CompletedProcess:
    """`ups fetch-meta` as a user runs it, against the local hub stand-in answering `status`."""
    import os

    import yaml

    from tests.hub_server import REPO_ID, HubServer, HubState, hub_cfg

    state = HubState(REPO_ID, {"vad_results.jsonl": b"{}\n", "lang_id_results.jsonl": b"{}\n"})
    state.fault(fault_path, ("status", status))
    cfg = hub_cfg(tmp_path, revision="main")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "dataset": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "fetch_meta": {"vad_file": "vad_results.jsonl", "lid_file": "lang_id_results.jsonl"}}))
    with HubServer(state) as url:
        env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
        env.update(HF_ENDPOINT=url, HF_HOME=str(tmp_path / "hf"),  # HF_HOME: no login cache
                   PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        if token:
            env["HF_TOKEN"] = token
        cmd = [sys.executable, "-m", "ups", *(["-v"] if verbose else []), "fetch-meta",
               "--params", str(params), "--out-dir", str(tmp_path / "meta")]
        return subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize(("fault_path", "status", "token"), [
    ("@paths-info", 401, None),                      # no token: the metadata request is refused
    ("@paths-info", 403, "hf_SENTINEL_abc123"),      # a token without access to the gated dataset
    ("vad_results.jsonl", 403, "hf_SENTINEL_abc123"),  # refused at the download itself
])
def test_access_errors_are_one_line_without_traceback(tmp_path, fault_path, status, token):
    res = _fetch_meta_against_hub(tmp_path, fault_path, status, token)
    assert res.returncode == 1, res.stderr
    assert "Traceback" not in res.stderr
    errors = [line for line in res.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1, res.stderr
    assert f"HTTP {status}" in errors[0] and "HF_TOKEN" in errors[0] and "terms" in errors[0]
    assert "hf_SENTINEL" not in res.stdout + res.stderr
    # hub request lines ("HTTP Request: POST ...") are DEBUG: not shown without -v
    assert "HTTP Request" not in res.stderr


def test_hub_requests_are_logged_at_debug_with_verbose(tmp_path):
    res = _fetch_meta_against_hub(tmp_path, "@paths-info", 401, None, verbose=True)
    assert res.returncode == 1
    requests = [line for line in res.stderr.splitlines() if "HTTP Request" in line]
    assert requests and all(" DEBUG " in line for line in requests), res.stderr
    assert "Traceback" in res.stderr  # -v also shows where the error was raised
