"""A DVC SSH remote for real: an SFTP server on 127.0.0.1, push, wipe, pull, compare bytes.

The server is `tests/ssh_server.py` (asyncssh, a pinned Python package), so the test needs no
OpenSSH server, root, or `ssh-keygen`: it runs on any machine `make test` runs on. Keys are
generated there; the key path goes to `.dvc/config.local` (the untracked, per-machine file) and
never to `.dvc/config`. The artifacts come from the `artifacts` fixture, a small DVC project (a
file, a directory, a tar shard, an intermediate output marked `push: false`), and from the demo
pipeline's real outputs (`demo_run`).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.ssh_server import SftpServer, SshServer

CMD_TIMEOUT_S = 120


@dataclass(frozen=True)
class Project:
    root: Path
    outputs: list[str]  # pushed and pulled back
    not_pushed: list[str]  # outputs marked `push: false`, rebuilt by `dvc repro`
    env: dict[str, str]


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[SshServer]:
    with SftpServer(tmp_path / "ssh-keys") as server:
        yield server


def _run(args: list[str], cwd: Path, env: dict[str, str]) -> str:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    assert res.returncode == 0, f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res.stdout


def dvc(project: Project, *args: str) -> str:
    return _run([sys.executable, "-m", "dvc", *args], project.root, project.env)


def _shard(path: Path, n: int) -> None:
    """A small WebDataset-like tar: n samples of pcm bytes + json."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w") as tf:
        for i in range(n):
            for ext, data in (("pcm.npy", os.urandom(3000 + i)), ("json", b'{"i": %d}' % i)):
                info = tarfile.TarInfo(f"{i:09d}.{ext}")
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))


@pytest.fixture
def artifacts(tmp_path: Path) -> Project:
    """A git + DVC project whose pipeline produced a file, a directory of shards and an intermediate."""
    root = tmp_path / "proj"
    root.mkdir()
    home = tmp_path / "home"  # no user-wide git or DVC config leaks in
    home.mkdir()
    env = dict(os.environ, HOME=str(home), DVC_NO_ANALYTICS="1", GIT_AUTHOR_NAME="t",
               GIT_AUTHOR_EMAIL="t@example.invalid", GIT_COMMITTER_NAME="t",
               GIT_COMMITTER_EMAIL="t@example.invalid")
    project = Project(root, ["data/meta.jsonl", "data/shards", "data/labels"], ["data/features"], env)
    _run(["git", "init", "-q"], root, env)
    dvc(project, "init", "-q")
    (root / "data").mkdir()
    (root / "data/meta.jsonl").write_text("".join(f'{{"k": {i}}}\n' for i in range(200)))
    _shard(root / "data/shards/000001-000.tar", 5)
    _shard(root / "data/shards/000001-001.tar", 3)
    (root / "data/shards/sub").mkdir()
    (root / "data/shards/sub/empty-marker.json").write_text("{}\n")
    # An intermediate (features) that need not be pushed, and a stage that reads it.
    (root / "dvc.yaml").write_text(
        "stages:\n"
        "  features:\n"
        "    cmd: mkdir -p data/features && tac data/meta.jsonl > data/features/f.bin\n"
        "    deps: [data/meta.jsonl]\n"
        "    outs:\n"
        "      - data/features:\n"
        "          push: false\n"
        "  labels:\n"
        "    cmd: mkdir -p data/labels && sha256sum data/features/f.bin > data/labels/l.txt\n"
        "    deps: [data/features]\n"
        "    outs: [data/labels]\n"
    )
    dvc(project, "add", "-q", "data/meta.jsonl", "data/shards")
    dvc(project, "repro", "-q")
    _run(["git", "add", "-A"], root, env)
    _run(["git", "commit", "-qm", "artifacts"], root, env)
    return project


def _digests(root: Path, rel: str) -> dict[str, str]:
    p = root / rel
    files = [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file())
    return {str(f.relative_to(root)): hashlib.sha256(f.read_bytes()).hexdigest() for f in files}


@pytest.mark.slow
def test_push_wipe_pull_over_ssh(sshd: SshServer, artifacts: Project, tmp_path: Path) -> None:
    p = artifacts
    remote_dir = tmp_path / "remote-store"
    remote_dir.mkdir()
    dvc(p, "remote", "add", "-d", "box", f"ssh://{sshd.host}:{sshd.port}{remote_dir}")
    dvc(p, "remote", "modify", "--local", "box", "user", sshd.user)
    dvc(p, "remote", "modify", "--local", "box", "keyfile", str(sshd.client_key))
    # Credentials live in the untracked config.local, not in the committed config.
    assert str(sshd.client_key) not in (p.root / ".dvc/config").read_text()
    assert str(sshd.client_key) in (p.root / ".dvc/config.local").read_text()
    assert "config.local" in (p.root / ".dvc/.gitignore").read_text()
    _run(["git", "add", "-A"], p.root, p.env)
    assert _run(["git", "diff", "--cached", "--name-only"], p.root, p.env).split() == [".dvc/config"]
    _run(["git", "commit", "-qm", "remote"], p.root, p.env)

    before = {k: v for rel in p.outputs + p.not_pushed for k, v in _digests(p.root, rel).items()}
    dvc(p, "push", "-j", "2")
    stored = [f for f in remote_dir.rglob("*") if f.is_file()]
    assert stored, "push wrote nothing to the remote"
    feature_md5 = hashlib.md5((p.root / "data/features/f.bin").read_bytes()).hexdigest()
    assert not (remote_dir / "files/md5" / feature_md5[:2] / feature_md5[2:]).exists(), \
        "an output marked push: false was pushed"
    cloud = dvc(p, "status", "-c").lower()
    assert "up to date" in cloud or "in sync" in cloud, cloud

    shutil.rmtree(p.root / ".dvc/cache")
    for rel in p.outputs + p.not_pushed:
        path = p.root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()

    # `--allow-missing`: the push: false intermediate is not on the remote (plain `dvc pull` exits 1
    # on it); `dvc repro` rebuilds it, and what depends on it is unchanged, so it is not re-run.
    dvc(p, "pull", "--allow-missing", "-j", "2")
    for rel in p.outputs:
        assert (p.root / rel).exists(), f"{rel} was not pulled"
    for rel in p.not_pushed:
        assert not (p.root / rel).exists(), f"{rel} (push: false) came back from the remote"
    repro = dvc(p, "repro")
    assert "Running stage 'features'" in repro and "Running stage 'labels'" not in repro, repro
    after = {k: v for rel in p.outputs + p.not_pushed for k, v in _digests(p.root, rel).items()}
    assert after == before
    status = dvc(p, "status")
    assert "up to date" in status.lower(), status
    git_status = _run(["git", "status", "--porcelain"], p.root, p.env)
    assert git_status.strip() == "", f"pull/repro changed tracked files:\n{git_status}"


def _cached_outs(root: Path) -> list[str]:
    """Every `outs:` path of the project's dvc.yaml (metrics and plots are not cached)."""
    import yaml

    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    paths = []
    for stage in stages.values():
        for out in stage.get("outs", []):
            paths.append(out if isinstance(out, str) else next(iter(out)))
    return paths


@pytest.mark.slow
def test_demo_artifacts_push_wipe_pull_over_ssh(sshd: SshServer, demo_run, tmp_path: Path) -> None:
    """The demo pipeline's real outputs travel through the SSH remote and come back identical."""
    src, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    root = tmp_path / "demo"
    shutil.copytree(src, root, symlinks=True)
    home = tmp_path / "home"
    home.mkdir()
    p = Project(root, _cached_outs(root), [], dict(os.environ, HOME=str(home), DVC_NO_ANALYTICS="1"))
    remote_dir = tmp_path / "remote-store"
    remote_dir.mkdir()
    dvc(p, "remote", "add", "-d", "box", f"ssh://{sshd.host}:{sshd.port}{remote_dir}")
    dvc(p, "remote", "modify", "--local", "box", "user", sshd.user)
    dvc(p, "remote", "modify", "--local", "box", "keyfile", str(sshd.client_key))
    assert str(sshd.client_key) not in (root / ".dvc/config").read_text()
    assert {"data/audio", "data/labels", "models/hubert-cpt"} <= set(p.outputs)

    before = {k: v for rel in p.outputs for k, v in _digests(root, rel).items()}
    dvc(p, "push", "-j", "2")
    shutil.rmtree(root / ".dvc/cache")
    for rel in p.outputs:
        path = root / rel
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    dvc(p, "pull", "-j", "2")
    after = {k: v for rel in p.outputs for k, v in _digests(root, rel).items()}
    assert after == before
    status = dvc(p, "status")
    assert "up to date" in status.lower(), status
