"""Changing n_clusters or features.kind re-runs fit-kmeans and assign-labels, never prepare-audio."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
import yaml

from tests.conftest import corrupt_cache_objects, linked_to_cache
from tests.stages.conftest import REPO, write_params

AUDIO_LABEL_STAGES = ("index-members", "prepare-audio", "fit-kmeans", "assign-labels")


def dvc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    venv_bin = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": f"{venv_bin}:{os.environ['PATH']}", "PYTHONPATH": str(cwd),
           "DVC_NO_ANALYTICS": "1", "UPS_PROGRESS": "0"}
    res = subprocess.run([str(Path(venv_bin) / "dvc"), *args], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stdout + res.stderr
    return res


def stat_tree(root: Path) -> dict[str, tuple[int, int]]:
    return {p.relative_to(root).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture
def project(corpus, tmp_path, tiny_hubert_dir):
    shutil.copytree(REPO / "ups", tmp_path / "ups", ignore=shutil.ignore_patterns("__pycache__"))
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump(
        {"stages": {k: stages[k] for k in AUDIO_LABEL_STAGES}}, sort_keys=False))
    write_params(tmp_path / "params.yaml", corpus / "sample",
                 features={"hubert_model": str(tiny_hubert_dir), "layer": 1, "device": "cpu"})
    (tmp_path / "data" / "select").mkdir(parents=True)
    shutil.copy(corpus / "chunks.parquet", tmp_path / "data" / "select" / "chunks.parquet")
    (tmp_path / "data" / "meta").mkdir(parents=True)  # fetch-meta's record (a local mirror)
    (tmp_path / "data" / "meta" / "fetch_meta.json").write_text(
        '{"dataset": {"source": "local", "local_root": "%s"}}\n' % (corpus / "sample"))
    dvc("init", "--no-scm", "-q", cwd=tmp_path)
    dvc("config", "cache.type", "hardlink,symlink", cwd=tmp_path)  # as the repo's .dvc/config
    return tmp_path


@pytest.fixture(scope="module")
def tiny_hubert_dir(tmp_path_factory):
    from ups.tiny_model import write_tiny_hubert

    return write_tiny_hubert(tmp_path_factory.mktemp("hubert_dvc"), seed=0, hidden_size=16,
                             num_hidden_layers=1, intermediate_size=32, conv_dim=[8] * 7)


def changed_stages(cwd: Path) -> set[str]:
    return set(orjson.loads(dvc("status", "--json", cwd=cwd).stdout or "{}"))


def set_param(cwd: Path, section: str, key: str, value) -> None:
    p = cwd / "params.yaml"
    params = yaml.safe_load(p.read_text())
    params[section][key] = value
    p.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.mark.slow
def test_reclustering_does_not_redecode(project):
    first = dvc("repro", cwd=project).stdout
    for stage in AUDIO_LABEL_STAGES:
        assert f"Running stage '{stage}'" in first
    assert changed_stages(project) == set()
    audio = stat_tree(project / "data" / "audio") | stat_tree(project / "data" / "features")
    labels_before = (project / "data/labels/train/labels.npy").read_bytes()

    set_param(project, "kmeans", "n_clusters", 5)
    # dvc status lists stages whose own deps changed; assign-labels follows once model.npz does
    assert changed_stages(project) == {"fit-kmeans"}
    out = dvc("repro", cwd=project).stdout
    assert "Running stage 'prepare-audio'" not in out
    assert "Running stage 'fit-kmeans'" in out and "Running stage 'assign-labels'" in out
    assert stat_tree(project / "data" / "audio") | stat_tree(project / "data" / "features") == audio
    assert (project / "data/labels/train/labels.npy").read_bytes() != labels_before

    set_param(project, "features", "kind", "hubert")
    assert changed_stages(project) == {"fit-kmeans", "assign-labels"}
    out = dvc("repro", cwd=project).stdout
    assert "Running stage 'prepare-audio'" not in out and "Running stage 'assign-labels'" in out
    assert stat_tree(project / "data" / "audio") | stat_tree(project / "data" / "features") == audio
    report = orjson.loads((project / "data/labels/report.json").read_bytes())
    assert report["features_kind"] == "hubert" and report["n_clusters"] == 5
    # assign-labels re-ran twice over its persisted, cache-linked outputs (DVC unprotects them
    # first): no cache object was written through a link, and the new outputs are links again.
    assert corrupt_cache_objects(project) == []
    outs = [p for d in ("data/audio", "data/features", "data/labels") for p in (project / d).rglob("*")
            if p.is_file()]
    assert outs and all(linked_to_cache(project, p) for p in outs)

    # prepare-audio re-run over its linked, persisted outputs (a code dep changed): every tar is
    # done already, so nothing is rewritten and nothing downstream re-runs; links and cache intact.
    audio_bytes = {k: (project / "data" / k).read_bytes() for k in stat_tree(project / "data")
                   if k.startswith(("audio/", "features/"))}
    with (project / "ups" / "tar_reader.py").open("a") as fh:  # prepare-audio only
        fh.write("# edited\n")
    out = dvc("repro", cwd=project).stdout
    assert "Running stage 'prepare-audio'" in out and "Running stage 'fit-kmeans'" not in out, out
    assert {k: (project / "data" / k).read_bytes() for k in audio_bytes} == audio_bytes
    assert corrupt_cache_objects(project) == []
    assert all(linked_to_cache(project, p) for p in outs)
