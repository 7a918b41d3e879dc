"""The Makefile's command lines (`make -n`): VENV, ARGS, the fallback git identity; and .ci/run.

`tests/test_sharing.py` runs these targets for real; here each rule is checked on its own, fast.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent


def _env(tmp_path: Path, gitconfig: str | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_"))}
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    glob = "/dev/null"
    if gitconfig is not None:
        (home / "gitconfig").write_text(gitconfig)
        glob = str(home / "gitconfig")
    return {**env, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": glob}


def _make(*args: str, env: dict[str, str], cwd: Path = REPO) -> str:
    res = subprocess.run(["make", "--no-print-directory", "-f", str(REPO / "Makefile"), "-o",
                          f"{VENV}/.installed", f"VENV={VENV}", *args],
                         cwd=cwd, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stdout + res.stderr
    return res.stdout


def test_an_absolute_venv_comes_first_on_path(tmp_path: Path) -> None:
    for venv in (str(VENV), ".venv"):
        out = subprocess.run(["make", "--no-print-directory", f"VENV={venv}",
                              "--eval", "_path:\n\t@echo \"$$PATH\"", "_path"],
                             cwd=REPO, env=_env(tmp_path), capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        first = out.stdout.split(":")[0]
        assert first == str((REPO / venv).resolve() / "bin") if venv == ".venv" else f"{venv}/bin"
        assert Path(first, "python").exists()


def _train_cmd(env: dict[str, str], *args: str, cwd: Path = REPO) -> list[str]:
    lines = [ln for ln in _make("-n", "train", *args, env=env, cwd=cwd).splitlines() if "exp run" in ln]
    assert len(lines) == 1, lines
    return shlex.split(lines[0])


def test_train_passes_hours_gpus_and_args(tmp_path: Path) -> None:
    cmd = _train_cmd(_env(tmp_path, "[user]\n\tname = A\n\temail = a@b.c\n"), "HOURS=7", "GPUS=2",
                     "ARGS=-S kmeans.n_clusters=500 -S features.kind=hubert")
    # train.nodes=1: a one-node run even where an earlier `make train NODES=N` left nodes: N
    assert cmd == [f"{VENV}/bin/dvc", "exp", "run", "-S", "select.hours=7", "-S", "train.gpus=2",
                   "-S", "train.nodes=1", "-S", "kmeans.n_clusters=500", "-S", "features.kind=hubert"]


@pytest.mark.parametrize(("gitconfig", "identity"), [
    (None, {"GIT_AUTHOR_NAME": "ups", "GIT_AUTHOR_EMAIL": "ups@localhost.invalid",
            "GIT_COMMITTER_NAME": "ups", "GIT_COMMITTER_EMAIL": "ups@localhost.invalid"}),
    ("[user]\n\temail = me@site.org\n", {
        "GIT_AUTHOR_NAME": "ups", "GIT_AUTHOR_EMAIL": "me@site.org",
        "GIT_COMMITTER_NAME": "ups", "GIT_COMMITTER_EMAIL": "me@site.org"}),
    ("[user]\n\tname = Me\n\temail = me@site.org\n", {}),  # configured: nothing is added
])
def test_fallback_identity_only_where_git_has_none(tmp_path: Path, gitconfig: str | None,
                                                   identity: dict[str, str]) -> None:
    env = _env(tmp_path, gitconfig)
    cmd = _train_cmd(env)
    assigned = dict(w.split("=", 1) for w in cmd[:cmd.index(f"{VENV}/bin/dvc")])
    assert assigned == identity
    if not gitconfig:  # what the environment gives wins over the fallback
        env.update(GIT_AUTHOR_NAME="Env", GIT_AUTHOR_EMAIL="env@site.org")
        cmd = _train_cmd(env)
        assigned = dict(w.split("=", 1) for w in cmd[:cmd.index(f"{VENV}/bin/dvc")])
        assert assigned == {**identity, "GIT_AUTHOR_NAME": "Env", "GIT_AUTHOR_EMAIL": "env@site.org"}


def test_docker_train_passes_args(tmp_path: Path) -> None:
    out = _make("docker-train", "DRY=1", "ARGS=-S kmeans.n_clusters=50", env=_env(tmp_path))
    assert out.strip().splitlines()[-1].endswith(
        "dvc exp run -S select.hours=100 -S train.gpus=1 -S train.nodes=1 -S kmeans.n_clusters=50")


def test_ci_runs_make_test_and_installs_nothing_for_it() -> None:
    """.ci/run installs nothing before `make test` (no package manager, no sudo): the suite runs
    as a user would run it. Only `make test-cluster`, after it, installs Slurm (root)."""
    lines = [ln.strip() for ln in (REPO / ".ci/run").read_text().splitlines()]
    commands = [ln for ln in lines if ln and not ln.startswith("#")]
    i = commands.index("make test")
    for ln in commands[:i]:
        assert ln.split()[0] in ("set", "cd", "export"), ln
    assert all(ln.startswith("make ") for ln in commands[i:]), commands[i:]


def test_help_lists_every_documented_target(tmp_path: Path) -> None:
    import re

    documented = re.findall(r"^([\w-]+):[^\n]*## ", (REPO / "Makefile").read_text(), flags=re.M)
    listed = [line.split()[0] for line in _make("help", env=_env(tmp_path)).splitlines() if line.strip()]
    assert {"test", "test-e2e", "test-kernels", "test-cluster"} <= set(documented)
    assert sorted(listed) == sorted(set(documented))
