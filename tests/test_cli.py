from __future__ import annotations

import subprocess
import sys

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
