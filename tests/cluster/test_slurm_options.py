"""What scripts/slurm/*.sbatch ask of Slurm and read from it, on a real local Slurm (tests/slurm_cluster.py).

No pipeline runs here: UPS_EXEC points at a wrapper that runs `python -m ups.slurm gpus` for
real and stops the script at its first `set-params`, logging what it was given. So each way of
asking for GPUs, and each site option, is checked in seconds against what Slurm itself sets.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from tests.slurm_cluster import LocalSlurm

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
BIN = str(Path(sys.executable).parent)
WRAPPER = """#!/bin/bash
if [[ "$*" == *"ups.slurm set-params"* ]]; then
  echo "device=${UPS_TRAIN_DEVICE:-} | $*" >> "$UPS_TEST_LOG"
  exit 3
fi
exec "$@"
"""


@pytest.fixture(scope="module")
def slurm():
    with LocalSlurm() as s:
        yield s


def _env(tmp_path: Path) -> dict[str, str]:
    wrapper = tmp_path / "exec.sh"
    wrapper.write_text(WRAPPER)
    wrapper.chmod(0o755)
    return {"PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(REPO), "UPS_EXEC": str(wrapper),
            "UPS_TEST_LOG": str(tmp_path / "commands.log")}


def _script(tmp_path: Path, drop_gpus_line: bool) -> Path:
    text = (REPO / "scripts/slurm/train.sbatch").read_text().replace("#SBATCH --partition=gpu\n",
                                                                    "#SBATCH --partition=debug\n")
    if drop_gpus_line:
        assert text.count("#SBATCH --gpus-per-node=8\n") == 1
        text = text.replace("#SBATCH --gpus-per-node=8\n", "")
    path = tmp_path / "train.sbatch"
    path.write_text(text)
    (tmp_path / "logs/slurm").mkdir(parents=True, exist_ok=True)  # tracked in a checkout
    return path


@pytest.mark.parametrize(("ask", "shape", "device"), [
    ([], "train.nodes=2 train.gpus=8", "cuda"),  # the script's own --gpus-per-node=8
    (["--gpus-per-node=2"], "train.nodes=2 train.gpus=2", "cuda"),
    (["--gres=gpu:2"], "train.nodes=2 train.gpus=2", "cuda"),
    (["--nodes=1", "--gpus=3"], "train.nodes=1 train.gpus=3", "cuda"),
    (["--no-gpus"], "train.nodes=2 train.gpus=1", ""),  # a CPU cluster: one process per node
])
def test_train_gets_one_process_per_gpu_however_the_job_asked(slurm, tmp_path, ask, shape, device):
    script = _script(tmp_path, drop_gpus_line=bool(ask))
    ask = [a for a in ask if a != "--no-gpus"]
    res = slurm.sbatch(["--cpus-per-task=1", *ask, str(script), "train.epochs=1"], cwd=tmp_path,
                       env=_env(tmp_path), timeout_s=300)
    log = (tmp_path / "commands.log").read_text().splitlines()
    assert res.returncode == 3 and len(log) == 1, (res.stderr, log)  # stopped at set-params
    dev, _, cmd = log[0].partition(" | ")
    assert dev == f"device={device}"
    assert cmd.endswith(f"python -m ups.slurm set-params {shape} train.epochs=1"), cmd


PREPARE_WRAPPER = """#!/bin/bash
record() {
  scontrol show job -o "$SLURM_JOB_ID" | tr ' ' '\\n' |
    grep -E '^(Account|TimeLimit|MinMemoryNode|ArrayTaskThrottle|NumCPUs)=' | sort -u | paste -sd' '
}
case "$*" in
  *"ups.slurm slurm-options"*) exec "$@" ;;
  *"ups.slurm run-stage"*)
    stage="${*: -1}"
    echo "$stage task=${SLURM_ARRAY_TASK_ID:-} $(record)" >> "$UPS_TEST_LOG"
    [[ "$stage/${SLURM_ARRAY_TASK_ID:-}" != "${UPS_TEST_FAIL:-}" ]] || exit 7
    exit 0 ;;
  *"dvc status"*) exit 1 ;;  # never up to date
  *dvc*) echo "$* task=${SLURM_ARRAY_TASK_ID:-}" >> "$UPS_TEST_LOG"; exit 0 ;;
esac
exec "$@"
"""
CONF = "UPS_SLURM_PARTITION=debug\nUPS_ARRAY_TASKS=2\nUPS_ARRAY_THROTTLE=1\nUPS_ARRAY_CPUS=1\n"


def _project(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    import shutil

    project = tmp_path / "project"
    shutil.copytree(REPO / "scripts", project / "scripts")
    (project / "conf").mkdir()
    (project / "conf/slurm.env").write_text(CONF)
    wrapper = tmp_path / "exec.sh"
    wrapper.write_text(PREPARE_WRAPPER)
    wrapper.chmod(0o755)
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(REPO),
           "UPS_EXEC": str(wrapper), "UPS_TEST_LOG": str(tmp_path / "commands.log")}
    return project, env


def _submit(slurm, project: Path, env: dict[str, str], *args: str) -> str:
    import subprocess

    from tests.slurm_cluster import wait_for_jobs

    res = subprocess.run(["scripts/slurm/submit", *args], cwd=project, env={**slurm.env, **env},
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    wait_for_jobs(slurm, "ups-prepare")
    return "\n".join(p.read_text() for p in sorted((project / "logs/slurm").glob("*.out")))


def test_the_prepare_jobs_all_get_the_options_of_the_submission_and_the_driver_waits_for_nothing(
        slurm, tmp_path):
    project, env = _project(tmp_path)
    out = _submit(slurm, project, env, "prepare", "-A", "myproject", "--time=00:30:00", "--mem=300")
    log = (tmp_path / "commands.log").read_text().splitlines()
    runs = sorted(line for line in log if line.startswith(("prepare-audio", "assign-labels")))
    assert [r.split(" ", 2)[:2] for r in runs] == [
        ["assign-labels", "task="], ["assign-labels", "task=0"], ["assign-labels", "task=1"],
        ["prepare-audio", "task="], ["prepare-audio", "task=0"], ["prepare-audio", "task=1"]], out
    for r in runs:  # the arrays (throttled to 1 task at a time) and the finishing jobs alike
        assert all(f in r.split() for f in ("Account=myproject", "MinMemoryNode=300M", "NumCPUs=1",
                                             "TimeLimit=00:30:00")), r
        assert ("ArrayTaskThrottle=1" in r) == ("task= " not in r + " "), r
    assert [line for line in log if "dvc" in line] == [
        "dvc repro index-members task=", "dvc commit -f prepare-audio task=", "dvc repro fit-kmeans task=",
        "dvc commit -f assign-labels task="]
    last = (project / "logs/slurm/prepare.last").read_text().strip()
    assert f"the run ends with job {last}" in out


def test_a_failed_array_task_is_named_and_rerun_alone(slurm, tmp_path):
    project, env = _project(tmp_path)
    out = _submit(slurm, project, {**env, "UPS_TEST_FAIL": "prepare-audio/1"}, "prepare")
    assert ("prepare-audio: array" in out and "task(s) 1 failed or did not run" in out
            and "scripts/slurm/submit rerun prepare-audio 1" in out), out
    log = (tmp_path / "commands.log").read_text().splitlines()
    assert not [line for line in log if "commit" in line or line.startswith("assign-labels task=0")]
    (tmp_path / "commands.log").unlink()
    _submit(slurm, project, env, "rerun", "prepare-audio", "1")
    log = (tmp_path / "commands.log").read_text().splitlines()
    assert [line.split()[:2] for line in log if line.startswith("prepare-audio")] == [
        ["prepare-audio", "task=1"], ["prepare-audio", "task="]]  # task 1 alone, then the finish
    assert "dvc commit -f prepare-audio task=" in log and "dvc commit -f assign-labels task=" in log


TRAIN_WRAPPER = """#!/bin/bash
case "$*" in
  *"ups.slurm gpus"*) exec "$@" ;;
  *"run-stage train"*)  # a trainer that runs until asked to stop, then saves and exits 75
    echo "train run=${SLURM_RESTART_COUNT:-0}" >> "$UPS_TEST_LOG"
    if [[ "${SLURM_RESTART_COUNT:-0}" == 0 ]]; then
      trap '' TERM  # as the trainer: SIGTERM means save at the next logging step
      until [[ -e "$UPS_PREEMPT_FILE" ]]; do sleep 1; done
      echo "saved, exit 75" >> "$UPS_TEST_LOG"
      exit 75
    fi
    exit 0 ;;
  *) echo "$*" | cut -c1-40 >> "$UPS_TEST_LOG"; exit 0 ;;
esac
"""


def _submit_train(slurm, tmp_path: Path, *options: str) -> tuple[str, Path]:
    """Submit train.sbatch with the stand-in trainer (TRAIN_WRAPPER): (job id, command log)."""
    import subprocess

    wrapper = tmp_path / "exec.sh"
    wrapper.write_text(TRAIN_WRAPPER)
    wrapper.chmod(0o755)
    log_file = tmp_path / "commands.log"
    env = {**slurm.env, "PATH": BIN + os.pathsep + os.environ["PATH"], "PYTHONPATH": str(REPO),
           "UPS_EXEC": str(wrapper), "UPS_TEST_LOG": str(log_file)}
    res = subprocess.run([slurm.bin["sbatch"], "--parsable", "--cpus-per-task=1", *options,
                          str(_script(tmp_path, drop_gpus_line=True))],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    return res.stdout.strip().split(";")[0], log_file


def _train_until_both_nodes_run(slurm, tmp_path: Path) -> tuple[str, Path]:
    """Submit as _submit_train; return once both nodes train."""
    import time

    job, log_file = _submit_train(slurm, tmp_path)
    t0 = time.monotonic()
    while not (log_file.exists() and log_file.read_text().count("train run=0") == 2):
        assert time.monotonic() - t0 < 120, log_file.read_text() if log_file.exists() else "no log"
        time.sleep(0.5)
    return job, log_file


def _ended(slurm, tmp_path: Path, job: str, log_file: Path,
           timeout_s: float = 300) -> tuple[str, list[str], str, str]:
    """Once the job has ended for good: its record, the command log, its output, and all of them
    with the Slurm daemons' logs for a failure message."""
    import time

    from tests.slurm_cluster import wait_for_job

    record = wait_for_job(slurm, job, timeout_s=timeout_s)
    time.sleep(1)  # the batch script's last line
    log = log_file.read_text().splitlines() if log_file.exists() else []
    out = "\n".join(p.read_text() for p in (tmp_path / "logs/slurm").glob("*.out"))
    return record, log, out, f"{log}\n--- job\n{record}\n--- job output\n{out}\n{slurm.logs()}"


def test_the_time_limit_warning_makes_the_train_job_stop_and_requeue_itself(slurm, tmp_path):
    # a 2-minute limit, the warning 100 s before it: the script's own --signal, only sooner
    job, log_file = _submit_train(slurm, tmp_path, "--time=2", "--signal=B:USR1@100")
    record, log, out, why = _ended(slurm, tmp_path, job, log_file, timeout_s=600)
    trains = [line for line in log if line.startswith(("train", "saved"))]
    # one task on each of the two nodes: both stop on the warning, both run again after the requeue
    # (Slurm may send the warning as the job starts: the two nodes' lines then interleave)
    assert sorted(trains[:4]) == ["saved, exit 75"] * 2 + ["train run=0"] * 2, why
    assert trains[4:] == ["train run=1"] * 2, why
    assert "JobState=COMPLETED" in record and "Restarts=1" in record, why
    assert "state saved: requeueing job" in out, why
    assert log.count("dvc commit -f train") == 1 and log[-1] == "dvc commit -f train", why
    assert not list((tmp_path / "logs/slurm").glob("preempt-*"))


def test_scancel_stops_the_train_job_after_its_save_instead_of_requeueing_it(slurm, tmp_path):
    import subprocess

    job, log_file = _train_until_both_nodes_run(slurm, tmp_path)
    subprocess.run(["scancel", job], env=slurm.env, check=True, timeout=30)
    record, log, out, why = _ended(slurm, tmp_path, job, log_file)
    assert "JobState=CANCELLED" in record and "Restarts=0" in record, why
    assert log.count("saved, exit 75") == 2 and "train run=1" not in log, why  # saved, not rerun
    assert "dvc commit -f train" not in log, why
    assert "not requeued" in out and "requeueing" not in out, why


def test_scancel_batch_signal_usr1_saves_and_brings_the_train_job_back(slurm, tmp_path):
    """docs/clusters.md's way to make a training job save now and come back."""
    import subprocess

    job, log_file = _train_until_both_nodes_run(slurm, tmp_path)
    subprocess.run(["scancel", "--batch", "--signal=USR1", job], env=slurm.env, check=True, timeout=30)
    record, log, out, why = _ended(slurm, tmp_path, job, log_file)
    assert "JobState=COMPLETED" in record and "Restarts=1" in record, why
    trains = [line for line in log if line.startswith(("train", "saved"))]
    assert trains == ["train run=0"] * 2 + ["saved, exit 75"] * 2 + ["train run=1"] * 2, why
    assert log[-1] == "dvc commit -f train" and f"requeueing job {job}" in out, why
