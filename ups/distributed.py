"""DDP under torchrun: set-up from the environment, and the few collectives the trainer needs.

Every collective here runs on every rank at the same point of the loop, which is what keeps a
NaN or an exhausted data stream on one rank from hanging the others: the decision (skip the
step, end the epoch, stop) is all-reduced first and then taken by all ranks together.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init(device_type: str) -> Dist:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank = int(os.environ["RANK"])
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device_type == "cuda":
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                timeout=datetime.timedelta(minutes=30))
    return Dist(rank, world, local)


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def all_sum(d: Dist, values: torch.Tensor) -> torch.Tensor:
    """Sum a float64 vector over ranks (a copy; the input is left alone)."""
    out = values.detach().clone()
    if d.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def all_max(d: Dist, values: torch.Tensor) -> torch.Tensor:
    out = values.detach().clone()
    if d.enabled:
        dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def gather_rng(d: Dist, state: torch.Tensor, device: torch.device) -> list[torch.Tensor]:
    """Every rank's generator state (fixed-size uint8 tensors), on every rank."""
    if not d.enabled:
        return [state]
    t = state.to(device)
    out = [torch.empty_like(t) for _ in range(d.world_size)]
    dist.all_gather(out, t)
    return [x.cpu() for x in out]


def barrier(d: Dist) -> None:
    if d.enabled:
        dist.barrier()
