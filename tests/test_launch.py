import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.train_fixtures import assert_same_training, write_corpus
from ups.config import ConfigError, TrainConfig, from_dict
from ups.launch import check_slurm_step, command, required_device
from ups.stages import train
from ups.tiny_model import write_tiny_hubert
from ups.train_state import latest_state

REPO = Path(__file__).resolve().parents[1]


def test_one_process_runs_ups_directly():
    assert command(["train", "--x", "1"], 1, 1, {}) == [sys.executable, "-m", "ups", "train", "--x", "1"]


def test_several_processes_use_torchrun():
    cmd = command(["train"], 4, 1, {})
    assert cmd[:4] == [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=4"]
    assert "--standalone" in cmd and cmd[-3:] == ["-m", "ups", "train"]


def test_several_nodes_need_a_rendezvous_and_no_node_rank():
    with pytest.raises(ConfigError, match="UPS_RDZV_ENDPOINT"):
        command(["train"], 8, 2, {})
    cmd = command(["train"], 8, 2, {"UPS_RDZV_ENDPOINT": "n0:29500", "UPS_RDZV_ID": "ups-123"})
    assert cmd[3:9] == ["--nproc_per_node=8", "--nnodes=2", "--rdzv_backend=c10d", "--rdzv_endpoint=n0:29500",
                        "--rdzv_id=ups-123", "-m"]
    assert "--standalone" not in cmd and not any(a.startswith("--node_rank") for a in cmd)
    # one process per node is still torchrun: the nodes must meet
    assert "--nnodes=3" in command(["train"], 1, 3, {"UPS_RDZV_ENDPOINT": "n0:1"})


def test_an_srun_step_must_run_one_task_on_each_node():
    check_slurm_step(2, {})  # not under srun
    check_slurm_step(2, {"SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2"})
    with pytest.raises(ConfigError, match="one task per node"):
        check_slurm_step(2, {"SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "16"})
    with pytest.raises(ConfigError, match="train.nodes is 1 but this srun step spans 2"):
        check_slurm_step(1, {"SLURM_STEP_NUM_NODES": "2", "SLURM_STEP_NUM_TASKS": "2"})


def test_launch_refuses_a_step_that_does_not_match_train_nodes(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"nodes": 2, "gpus": 1, "device": "cpu"}}))
    env = {**os.environ, "PYTHONPATH": str(REPO), "SLURM_STEP_NUM_NODES": "1", "SLURM_STEP_NUM_TASKS": "1",
           "UPS_RDZV_ENDPOINT": "127.0.0.1:1"}
    res = subprocess.run([sys.executable, "-m", "ups.launch", "train", "--params", str(params)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert res.returncode == 2 and "train.nodes is 2 but this srun step spans 1" in res.stderr


# --- two "nodes" on localhost -----------------------------------------------------------------

TRAIN = {"init": "", "device": "cpu", "epochs": 2, "batch_size": 2, "learning_rate": 5e-3, "warmup_steps": 2,
         "final_dim": 16, "min_sample_seconds": 0.5,
         "log_every_steps": 2, "valid_every_steps": 3, "save_every_steps": 4}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _launch(tmp_path: Path, corpus: dict[str, Path], name: str, **train: object) -> list[str]:
    params = tmp_path / f"{name}.yaml"
    params.write_text(yaml.safe_dump({"train": {**TRAIN, "init": str(tmp_path / "init"), **train}}))
    out = tmp_path / name
    return [sys.executable, "-m", "ups.launch", "train", "--params", str(params),
            "--audio-dir", str(corpus["audio"]), "--labels-dir", str(corpus["labels"]),
            "--model-dir", str(out / "model"), "--state-dir", str(out / "state"),
            "--live-dir", str(out / "live")]


def _history(out: Path) -> list[dict]:
    return json.loads((latest_state(out / "state") / "history.json").read_text())


@pytest.mark.slow
def test_two_nodes_on_localhost_match_one_process_at_the_same_global_batch(tmp_path):
    """The multi-node path for real: two `torchrun --nnodes=2` agents, one c10d endpoint."""
    corpus = write_corpus(tmp_path / "corpus", n_train=16, n_valid=4, seconds=(1.0, 2.0))
    write_tiny_hubert(tmp_path / "init", seed=2)
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
           "UPS_RDZV_ENDPOINT": f"127.0.0.1:{_free_port()}", "UPS_RDZV_ID": f"test-{os.getpid()}"}
    two = _launch(tmp_path, corpus, "two", nodes=2, gpus=1, num_workers=1, grad_accum=1)
    agents = [subprocess.Popen(two, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True) for _ in range(2)]
    # meanwhile, the reference in this process: one rank, twice the accumulation and the workers
    one = tmp_path / "one"
    train.run(from_dict(TrainConfig, {**TRAIN, "init": str(tmp_path / "init"), "num_workers": 2,
                                      "grad_accum": 2}, "train"),
              audio_dir=corpus["audio"], labels_dir=corpus["labels"], model_dir=one / "model",
              state_dir=one / "state", live_dir=one / "live")
    logs = [a.communicate(timeout=300)[0] for a in agents]
    assert [a.returncode for a in agents] == [0, 0], "\n".join(x[-2000:] for x in logs)
    report = json.loads((tmp_path / "two" / "model" / "training.json").read_text())
    assert report["world_size"] == 2 and report["config"]["nodes"] == 2
    assert_same_training(_history(one), _history(tmp_path / "two"), one / "model", tmp_path / "two" / "model")


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


def test_a_job_with_gpus_insists_on_cuda_without_changing_train_device(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"train": {"gpus": 1, "device": "auto"}}))
    before = params.read_bytes()
    env = {**os.environ, "PYTHONPATH": str(REPO), "CUDA_VISIBLE_DEVICES": "", "UPS_TRAIN_DEVICE": "cuda"}
    res = subprocess.run([sys.executable, "-m", "ups.launch", "train", "--params", str(params)], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "cuda but CUDA is not usable" in res.stderr, res.stderr
    assert params.read_bytes() == before
    with pytest.raises(ConfigError, match="UPS_TRAIN_DEVICE must be cuda or unset, got 'gpu'"):
        required_device("auto", {"UPS_TRAIN_DEVICE": "gpu"})
    assert required_device("cpu", {}) == "cpu"
