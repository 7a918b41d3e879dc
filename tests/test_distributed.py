"""The process group serves every device the trainer's collectives use (CPU and CUDA tensors)."""

from __future__ import annotations

import torch
import torch.distributed as dist

from ups import distributed


def _backend_for(monkeypatch, device_type: str) -> str:
    """The backend string `distributed.init` asks for under torchrun with 2 ranks."""
    seen: dict[str, str] = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda backend, **kw: seen.setdefault("backend", backend))
    monkeypatch.setattr(torch.cuda, "set_device", lambda i: None)
    distributed.init(device_type)
    return seen["backend"]


def _served(backend: str) -> set[str]:
    """Device types a torch.distributed backend string serves ('nccl' alone: CUDA only)."""
    if ":" not in backend:
        return {"cuda"} if backend == "nccl" else {"cpu", "cuda"} if backend == "gloo" else set()
    return {part.split(":")[0] for part in backend.split(",")}


def test_cuda_group_also_serves_cpu_tensors(monkeypatch):
    # The trainer all-reduces CPU tensors (the epoch-end vote and the step normaliser are built
    # from the loader's CPU masks): with NCCL alone every multi-GPU run died at its first step.
    assert _served(_backend_for(monkeypatch, "cuda")) >= {"cpu", "cuda"}


def test_cpu_group_is_gloo(monkeypatch):
    assert "cpu" in _served(_backend_for(monkeypatch, "cpu"))
