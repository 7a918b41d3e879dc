"""`ups remote-check` and `make pull`: a remote that cannot serve a pull is an error, never
"Everything is up to date" with exit 0 (what `dvc pull --allow-missing` says about a missing one)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from ups import cli, remote

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


@pytest.fixture
def project(tmp_path: Path) -> Path:
    from dvc.repo import Repo

    root = tmp_path / "proj"
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    return root


def _set_remote(root: Path, url: str) -> None:
    (root / ".dvc/config").write_text(
        f"[core]\n    no_scm = True\n    remote = box\n['remote \"box\"']\n    url = {url}\n")


def _check(root: Path, capfd: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(["remote-check", "--repo", str(root)])
    out, err = capfd.readouterr()
    return rc, out, err


def test_no_default_remote(project: Path, capfd: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _check(project, capfd)
    assert rc == 1 and "no default DVC remote" in err and "dvc remote add -d" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_missing_then_empty_then_filled_local_remote(project: Path, tmp_path: Path,
                                                     capfd: pytest.CaptureFixture[str]) -> None:
    _set_remote(project, "../../store")  # relative to .dvc/: <tmp>/store
    store = tmp_path / "store"
    rc, _, err = _check(project, capfd)
    assert rc == 1 and f"'box' is {store}, which does not exist" in err
    assert "dvc remote modify --local box url" in err
    store.mkdir()
    rc, _, err = _check(project, capfd)
    assert rc == 1 and "holds no data" in err
    (store / "files/md5/ab").mkdir(parents=True)
    (store / "files/md5/ab/cdef").write_bytes(b"x")
    rc, out, _ = _check(project, capfd)
    assert rc == 0 and out.strip() == f"remote box: {store}"


def test_other_remotes_are_left_to_dvc(project: Path) -> None:
    _set_remote(project, "ssh://example.invalid/srv/ups")
    assert remote.check(project) == "remote box: ssh://example.invalid/srv/ups"
    assert remote.local_path("file:///srv/x") == Path("/srv/x")
    assert remote.local_path("s3://bucket/x") is None


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
def test_make_pull_from_an_unreachable_remote_fails(tmp_path: Path) -> None:
    """A project with data to pull and an SSH remote nobody answers: make pull exits non-zero."""
    root = tmp_path / "proj"
    root.mkdir()
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)}
    shutil.copy2(REPO / "Makefile", root / "Makefile")
    dvc = str(VENV / "bin" / "dvc")
    subprocess.run([dvc, "init", "--no-scm", "-q"], cwd=root, env=env, check=True, timeout=120)
    (root / "data.txt").write_text("artifact\n")
    subprocess.run([dvc, "add", "-q", "data.txt"], cwd=root, env=env, check=True, timeout=120)
    shutil.rmtree(root / ".dvc/cache")
    (root / "data.txt").unlink()
    subprocess.run([dvc, "remote", "add", "-d", "box", f"ssh://127.0.0.1:{_closed_port()}/x"],
                   cwd=root, env=env, check=True, timeout=120)
    res = subprocess.run(["make", "--no-print-directory", "pull", f"VENV={VENV}", "-o",
                          f"{VENV}/.installed"], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode != 0, res.stdout + res.stderr
    assert "failed to connect to ssh" in res.stderr, res.stderr
    assert not (root / "data.txt").exists()
