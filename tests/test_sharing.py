"""The README's real-run and sharing steps, typed as the README gives them, on two "machines".

Machine A is a git repository of this project whose pipeline has run (the demo's outputs, DVC
cache and dvc.lock, on the bundled sample corpus), on an account with no git identity (empty
HOME, no system or global git config). There the README's steps are typed: an edit of params.yaml
(uncommitted changes are what make `dvc exp run` need a git identity), `make train ...
ARGS="-S ..."` (a `dvc exp run`), `make exps`, `make save`, `make push` to the default remote
(`../ups-dvc-remote`, beside the repository). The edit is `dataset.download_workers`, which no
stage depends on, so nothing is redone: pinning `dataset.revision`, the README's example, would
re-run every stage here (prepare-audio's report records the revision). Machine B is a
`git clone` of A elsewhere: `make pull` first fails on the default remote that does not exist
there, then, with the remote pointed at A's, pulls; `dvc status` is clean, `dvc repro` does
nothing, and every output is byte-identical and hard-linked to B's cache.

`make` runs with `VENV=<this venv, absolute>` and `-o <its stamp>` (never rebuild the venv the
suite runs in from a test).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ups import du

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.executable).parent.parent  # .venv/bin/python -> .venv (symlinks not resolved)
FALLBACK_EMAIL = "ups@localhost.invalid"  # the Makefile's FALLBACK_GIT_EMAIL


def user_env(home: Path) -> dict[str, str]:
    """A user without a git identity: no GIT_* identity, no global or system git config."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("GIT_AUTHOR_", "GIT_COMMITTER_", "EMAIL"))}
    home.mkdir(parents=True, exist_ok=True)
    return {**env, "HOME": str(home), "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null",
            "DVC_NO_ANALYTICS": "1", "UPS_PROGRESS": "0"}


def sh(args: list[str], cwd: Path, env: dict[str, str], ok: bool = True) -> subprocess.CompletedProcess:
    res = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    if ok:
        assert res.returncode == 0, f"{' '.join(args)} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}"
    return res


def make(target: str, *args: str, cwd: Path, env: dict[str, str], ok: bool = True):
    return sh(["make", "--no-print-directory", target, f"VENV={VENV}", "-o", f"{VENV}/.installed",
               *args], cwd, env, ok)


def digests(root: Path, rels: list[str]) -> dict[str, str]:
    out = {}
    for rel in rels:
        p = root / rel
        for f in [p] if p.is_file() else sorted(x for x in p.rglob("*") if x.is_file()):
            out[str(f.relative_to(root))] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def cached_outs(root: Path) -> list[str]:
    stages = yaml.safe_load((root / "dvc.yaml").read_text())["stages"]
    return [o if isinstance(o, str) else next(iter(o)) for s in stages.values() for o in s.get("outs", [])]


def machine_a(demo_dir: Path, root: Path, env: dict[str, str]) -> None:
    """The project in git with a finished, saved run: its outputs and cache, and its dvc.lock,
    params and metrics committed (what `make save` does after a run; an uncommitted dvc.lock
    would make the next `dvc exp run` start from a baseline without one and redo every stage)."""
    shutil.copytree(demo_dir, root, symlinks=True,
                    ignore=shutil.ignore_patterns("tmp", "config", "__pycache__", "report.html"))
    for rel in ("Makefile", "requirements.txt", "requirements-dev.txt", "pyproject.toml", ".gitignore",
                ".dvcignore", ".dvc/config", ".dvc/.gitignore"):
        shutil.copy2(REPO / rel, root / rel)
    sh(["git", "init", "-q"], root, env)
    # The copied outputs become links to the copied cache, and DVC writes its .gitignore files.
    sh([str(VENV / "bin" / "dvc"), "checkout", "--relink", "-q"], root, env)
    sh([str(VENV / "bin" / "dvc"), "commit", "-f", "-q"], root, env)
    sh(["git", "add", "-A"], root, env)
    sh(["git", "-c", "user.name=dev", "-c", "user.email=dev@example.invalid", "commit", "-qm",
        "the project and a first run"], root, env)
    assert sh(["git", "status", "--porcelain"], root, env).stdout == ""


@pytest.mark.slow
def test_readme_real_run_and_sharing_steps(demo_run, tmp_path: Path) -> None:
    src, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = tmp_path / "a" / "ups", tmp_path / "b" / "ups"
    env = user_env(tmp_path / "home")
    machine_a(src, a, env)
    assert sh(["git", "config", "user.email"], a, env, ok=False).stdout == ""  # no identity

    # README, a real run: edit params.yaml, then make train with an extra override.
    params = (a / "params.yaml").read_text()
    assert "  download_workers: 2\n" in params
    (a / "params.yaml").write_text(params.replace("  download_workers: 2\n", "  download_workers: 3\n"))
    hours = yaml.safe_load(params)["select"]["hours"]  # the demo's: the run being continued
    run = make("train", f"HOURS={hours}", "GPUS=1", "ARGS=-S prepare_audio.workers=1", cwd=a, env=env)
    log = run.stdout + run.stderr
    assert "Running stage" not in log and "Stage 'evaluate' didn't change, skipping" in log, log
    got = yaml.safe_load((a / "params.yaml").read_text())
    assert (got["select"]["hours"], got["train"]["gpus"], got["prepare_audio"]["workers"],
            got["dataset"]["download_workers"]) == (hours, 1, 1, 3)
    exp_authors = sh(["git", "log", "--all", "--format=%ae %ce"], a, env).stdout.split("\n")[0]
    assert exp_authors == f"{FALLBACK_EMAIL} {FALLBACK_EMAIL}"

    table = make("exps", cwd=a, env=env).stdout
    header = next(line for line in table.splitlines() if line.startswith("| Experiment"))
    for col in ("select.hours", "kmeans.n_clusters", "features.kind", "valid.loss",
                "probe.continued.best_accuracy", "probe.init.best_accuracy"):
        assert col in header, table
    assert "train.lr" not in header and "labels.n_languages" not in header  # compact
    workspace = next(line for line in table.splitlines() if line.startswith("| workspace"))
    cells = dict(zip([c.strip() for c in header.split("|")], [c.strip() for c in workspace.split("|")],
                     strict=True))
    assert (float(cells["select.hours"]), cells["kmeans.n_clusters"], cells["features.kind"]) == \
        (hours, "25", "mfcc")

    # README, sharing: commit what DVC tracks in git, push the artifacts.
    saved = make("save", cwd=a, env=env)
    assert "saved as" in saved.stdout, saved.stdout
    assert sh(["git", "log", "-1", "--format=%ae"], a, env).stdout.strip() == FALLBACK_EMAIL
    left = sh(["git", "status", "--porcelain"], a, env).stdout
    assert left == "", f"make save left files out:\n{left}"
    assert "nothing to save" in make("save", cwd=a, env=env).stdout
    make("push", cwd=a, env=env)
    remote = a.parent / "ups-dvc-remote"
    assert any(p.is_file() for p in remote.rglob("*")), "make push stored nothing beside the repo"

    # Machine B: git clone, make pull.
    b.parent.mkdir(parents=True)
    sh(["git", "clone", "-q", str(a), str(b)], b.parent, env)
    missing = make("pull", cwd=b, env=env, ok=False)
    assert missing.returncode != 0
    errors = [line for line in missing.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and str(b.parent / "ups-dvc-remote") in errors[0] and \
        "does not exist" in errors[0], missing.stderr
    assert "Traceback" not in missing.stderr and "up to date" not in missing.stdout
    sh([str(VENV / "bin" / "dvc"), "remote", "modify", "--local", "local", "url", str(remote)], b, env)
    make("pull", cwd=b, env=env)
    status = sh([str(VENV / "bin" / "dvc"), "status"], b, env).stdout
    assert "Data and pipelines are up to date." in status, status
    repro = make("repro", cwd=b, env=env)
    assert "Running stage" not in repro.stdout and "Data and pipelines are up to date" in repro.stdout
    assert sh(["git", "status", "--porcelain"], b, env).stdout == ""

    outs = cached_outs(a)
    assert digests(b, outs) == digests(a, outs)
    # Pulled outputs are links to B's cache: stored once, and `ups du` counts them once.
    shards = sorted((b / "data/audio").rglob("*.tar"))
    assert shards and all(s.stat().st_nlink >= 2 for s in shards)
    rows = {r.name: r for r in du.collect(b, b / "params.yaml")}
    audio = rows["prepare-audio"].apparent_bytes or 0
    assert audio > 10 * 2**20
    # Every cached output is its cache object: the total is the cache, the remote (A's, a local
    # directory) and the few files DVC keeps in git (cache: false metrics and plots), once each.
    in_git = digests(b, ["dvclive/metrics.json", "dvclive/plots/metrics", "reports/evaluate/metrics.json",
                         "reports/evaluate/probe_layers.csv"])
    in_git_bytes = sum((b / rel).stat().st_size for rel in in_git)
    total, cache = rows["total (links once)"].apparent_bytes, rows["dvc cache"].apparent_bytes
    remote_bytes = rows["remote local"].apparent_bytes
    assert total is not None and cache is not None and remote_bytes is not None
    assert total == cache + remote_bytes + in_git_bytes
    stage_bytes = sum(r.apparent_bytes or 0 for r in rows.values() if r.kind == "stage")
    assert stage_bytes + cache + remote_bytes > total + audio  # the rows overlap; the total does not
    assert "linked from the outputs" in rows["dvc cache"].note
