"""scripts/slurm/train.sbatch's answer to Slurm's warning signal, whenever it comes, without a Slurm.

Slurm may send `--signal=B:USR1@T` up to a minute early, so on a short limit it can arrive while
the script is still writing the parameters or running the data stages. A bash without a trap dies
of SIGUSR1 there, and the job ends without requeueing itself. The script runs here under plain bash
with stand-ins for srun and scontrol; the commands it runs (UPS_EXEC) log what they are given and
send the signal at a chosen point. tests/cluster runs the same script on a real Slurm.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
JOB = "4242"

STUBS = {
    "srun": """#!/bin/bash
while [[ "$1" == --* ]]; do shift; done
exec "$@"
""",
    "scontrol": """#!/bin/bash
case "$1 $2" in
  "show hostnames") echo n1 ;;
  "show node") echo "NodeName=n1 NodeAddr=127.0.0.1 State=IDLE" ;;
  requeue*) echo "scontrol requeue $2" >> "$UPS_TEST_LOG" ;;
esac
""",
}

EXEC = """#!/bin/bash
step="$*"
signal() {
  if [[ "$step" == *"$UPS_TEST_SIGNAL_AT"* ]]; then kill "-$UPS_TEST_SIGNAL" "$PPID"; sleep 0.5; fi
}
case "$step" in
  *"ups.slurm gpus"*) echo 0 ;;
  *"run-stage train"*)
    echo "train" >> "$UPS_TEST_LOG"
    signal
    for _ in $(seq 20); do
      if [[ -e "$UPS_PREEMPT_FILE" ]]; then echo "saved, exit 75" >> "$UPS_TEST_LOG"; exit 75; fi
      sleep 0.1
    done
    echo "trained" >> "$UPS_TEST_LOG" ;;
  *) echo "$step" | cut -d' ' -f1-4 >> "$UPS_TEST_LOG"; signal ;;
esac
"""


def _run(tmp_path: Path, signal_at: str, signal: str = "USR1"
         ) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in {**STUBS, "exec.sh": EXEC}.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    log = tmp_path / "commands.log"
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
           "SLURM_JOB_ID": JOB, "SLURM_JOB_NUM_NODES": "1", "SLURM_JOB_NODELIST": "n1",
           "SLURM_SUBMIT_DIR": str(tmp_path), "UPS_EXEC": str(bin_dir / "exec.sh"),
           "UPS_TEST_LOG": str(log), "UPS_TEST_SIGNAL_AT": signal_at, "UPS_TEST_SIGNAL": signal}
    res = subprocess.run(["bash", str(REPO / "scripts/slurm/train.sbatch")], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    return res, log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("signal_at", ["ups.slurm set-params", "dvc repro", "run-stage train"])
def test_the_warning_stops_training_and_requeues_the_job_wherever_it_arrives(tmp_path, signal_at):
    res, log = _run(tmp_path, signal_at)
    assert res.returncode == 0, (res.returncode, res.stderr, log)
    assert log == ["python -m ups.slurm set-params", "dvc repro assign-labels", "train", "saved, exit 75",
                   f"scontrol requeue {JOB}"], (res.stdout, res.stderr)
    assert f"requeueing job {JOB}" in res.stdout
    assert not (tmp_path / f"logs/slurm/preempt-{JOB}").exists()  # the rerun starts without it


def test_a_request_left_by_an_earlier_run_of_the_job_is_not_taken_for_a_new_one(tmp_path):
    (tmp_path / "logs/slurm").mkdir(parents=True)
    (tmp_path / f"logs/slurm/preempt-{JOB}").touch()  # a requeued job keeps its id
    res, log = _run(tmp_path, signal_at="nowhere")
    assert res.returncode == 0, res.stderr
    assert log == ["python -m ups.slurm set-params", "dvc repro assign-labels", "train", "trained",
                   "dvc commit -f train"]


def test_sigterm_saves_but_does_not_requeue_so_that_scancel_stops_the_job(tmp_path):
    """SIGTERM is what `scancel` sends (and preemption, where Slurm requeues by itself): the state is
    saved, and the job ends instead of putting itself back in the queue."""
    res, log = _run(tmp_path, "run-stage train", signal="TERM")
    assert res.returncode == 75, (res.returncode, res.stdout, res.stderr)
    assert log == ["python -m ups.slurm set-params", "dvc repro assign-labels", "train", "saved, exit 75"]
    assert "state saved; not requeued" in res.stdout, res.stdout
