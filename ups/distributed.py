"""DDP under torchrun: set-up from the environment, and the few collectives the trainer needs.

Every collective here runs on every rank at the same point of the loop, which is what keeps a
NaN or an exhausted data stream on one rank from hanging the others: the decision (skip the
step, end the epoch, stop) is all-reduced first and then taken by all ranks together.

On GPUs the group is `cpu:gloo,cuda:nccl`: NCCL serves CUDA tensors only, and the trainer's
host-side votes (the epoch-end flag and the step's normaliser, built from the loader's CPU
masks before any GPU work) go through gloo without touching the GPU stream; device tensors
(the non-finite flag, the logged sums) go through NCCL. A torchrun launch joins the group even
at world size 1, so the NCCL path runs on one GPU as it does on eight.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    group: bool = False  # a process group was joined (torchrun), even at world size 1
    device_type: str = "cpu"

    @property
    def enabled(self) -> bool:
        return self.group

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def backend(device_type: str) -> str:
    """The process-group backend: every device type the trainer's tensors live on is served."""
    return "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"


def launched_by_torchrun(env: dict[str, str] | None = None) -> bool:
    """Several processes, or one started by torchrun (which sets TORCHELASTIC_RUN_ID)."""
    env = dict(os.environ) if env is None else env
    return int(env.get("WORLD_SIZE", "1")) > 1 or "TORCHELASTIC_RUN_ID" in env


def init(device_type: str) -> Dist:
    """Join the process group when launched by torchrun; else a single process without one."""
    if not launched_by_torchrun():
        return Dist()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend(device_type), timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local, True, device_type)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def host_sum(d: Dist, values: list[float]) -> list[float]:
    """Sum Python numbers over ranks (float64 on the CPU, through gloo: no GPU sync)."""
    if not d.enabled:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_sum(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks, on whatever device it lives (a copy; the input is left alone)."""
    out = values.detach().clone()
    if d.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_max(d: Dist, values: torch.Tensor) -> torch.Tensor:
    out = values.detach().clone()
    if d.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def gather_rng(d: Dist, state: torch.Tensor) -> list[torch.Tensor]:
    """Every rank's generator state (fixed-size CPU uint8 tensors), on every rank."""
    if not d.enabled:
        return [state]
    t = state.cpu()
    out = [torch.empty_like(t) for _ in range(d.world_size)]
    dist.all_gather(out, t)
    return out


def barrier(d: Dist) -> None:
    if d.enabled:
        if d.device_type == "cuda":
            dist.barrier(device_ids=[d.local_rank])
        else:
            dist.barrier()


def broadcast_json(d: Dist, obj: Any) -> Any:
    """Rank 0's JSON value on every rank (sent as bytes: no pickle, unlike broadcast_object_list)."""
    if not d.enabled:
        return obj
    import orjson

    dev = torch.device("cuda", d.local_rank) if d.device_type == "cuda" else torch.device("cpu")
    data = orjson.dumps(obj) if d.is_main else b""
    size = torch.tensor([len(data)], dtype=torch.int64, device=dev)
    dist.broadcast(size, src=0)
    buf = torch.zeros(int(size.item()), dtype=torch.uint8, device=dev)
    if d.is_main:
        buf.copy_(torch.frombuffer(bytearray(data), dtype=torch.uint8))
    dist.broadcast(buf, src=0)
    return orjson.loads(bytes(buf.cpu().numpy()))
