"""`train.batch_size: auto`: batch size and gradient accumulation from the GPU's memory.

Sized for 10 s chunks, HuBERT-base, mixed precision, T4 to H200. Rows
are matched by total memory in GiB, so a GPU not named here gets the row of its memory size.
The names are GPUs that torch's CUDA 13 build runs on (compute capability 7.5 and newer: no
V100, Volta's support is gone).
The effective batch per optimizer step is batch_size x grad_accum x processes.
"""

from __future__ import annotations

# (memory up to GiB, name, batch_size, grad_accum)
TABLE: list[tuple[float, str, int, int]] = [
    (20.0, "T4 / RTX 4080 (16 GB)", 8, 4),
    (36.0, "L4 / A10 / RTX 4090 (24 GB)", 16, 2),
    (48.0, "A100-40GB", 32, 2),
    (100.0, "A100-80GB / H100-80GB", 64, 1),
    (float("inf"), "H200-141GB", 128, 1),
]
CPU_ROW = ("cpu", 8, 1)


def auto_batch(memory_gib: float | None) -> tuple[str, int, int]:
    """(row name, batch_size, grad_accum) for a GPU with `memory_gib` GiB; None means CPU."""
    if memory_gib is None:
        return CPU_ROW
    if memory_gib <= 0:
        raise ValueError(f"GPU memory must be > 0 GiB, got {memory_gib}")
    for limit, name, batch, accum in TABLE:
        if memory_gib <= limit:
            return name, batch, accum
    raise AssertionError("unreachable: the last row has no limit")


def resolve_batch(batch_size: int | str, grad_accum: int | str, memory_gib: float | None) -> tuple[int, int]:
    """Apply the table to whichever of the two is `auto`; explicit values win."""
    _, b, a = auto_batch(memory_gib)
    return (b if batch_size == "auto" else int(batch_size)), (a if grad_accum == "auto" else int(grad_accum))
