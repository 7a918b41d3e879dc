import sys

import pytest

from ups.config import ConfigError
from ups.launch import command


def test_one_process_runs_ups_directly():
    assert command(["train", "--x", "1"], 1, {}) == [sys.executable, "-m", "ups", "train", "--x", "1"]


def test_several_processes_use_torchrun():
    cmd = command(["train"], 4, {})
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=4"]
    assert "--standalone" in cmd and cmd[-3:] == ["-m", "ups", "train"]


def test_several_nodes_need_a_rendezvous():
    with pytest.raises(ConfigError, match="UPS_RDZV_ENDPOINT"):
        command(["train"], 8, {"UPS_NNODES": "2"})
    cmd = command(["train"], 8, {"UPS_NNODES": "2", "UPS_NODE_RANK": "1", "UPS_RDZV_ENDPOINT": "n0:29500"})
    assert "--nnodes=2" in cmd and "--node_rank=1" in cmd and "--rdzv_endpoint=n0:29500" in cmd


def test_gpus_without_cuda_stop_before_torchrun(tmp_path):
    # GPUS=8 on a machine whose CUDA is unusable used to become 8 gloo CPU processes.
    import os
    import subprocess

    import yaml

    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"gpus": 8, "device": "auto"}}))
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, "-m", "ups.launch", "train", "--params", str(params)],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert "train.gpus is 8 but CUDA is not usable" in proc.stderr
    assert "torch.distributed.run" not in proc.stderr and "Traceback" not in proc.stderr
