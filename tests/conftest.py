"""Shared fixtures: paths of the repo and the bundled sample corpus, small tar/JSONL factories."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SAMPLE = REPO / "sample"


@pytest.fixture
def repo_root() -> Path:
    return REPO


@pytest.fixture
def sample_root() -> Path:
    return SAMPLE


def make_tar(path: Path, members: dict[str, bytes], *, links: dict[str, str] | None = None) -> Path:
    """Write a tar with the given regular members (and optional symlinks name -> target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for name, target in (links or {}).items():
            info = tarfile.TarInfo(name)
            info.type = tarfile.SYMTYPE
            info.linkname = target
            tf.addfile(info)
    return path


@pytest.fixture
def tar_factory(tmp_path: Path):
    def factory(name: str, members: dict[str, bytes], **kw) -> Path:
        return make_tar(tmp_path / name, members, **kw)

    return factory


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """`ups demo` run once per session into a tmp dir: (run_dir, completed process)."""
    import subprocess
    import sys

    run_dir = tmp_path_factory.mktemp("demo") / "demo"
    proc = subprocess.run([sys.executable, "-m", "ups", "demo", "--run-dir", str(run_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    return run_dir, proc
