"""Device choice: a GPU that is expected but absent is an error naming the key, never a quiet CPU run."""

from __future__ import annotations

import logging

import pytest
import torch

from ups.devices import cuda_problem, resolve_device


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_cpu_asked_is_the_cpu_even_with_several_processes(no_cuda):
    assert resolve_device("cpu", gpus=4) == torch.device("cpu")


def test_cuda_asked_but_absent_names_the_section_key_and_the_reason(no_cuda):
    with pytest.raises(RuntimeError, match=r"^evaluate\.device is cuda but CUDA is not usable: .+"):
        resolve_device("cuda", gpus=1, section="evaluate")


def test_auto_with_several_gpus_expected_is_an_error_naming_the_way_out(no_cuda):
    with pytest.raises(RuntimeError, match=r"train\.gpus is 8 .*train\.device: cpu"):
        resolve_device("auto", gpus=8)


def test_auto_on_one_process_falls_back_with_a_warning(no_cuda, caplog):
    caplog.set_level(logging.WARNING, logger="ups.devices")
    assert resolve_device("auto", gpus=1) == torch.device("cpu")
    assert "train.device auto: CUDA is not usable" in caplog.text


def test_a_visible_gpu_is_taken_at_the_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto", gpus=2, local_rank=1) == torch.device("cuda", 1)
    assert resolve_device("cpu", gpus=2, local_rank=1) == torch.device("cpu")


def test_the_reason_says_which_torch_build_this_is():
    text = cuda_problem() if not torch.cuda.is_available() else "n/a"
    if torch.version.cuda is None:
        assert text == f"torch {torch.__version__} is a CPU-only build (no CUDA)"
    elif not torch.cuda.is_available():
        assert f"built for CUDA {torch.version.cuda}" in text
