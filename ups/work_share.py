"""Which share of a stage's units (source tars) this process takes, and whether it finishes the stage.

prepare-audio and assign-labels split their units as `i % world == rank`. The rank comes from two
places, which combine:

- torchrun (`RANK`, `WORLD_SIZE`): processes that run at the same time and meet at a gloo barrier,
  after which group rank 0 finishes the stage (removes stale files, joins, writes the report);
- a Slurm job array (`SLURM_ARRAY_TASK_ID`, `_COUNT`, `_MIN`, `_MAX`): tasks that may run at
  different times, even in waves (`--array=0-15%4`), and never meet. No task finishes the stage:
  the stage's command run once more after the array (scripts/slurm/prepare.sbatch) finds every
  unit's marker, does nothing but the finish, and DVC commits the stage from there.

With `UPS_ARRAY_SIZE=N` (what scripts/slurm/prepare.sbatch exports) task i of any array takes
share i of N, so `--array=1,3` reruns exactly the shares of two failed tasks of `--array=0-N-1`.

Inside an array task torchrun may split the task's share further: rank = task * group + group
rank. Outputs never depend on the split, so every combination writes the same bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from ups.config import ConfigError

T = TypeVar("T")


@dataclass(frozen=True)
class WorkShare:
    array_task: int = 0
    array_size: int = 1
    in_array: bool = False
    group_rank: int = 0
    group_size: int = 1

    @property
    def rank(self) -> int:
        return self.array_task * self.group_size + self.group_rank

    @property
    def world(self) -> int:
        return self.array_size * self.group_size

    @property
    def collective(self) -> bool:
        """Whether this process must join a gloo group (torchrun started several)."""
        return self.group_size > 1

    @property
    def finishes(self) -> bool:
        """Whether this process finishes the stage once every unit is done."""
        return not self.in_array and self.group_rank == 0

    def take(self, units: Sequence[T]) -> list[T]:
        return [u for i, u in enumerate(units) if i % self.world == self.rank]

    def describe(self) -> str:
        parts = []
        if self.in_array:
            parts.append(f"array task {self.array_task}/{self.array_size}")
        if self.collective:
            parts.append(f"rank {self.group_rank}/{self.group_size}")
        return ", ".join(parts) or "one process"


def _int(env: Mapping[str, str], name: str) -> int:
    try:
        return int(env[name])
    except KeyError:
        raise ConfigError(f"{name} is not set (a Slurm job array sets it with SLURM_ARRAY_TASK_ID)") from None
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {env[name]!r}") from None


def work_share(env: Mapping[str, str]) -> WorkShare:
    """This process's share from torchrun's and Slurm's variables (`os.environ`)."""
    group_size = int(env.get("WORLD_SIZE", "1") or "1")
    group_rank = int(env.get("RANK", "0") or "0") if group_size > 1 else 0
    if not 0 <= group_rank < group_size:
        raise ConfigError(f"RANK must be in [0, {group_size}), got {group_rank}")
    if not env.get("SLURM_ARRAY_TASK_ID"):
        return WorkShare(group_rank=group_rank, group_size=group_size)
    if env.get("UPS_ARRAY_SIZE"):  # scripts/slurm/prepare.sbatch: tasks 0..N-1, any subset rerun
        task_id, size = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "UPS_ARRAY_SIZE")
        if not 0 <= task_id < size:
            raise ConfigError(f"SLURM_ARRAY_TASK_ID {task_id} is outside [0, {size}) (UPS_ARRAY_SIZE {size})")
        return WorkShare(task_id, size, True, group_rank, group_size)
    task_id, count = _int(env, "SLURM_ARRAY_TASK_ID"), _int(env, "SLURM_ARRAY_TASK_COUNT")
    lo, hi = _int(env, "SLURM_ARRAY_TASK_MIN"), _int(env, "SLURM_ARRAY_TASK_MAX")
    if hi - lo + 1 != count or env.get("SLURM_ARRAY_TASK_STEP", "1") != "1":
        raise ConfigError(f"the Slurm job array must be one contiguous range (--array={lo}-{hi}, "
                          f"optionally %limit): it has {count} task(s) between {lo} and {hi}")
    if not lo <= task_id <= hi:
        raise ConfigError(f"SLURM_ARRAY_TASK_ID {task_id} is outside [{lo}, {hi}]")
    return WorkShare(task_id - lo, count, True, group_rank, group_size)


def join_gloo(share: WorkShare) -> Any:
    """torch.distributed joined over gloo when torchrun started several processes, else None.

    The timeout is long: a rank with more (or bigger) tars than the others waits at the barrier.
    The caller destroys the group at the end (`destroy_process_group`).
    """
    if not share.collective:
        return None
    import datetime

    import torch.distributed as dist

    dist.init_process_group("gloo", timeout=datetime.timedelta(hours=72))
    return dist
