"""What scripts/slurm/*.sbatch ask of Slurm and read from it, on a real local Slurm (tests/slurm_cluster.py).

No pipeline runs here: UPS_EXEC points at a wrapper that runs `python -m ups.cluster gpus` for
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
if [[ "$*" == *"ups.cluster set-params"* ]]; then
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
    assert cmd.endswith(f"python -m ups.cluster set-params {shape} train.epochs=1"), cmd
