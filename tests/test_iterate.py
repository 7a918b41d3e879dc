"""`ups iterate`: the snapshot, the overrides and the DVC command it runs (end to end: test_e2e_demo)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ups import iterate


def _model(d: Path, weights: bytes) -> Path:
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"hidden_size": 32}')
    (d / "model.safetensors").write_bytes(weights)
    (d / "head.json").write_text("{}")
    return d


def test_snapshot_is_named_by_the_weights_and_made_once(tmp_path):
    _model(tmp_path / "models/hubert-cpt", b"w1")
    rel = iterate.snapshot(tmp_path, Path("models/hubert-cpt"))
    assert rel.parent == Path("models/iter") and len(rel.name) == 12
    assert (tmp_path / rel / "model.safetensors").read_bytes() == b"w1"
    assert iterate.snapshot(tmp_path, Path("models/hubert-cpt")) == rel  # same weights, same copy
    (tmp_path / "models/hubert-cpt/model.safetensors").write_bytes(b"w2")
    assert iterate.snapshot(tmp_path, Path("models/hubert-cpt")) != rel  # new training, new name
    with pytest.raises(FileNotFoundError, match="make train"):
        iterate.snapshot(tmp_path, Path("models/none"))


def test_overrides_and_the_command_in_git_and_without(tmp_path):
    items = iterate.overrides(Path("models/iter/abc"), 6, ["train.epochs=2"])
    assert items == ["train.init=models/iter/abc", "features.kind=hubert", "features.hubert_model=init",
                     "features.layer=6", "train.epochs=2"]
    with pytest.raises(ValueError, match="key=value"):
        iterate.overrides(Path("x"), None, ["oops"])
    subprocess.run(["git", "init", "-q", str(tmp_path / "g")], check=True)
    cmd = iterate.command(tmp_path / "g", items[:2])
    assert cmd == [sys.executable, "-m", "dvc", "exp", "run", "-S", items[0], "-S", items[1]]
    (tmp_path / "n" / ".dvc").mkdir(parents=True)
    (tmp_path / "n" / ".dvc" / "config").write_text("[core]\n    no_scm = True\n")
    assert iterate.command(tmp_path / "n", items) == [sys.executable, "-m", "dvc", "repro"]


def test_overrides_written_like_dvc_exp_run_keep_comments(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("features:  # what k-means clusters\n  kind: mfcc   # a comment\n  layer: 9\n"
                 "evaluate:\n  layers: all\n")
    iterate.apply_overrides(p, ["features.kind=hubert", "features.layer=2", "evaluate.layers=[2]"])
    text = p.read_text()
    assert "# a comment" in text and "# what k-means clusters" in text
    assert yaml.safe_load(text) == {"features": {"kind": "hubert", "layer": 2}, "evaluate": {"layers": [2]}}
    with pytest.raises(KeyError, match="nope"):
        iterate.apply_overrides(p, ["nope.x=1"])
