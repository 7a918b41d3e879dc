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
