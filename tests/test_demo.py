from __future__ import annotations

from pathlib import Path

import yaml

from ups import demo

REPO = Path(__file__).resolve().parents[1]


def test_deep_merge_keeps_unrelated_keys():
    base = {"a": {"x": 1, "y": 2}, "b": 3}
    assert demo.deep_merge(base, {"a": {"y": 5}, "c": 4}) == {"a": {"x": 1, "y": 5}, "b": 3, "c": 4}
    assert base == {"a": {"x": 1, "y": 2}, "b": 3}


def test_prepare_lays_out_an_isolated_project(tmp_path):
    before = (REPO / "params.yaml").read_bytes()
    run_dir = demo.prepare(tmp_path / "demo")
    assert (run_dir / ".dvc").is_dir()
    assert (run_dir / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    assert (run_dir / "ups" / "cli.py").read_bytes() == (REPO / "ups" / "cli.py").read_bytes()
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert params["dataset"]["source"] == "local"
    assert Path(params["dataset"]["local_root"]) == (REPO / "sample").resolve()
    repo_params = yaml.safe_load(before)
    assert params["select"]["hours"] < repo_params["select"]["hours"]
    # every repo section survives the merge, and the repo's params.yaml is untouched
    assert set(repo_params) <= set(params)
    assert (REPO / "params.yaml").read_bytes() == before


def test_prepare_is_idempotent_and_tracks_code_changes(tmp_path):
    run_dir = demo.prepare(tmp_path / "demo")
    stale = run_dir / "ups" / "stale_module.py"
    stale.write_text("x = 1\n")
    params_mtime = (run_dir / "params.yaml").stat().st_mtime_ns
    demo.prepare(run_dir)
    assert not stale.exists()  # files gone from the package are removed from the copy
    assert (run_dir / "params.yaml").stat().st_mtime_ns == params_mtime  # unchanged: not rewritten


def test_demo_links_outputs_to_the_cache_like_the_repo(tmp_path):
    """The demo project gets the repo's cache.type, so its shards are stored once."""
    import re

    repo_type = re.search(r'^\s*type\s*=\s*"?([^"\n]+)"?\s*$',
                          (REPO / ".dvc" / "config").read_text(), re.MULTILINE)
    assert repo_type and repo_type.group(1) == demo.CACHE_TYPE
    run_dir = demo.prepare(tmp_path / "demo")
    assert f'type = "{demo.CACHE_TYPE}"' in (run_dir / ".dvc" / "config").read_text()
    config_mtime = (run_dir / ".dvc" / "config").stat().st_mtime_ns
    demo.prepare(run_dir)
    assert (run_dir / ".dvc" / "config").stat().st_mtime_ns == config_mtime  # set once


def test_hours_summary_states_selected_written_and_why_they_differ(tmp_path):
    from ups.atomic import write_json

    assert demo.hours_summary(tmp_path) is None
    write_json(tmp_path / "data/select/report.json", {"selected_hours": 0.45, "target_hours": 0.45})
    write_json(tmp_path / "data/audio/report.json", {
        "hours_written": {"train": 0.2, "valid": 0.03, "eval": 0.19, "total": 0.42},
        "hours_not_written": {"chunk_in_corrupt_mp3": 0.0083, "chunk_in_missing_member": 0.0194,
                              "total": 0.0277}})
    assert demo.hours_summary(tmp_path) == (
        "0.450 selected of 0.45 asked; 0.420 written (train 0.200, valid 0.030, eval 0.190); "
        "not written: chunk_in_corrupt_mp3 0.008 h, chunk_in_missing_member 0.019 h")
