"""CUDA-only checks, run by `make gpu-check` (python -m bench.gpu) on a machine with a GPU.

`make test` deselects them (`-m "not cuda"`): this suite needs the device it tests, as `make
stress` needs minutes. On a GPU machine `python -m pytest -m cuda tests/test_cuda.py` runs them.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file

from tests.train_fixtures import run_train, train_config, train_history, write_corpus
from ups.masking import compute_mask, frame_valid
from ups.pretraining import PretrainingHead, masked_prediction_sums
from ups.stages import train
from ups.train_state import latest_state

pytestmark = pytest.mark.cuda

CUDA = {"device": "cuda", "num_workers": 2}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("cuda-corpus"), n_train=32, n_valid=8, seconds=(1.0, 2.0))


def test_masking_and_loss_on_the_device_match_the_cpu():
    import numpy as np

    rng = np.random.default_rng(0)
    lengths = [50, 40, 30]
    mask = torch.from_numpy(compute_mask(lengths, 50, mask_prob=0.8, mask_length=10, min_masks=2, rng=rng))
    valid = torch.from_numpy(frame_valid(lengths, 50))
    torch.manual_seed(0)
    head = PretrainingHead(64, 20, final_dim=16)
    hidden = torch.randn(3, 50, 64)
    labels = torch.randint(0, 20, (3, 50))
    cpu = masked_prediction_sums(head(hidden), labels, mask, valid)
    dev = head.cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        gpu = masked_prediction_sums(dev(hidden.cuda().bfloat16()), labels.cuda(), mask.cuda(), valid.cuda())
    assert gpu.objective.dtype == torch.float32  # the head and the loss stay fp32 under autocast
    assert int(gpu.n_masked) == int(cpu.n_masked) == int((mask & valid).sum())
    torch.testing.assert_close(gpu.as_tensor().cpu()[1::3], cpu.as_tensor()[1::3])  # counts exact
    assert float(gpu.ce_masked) == pytest.approx(float(cpu.ce_masked), rel=2e-2)  # bf16 input only


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_training_step_on_the_gpu(tmp_path, corpus, precision):
    summary = run_train(train_config("tiny", **CUDA, precision=precision, max_steps=4), corpus, tmp_path)
    assert summary["steps"] == 4 and summary["skipped_steps"] == 0
    assert summary["device"].startswith("cuda") and summary["precision"] == precision
    losses = [r["train/loss"] for r in train_history(tmp_path) if "train/loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    info = json.loads((latest_state(tmp_path / "state") / "state.json").read_text())
    assert (info["scaler"] is not None) == (precision == "fp16")


def test_resume_on_the_gpu(tmp_path, corpus):
    cfg = train_config("tiny", **CUDA, precision="bf16", epochs=3, save_every_steps=4)
    with pytest.raises(train.StopRequested):
        run_train(cfg, corpus, tmp_path, stop_after_steps=6)
    state = latest_state(tmp_path / "state")
    assert state.name == "step-000000004"
    assert "cuda.rank0" in load_file(str(state / "rng.safetensors"))
    summary = run_train(cfg, corpus, tmp_path)
    assert summary["steps"] == summary["total_steps"] > 6
    steps = [r["step"] for r in train_history(tmp_path) if "train/loss" in r]
    assert steps == sorted(set(steps))  # one continuous history, nothing trained twice
    fresh = run_train(replace(cfg, resume=False), corpus, tmp_path / "fresh")
    assert fresh["steps"] == summary["steps"]


def test_gpu_nearest_centroid_matches_numpy_and_the_report_says_torch():
    from types import SimpleNamespace

    import numpy as np

    from ups.kmeans import Normaliser, assign
    from ups.stages.assign_labels import HubertLabeller

    rng = np.random.default_rng(0)
    x = rng.normal(size=(20000, 768)).astype(np.float32)
    centroids = rng.normal(size=(500, 768)).astype(np.float32)
    norm = Normaliser(x.mean(axis=0), x.std(axis=0))
    labeller = HubertLabeller(SimpleNamespace(device="cuda"), norm, centroids)
    assert labeller.method == "torch on cuda"
    got, inertia = labeller.assign(torch.from_numpy(x).cuda(), 4096)
    want, want_inertia = assign(norm.apply(x), centroids)
    assert got.dtype == np.int16 and (got == want).mean() > 0.999  # float32 ties / rounding only
    assert inertia == pytest.approx(want_inertia, rel=1e-4)
