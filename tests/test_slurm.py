"""ups.slurm: a stage's own command, parameters set in place, and `make train NODES=N`."""

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from ups.config import ConfigError
from ups.slurm import gpus_on_node, set_params, site_options, stage_command

REPO = Path(__file__).resolve().parents[1]


def test_stage_command_is_the_one_dvc_runs():
    cmd, wdir = stage_command(REPO / "dvc.yaml", "train")
    assert cmd == yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["train"]["cmd"]
    assert cmd.startswith("python -m ups.launch train ") and wdir == REPO
    with pytest.raises(ConfigError, match="no stage 'trian'"):
        stage_command(REPO / "dvc.yaml", "trian")


def test_run_stage_execs_the_command_in_the_stage_directory(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "dvc.yaml").write_text(yaml.safe_dump({"stages": {"s": {
        "cmd": ["echo one > out.txt", "pwd >> out.txt"], "wdir": "sub"}}}))
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    res = subprocess.run([sys.executable, "-m", "ups.slurm", "run-stage", "s"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "sub" / "out.txt").read_text().split() == ["one", str(tmp_path / "sub")]
    assert not (tmp_path / ".dvc").exists()  # no DVC involved


def test_set_params_changes_only_the_values_and_keeps_comments(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_bytes((REPO / "params.yaml").read_bytes())
    before = params.read_text().splitlines()
    set_params(params, ["train.nodes=2", "train.gpus=8", "select.hours=100", "train.max_steps=null"])
    after = params.read_text().splitlines()
    changed = [(a, b) for a, b in zip(before, after, strict=True) if a != b]
    assert [b.split("#")[0].strip() for _, b in changed] == ["hours: 100", "gpus: 8", "nodes: 2"]
    assert all(a.split("#", 1)[1] == b.split("#", 1)[1] for a, b in changed)  # comments kept
    loaded = yaml.safe_load(params.read_text())
    assert loaded["train"]["nodes"] == 2 and loaded["train"]["max_steps"] is None


@pytest.mark.parametrize(("assignment", "match"), [
    ("train.nodez=2", "train.nodez is not a parameter"),
    ("train.nodes=0", "train.nodes must be >= 1"),
    ("train.gpus=two", "train.gpus must be an integer"),
    ("nodes", "expected KEY=VALUE"),
])
def test_set_params_refuses_bad_keys_and_values_and_leaves_the_file(tmp_path, assignment, match):
    params = tmp_path / "params.yaml"
    params.write_bytes((REPO / "params.yaml").read_bytes())
    with pytest.raises(ConfigError, match=match):
        set_params(params, ["train.gpus=4", assignment])
    assert params.read_bytes() == (REPO / "params.yaml").read_bytes()


def test_make_train_with_nodes_prints_one_command_per_node_and_runs_nothing():
    res = subprocess.run(["make", "--no-print-directory", "train", "NODES=3", "GPUS=8", "HOURS=7",
                          "RDZV=n0:29500"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    lines = [shlex.split(x) for x in res.stdout.splitlines() if x and not x.startswith("#")]
    assert lines[0] == ["python", "-m", "ups.slurm", "set-params", "select.hours=7", "train.nodes=3",
                        "train.gpus=8", "&&", "dvc", "repro", "assign-labels"]
    node = ["UPS_RDZV_ENDPOINT=n0:29500", "python", "-m", "ups.slurm", "run-stage", "train"]
    assert [x[:6] for x in lines[1:4]] == [node] * 3 and [x[-1] for x in lines[1:4]] == ["0", "1", "2"]
    assert lines[4:] == [["dvc", "commit", "-f", "train"]]
    assert "dvc" not in res.stderr and "exp run" not in res.stdout


@pytest.mark.parametrize(("env", "gpus"), [
    ({}, 0),  # a CPU job
    # what Slurm 22.05 sets for each way of asking (2 nodes)
    ({"SLURM_GPUS_ON_NODE": "4", "SLURM_GPUS_PER_NODE": "4"}, 4),  # --gpus-per-node=4
    ({"SLURM_GPUS_ON_NODE": "2", "SLURM_JOB_GPUS": "0,1", "SLURM_JOB_NUM_NODES": "2"}, 2),  # --gres=gpu:2
    ({"SLURM_GPUS_ON_NODE": "3", "SLURM_GPUS": "6", "SLURM_JOB_NUM_NODES": "2"}, 3),  # --gpus=6
    # SLURM_GPUS_ON_NODE wins over a job-wide count
    ({"SLURM_GPUS_ON_NODE": "8", "SLURM_GPUS": "16", "SLURM_JOB_NUM_NODES": "2"}, 8),
    # the fallbacks, without SLURM_GPUS_ON_NODE
    ({"SLURM_GPUS_PER_NODE": "a100:8"}, 8),
    ({"SLURM_GPUS_PER_NODE": "a100:4,v100:2"}, 6),
    ({"SLURM_TRES_PER_NODE": "gres/gpu:2"}, 2),
    ({"SLURM_TRES_PER_NODE": "gres:gpu:h100:2,gres/shard:1"}, 2),
    ({"SLURM_JOB_GPUS": "0,2,5"}, 3),
    ({"SLURM_STEP_GPUS": "0-3"}, 4),
    ({"SLURM_GPUS": "h100:16", "SLURM_JOB_NUM_NODES": "2"}, 8),
    ({"SLURM_GPUS": "4"}, 4),
])
def test_gpus_on_node_counts_every_way_of_asking(env, gpus):
    assert gpus_on_node(env) == gpus


def test_gpus_that_do_not_split_over_the_nodes_are_refused():
    with pytest.raises(ConfigError, match="--gpus=5 does not split evenly over 2 nodes"):
        gpus_on_node({"SLURM_GPUS": "5", "SLURM_JOB_NUM_NODES": "2"})


def test_the_gpus_command_prints_the_count():
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}, "PYTHONPATH": str(REPO),
           "SLURM_GRES": "gpu:2", "SLURM_JOB_GPUS": "0,1"}
    res = subprocess.run([sys.executable, "-m", "ups.slurm", "gpus"], env=env, capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0 and res.stdout == "2\n", res.stderr


def test_site_options_come_from_the_running_job_else_from_conf_slurm_env():
    conf = {"UPS_SLURM_ACCOUNT": "fromconf", "UPS_SLURM_QOS": "low", "UPS_SLURM_MEM": "8G",
            "UPS_SLURM_CONSTRAINT": "a100", "UPS_SLURM_PARTITION": "", "UPS_SLURM_TIME": "02:00:00"}
    assert site_options(conf) == ["--account=fromconf", "--qos=low", "--constraint=a100", "--mem=8G",
                                  "--time=02:00:00"]
    record = ("JobId=7 JobName=ups-prepare Account=myproject QOS=(null) Partition=cpu TimeLimit=00:30:00 "
              "Features=(null) MinMemoryNode=300M MinTmpDiskNode=0")
    assert site_options(conf, record) == ["--account=myproject", "--partition=cpu", "--qos=low",
                                          "--constraint=a100", "--mem=300M", "--time=00:30:00"]
    per_cpu = "Account=(null) Partition=cpu TimeLimit=UNLIMITED MinMemoryCPU=2G"
    assert site_options({}, per_cpu) == ["--partition=cpu", "--mem-per-cpu=2G"]
