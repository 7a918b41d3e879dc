"""Which device a stage runs on: a GPU that is expected but absent is an error, never a quiet
fall-back to the CPU (eight "GPU" processes training on gloo and the CPU for days). And the
precision the trainer computes in on that device."""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def cuda_problem() -> str:
    """Why CUDA is not usable here, in torch's words where it has them."""
    if torch.version.cuda is None:
        return f"torch {torch.__version__} is a CPU-only build (no CUDA)"
    reason = "no CUDA device is visible"
    try:
        torch.cuda.init()
    except (RuntimeError, AssertionError) as exc:  # e.g. "The NVIDIA driver on your system is too old"
        reason = str(exc).strip().splitlines()[0]
    return f"{reason} (torch {torch.__version__} is built for CUDA {torch.version.cuda})"


def resolve_device(device: str, gpus: int, local_rank: int = 0, section: str = "train") -> torch.device:
    """`cuda` when asked for or available; the CPU only when asked for, or said in a WARNING.

    `device` is auto | cpu | cuda; `gpus` > 1 with auto means GPUs are expected."""
    if torch.cuda.is_available() and device != "cpu":
        return torch.device("cuda", local_rank)
    if device == "cuda":
        raise RuntimeError(f"{section}.device is cuda but CUDA is not usable: {cuda_problem()}")
    if device == "auto" and gpus > 1:
        raise RuntimeError(
            f"{section}.gpus is {gpus} but CUDA is not usable: {cuda_problem()}. Fix the GPU set-up, "
            f"or set {section}.device: cpu to run {gpus} CPU processes on purpose"
        )
    if device == "auto":
        log.warning("%s.device auto: CUDA is not usable (%s); running on the CPU", section, cuda_problem())
    return torch.device("cpu")


def resolve_precision(precision: str, device: torch.device) -> str:
    """`train.precision` on this device: fp32 on the CPU (a mixed precision asked for is said in
    a WARNING); `auto` on a GPU is bf16 where it is supported, else fp16."""
    if device.type != "cuda":
        if precision in ("bf16", "fp16"):
            log.warning("train.precision=%s ignored on CPU: fp32", precision)
        return "fp32"
    if precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return precision
