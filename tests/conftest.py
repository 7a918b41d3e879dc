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


def corrupt_cache_objects(dvc_root: Path) -> list[str]:
    """DVC cache objects whose bytes no longer hash to their name (written through a link)."""
    import hashlib

    bad = []
    for obj in (dvc_root / ".dvc" / "cache" / "files" / "md5").glob("*/*"):
        if obj.suffix == ".dir" or not obj.is_file():
            continue
        if hashlib.md5(obj.read_bytes()).hexdigest() != obj.parent.name + obj.name:  # noqa: S324
            bad.append(str(obj.relative_to(dvc_root)))
    return bad


def linked_to_cache(dvc_root: Path, path: Path) -> bool:
    """True when `path` is its DVC cache object: the same inode (hard link) or a symlink to it."""
    import hashlib

    md5 = hashlib.md5(path.read_bytes()).hexdigest()  # noqa: S324
    obj = dvc_root / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]
    return obj.is_file() and (path.resolve() == obj.resolve() or path.stat().st_ino == obj.stat().st_ino)
