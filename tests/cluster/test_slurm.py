"""Both sbatch scripts on a real Slurm (tests/slurm_cluster.py), on the bundled sample corpus.

`make test-cluster` (installs slurm-wlm and munge: root). The sample pipeline with the demo's
tiny model runs twice: once as one process (`dvc repro train`, the reference), once on the
local 2-node Slurm exactly as a user would: scripts/slurm/prepare.sbatch (job arrays of 2 tasks,
set in the project's conf/slurm.env, and the finishing jobs it submits), then
scripts/slurm/train.sbatch (2 nodes x 1 CPU process, gloo), each copied with the partition set.
UPS_EXEC points at a wrapper that logs every command the scripts run, and where.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from tests.slurm_cluster import LocalSlurm, wait_for_jobs
from tests.stages.conftest import tree_bytes
from tests.train_fixtures import assert_same_training
from ups import demo
from ups.slurm import set_params
from ups.tiny_model import write_tiny_hubert
from ups.train_state import latest_state

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)
# Both runs: fewer epochs than the demo, more log points to compare.
COMMON = ["train.epochs=2", "train.log_every_steps=2", "train.valid_every_steps=6"]
WRAPPER = """#!/bin/bash
echo "node=${SLURMD_NODENAME:-none} job=${SLURM_JOB_ID:-} task=${SLURM_ARRAY_TASK_ID:-} \
step=${SLURM_STEP_ID:-} | $*" >> "$UPS_TEST_LOG"
exec "$@"
"""


@dataclass
class Runs:
    ref: Path
    cluster: Path
    log: list[str]
    prepare_out: str
    train_out: str


def _env(project: Path) -> dict[str, str]:
    return {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(project),
            "DVC_NO_ANALYTICS": "1", "OMP_NUM_THREADS": "1"}


def _edited(src: str, dst: Path, edits: list[tuple[str, str]]) -> Path:
    """The script with the user's edits: each `old` must be there exactly once."""
    text = (REPO / "scripts" / "slurm" / src).read_text()
    for old, new in edits:
        assert text.count(old) == 1, (src, old)
        text = text.replace(old, new)
    dst.write_text(text)
    return dst


@pytest.fixture(scope="module")
def slurm():
    with LocalSlurm() as s:
        yield s


@pytest.fixture(scope="module")
def runs(slurm, tmp_path_factory) -> Runs:
    root = tmp_path_factory.mktemp("cluster")
    # The demo's tiny model, written once: with `train.init: tiny` every rank writes it into the
    # state directory at once (ups/stages/train.py), which races on a shared file system.
    init = f"train.init={write_tiny_hubert(root / 'tiny-init', seed=0)}"
    ref = demo.prepare(root / "ref")
    set_params(ref / "params.yaml", [*COMMON, init, "train.grad_accum=2", "train.num_workers=2"])
    res = subprocess.run([sys.executable, "-m", "dvc", "repro", "train"], cwd=ref, env=_env(ref),
                         capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stderr[-4000:]

    cluster = demo.prepare(root / "cluster")
    set_params(cluster / "params.yaml", [*COMMON, init])
    wrapper = root / "exec.sh"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    log = root / "commands.log"
    env = {**_env(cluster), "UPS_EXEC": str(wrapper), "UPS_TEST_LOG": str(log)}
    prepare = _edited("prepare.sbatch", root / "prepare.sbatch", [
        ("#SBATCH --partition=cpu\n", "#SBATCH --partition=debug\n")])
    (cluster / "conf").mkdir()
    (cluster / "conf/slurm.env").write_text("UPS_ARRAY_TASKS=2\nUPS_ARRAY_CPUS=1\n")  # the site's settings
    (cluster / "logs/slurm").mkdir(parents=True)
    train = _edited("train.sbatch", root / "train.sbatch", [
        ("#SBATCH --partition=gpu\n", "#SBATCH --partition=debug\n"),
        ("#SBATCH --gpus-per-node=8\n", "")])  # a CPU cluster: one process per node
    p = slurm.sbatch(["--cpus-per-task=1", str(prepare)], cwd=cluster, env=env)
    if p.returncode == 0:
        wait_for_jobs(slurm, "ups-prepare", timeout_s=1800)  # the arrays and finishing jobs it submitted
    prepare_out = "\n".join(f.read_text() for f in sorted(cluster.glob("logs/slurm/*.out")))
    if p.returncode:
        print(prepare_out, slurm.logs())  # the whole job logs: pytest shows them with the failure
    assert p.returncode == 0, p.stderr
    last = (cluster / "logs/slurm/prepare.last").read_text().strip()
    state = subprocess.run(["scontrol", "show", "job", "-o", last], env=slurm.env, capture_output=True,
                           text=True, timeout=30).stdout
    assert "JobState=COMPLETED" in state, prepare_out
    t = slurm.sbatch(["--cpus-per-task=1", str(train), "train.grad_accum=1", "train.num_workers=1"],
                     cwd=cluster, env=env)
    train_out = "\n".join(f.read_text() for f in sorted(cluster.glob("logs/slurm/ups-train-*.out")))
    if t.returncode:
        print(train_out, slurm.logs())
    assert t.returncode == 0, t.stderr
    return Runs(ref, cluster, log.read_text().splitlines(), prepare_out, train_out)


def _commands(runs: Runs, needle: str) -> list[str]:
    return [line for line in runs.log if needle in line.split("|", 1)[1]]


def test_the_arrays_split_the_data_stages_into_two_tasks(runs):
    for stage in ("prepare-audio", "assign-labels"):
        tasks = _commands(runs, f"run-stage {stage}")
        # two array tasks, then the final run in the driver (no array task)
        assert sorted(line.split()[2] for line in tasks) == ["task=", "task=0", "task=1"], tasks
    assert "prepare-audio: array task 1/2 done" in runs.prepare_out


def test_the_array_stages_are_byte_identical_to_one_machine(runs):
    for rel in ("data/audio", "data/features", "data/labels"):  # reports included
        assert tree_bytes(runs.cluster / rel) == tree_bytes(runs.ref / rel), rel
    for rel in ("data/select", "data/kmeans"):  # one process either way; their reports hold timings
        a, b = tree_bytes(runs.cluster / rel), tree_bytes(runs.ref / rel)
        ra, rb = (json.loads(x.pop("report.json")) for x in (a, b))
        assert a == b and _untimed(ra) == _untimed(rb), rel


def _untimed(report: dict) -> dict:
    return {k: v for k, v in report.items() if not (k.endswith("seconds") or k == "elapsed_s")}


def test_the_train_job_runs_one_task_on_each_of_two_nodes(runs):
    train = _commands(runs, "run-stage train")
    assert sorted(line.split()[0] for line in train) == ["node=n1", "node=n2"]
    assert all("step=0" in line for line in train)  # one srun step, two tasks
    report = json.loads((runs.cluster / "models/hubert-cpt/training.json").read_text())
    assert report["world_size"] == 2 and report["config"]["nodes"] == 2


def test_training_matches_one_process_at_the_same_global_batch(runs):
    def history(project: Path) -> list[dict]:
        return json.loads((latest_state(project / "data/train/state") / "history.json").read_text())

    assert_same_training(history(runs.ref), history(runs.cluster), runs.ref / "models/hubert-cpt",
                         runs.cluster / "models/hubert-cpt")


def test_dvc_ran_in_the_batch_steps_only_and_dvc_lock_records_the_run(runs):
    dvc = _commands(runs, " dvc ")
    assert len(dvc) == 9 and all(line.split()[2:4] == ["task=", "step="] for line in dvc), dvc
    lock = yaml.safe_load((runs.cluster / "dvc.lock").read_text())["stages"]
    assert lock["train"]["params"]["params.yaml"]["train"]["nodes"] == 2
    assert lock["train"]["params"]["params.yaml"]["train"]["grad_accum"] == 1
    status = subprocess.run([sys.executable, "-m", "dvc", "status", "train"], cwd=runs.cluster,
                            env=_env(runs.cluster), capture_output=True, text=True, timeout=300)
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout + status.stderr


def test_a_job_that_asks_for_gpus_and_finds_none_stops_with_the_reason(runs, slurm, tmp_path):
    project = tmp_path / "gpu"
    shutil.copytree(runs.cluster, project, symlinks=True)
    for old in project.glob("logs/slurm/*.out"):
        old.unlink()
    script = _edited("train.sbatch", tmp_path / "train.sbatch", [
        ("#SBATCH --partition=gpu\n", "#SBATCH --partition=debug\n")])  # --gpus-per-node kept
    # one "GPU" per node instead of the script's 8 keeps it to two processes on this machine
    res = slurm.sbatch(["--cpus-per-task=1", "--gpus-per-node=1", str(script)], cwd=project,
                       env=_env(project), timeout_s=600)
    out = "\n".join(f.read_text() for f in project.glob("logs/slurm/ups-train-*.out"))
    assert res.returncode != 0, out[-3000:]
    assert "train.device is cuda but CUDA is not usable" in out, out[-3000:]
    params = yaml.safe_load((project / "params.yaml").read_text())["train"]
    # the job insisted on CUDA (UPS_TRAIN_DEVICE) without changing train.device
    assert (params["device"], params["gpus"], params["nodes"]) == ("cpu", 1, 2)
    # nothing was recorded: dvc.lock still holds the CPU run
    assert yaml.safe_load((project / "dvc.lock").read_text())["stages"]["train"]["params"]["params.yaml"][
        "train"]["device"] == "cpu"
