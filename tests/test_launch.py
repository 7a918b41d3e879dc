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
