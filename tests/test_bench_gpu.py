"""`make gpu-check` can only run where a GPU is; its parts are exercised here on the CPU."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu

REPO = Path(__file__).resolve().parents[1]


def test_gpu_check_says_plainly_when_there_is_no_gpu(tmp_path):
    env = {"CUDA_VISIBLE_DEVICES": "", "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, "-m", "bench.gpu", "--out", str(tmp_path / "gpu.json")], cwd=REPO,
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "no usable CUDA GPU" in proc.stderr
    assert not (tmp_path / "gpu.json").exists()


@pytest.mark.slow
def test_its_torchrun_part_runs_the_train_stage_at_world_size_1(tmp_path, demo_run):
    # the same command lines as on the GPU, with gloo: the demo's data stages (run already by the
    # session's demo, so dvc finds them up to date), then `ups train` under torchrun, which joins a
    # process group even for one process
    run_dir, first = demo_run
    assert first.returncode == 0, first.stderr[-3000:]
    res = gpu.torchrun_nccl(tmp_path, 600, device="cpu", steps=6, run_dir=run_dir)
    assert res["passed"], res.get("tail") or res.get("data_stages", {}).get("tail")
    assert res["steps"] == 6 and res["world_size"] == 1
    assert sum(e["steps"] for e in res["epochs"]) == 6
