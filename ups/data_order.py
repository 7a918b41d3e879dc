"""Which chunks each optimizer step trains on: one global order, whatever the run's shape.

An epoch is one permutation of every training chunk, a function of (seed, epoch) only. Optimizer
step `s` of the epoch takes the global batch `perm[s * G : (s + 1) * G]` (`G` chunks =
batch x accumulation x ranks); the chunks of that global batch are sorted by length (ties at
random), cut into `G / batch` micro-batches, and the micro-batches are dealt to ranks
(micro-batch `m` to rank `m % ranks`), in an order drawn per step. A rank's DataLoader workers
take its micro-batches round-robin, as the DataLoader reads them back. So the chunks of a step
do not depend on the number of ranks, workers or the accumulation, only on `G`: a run resumed on
another GPU count at the same global batch trains exactly the chunks the first run would have
(MosaicML Streaming's elastic determinism), and only the last partial *global* batch (fewer
than `G` chunks) sits out each epoch. Pure functions, nothing read from disk.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MicroBatch:
    """One micro-batch of one rank: global chunk indices and where it sits in the schedule."""

    epoch: int
    step: int  # data step within the epoch
    micro: int  # index among the step's micro-batches (all ranks), seeds its crop and masks
    indices: np.ndarray  # into the catalogue (int64)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch, 7]).permutation(n)


def steps_per_epoch(n: int, global_batch: int) -> int:
    return n // global_batch


def elastic_accum(global_batch: int, batch_size: int, world_size: int) -> int:
    """The accumulation that keeps a state's global batch on `world_size` processes (a resume
    on another GPU count trains the same chunks per step); a ConfigError when none can."""
    per_step = batch_size * world_size
    if global_batch % per_step:
        from ups.config import ConfigError

        raise ConfigError(
            f"train: the state was trained at a global batch of {global_batch} chunks, which "
            f"train.batch_size {batch_size} x {world_size} processes (train.gpus x train.nodes) cannot "
            f"make with a whole train.grad_accum; choose train.batch_size and the process count so that "
            f"their product divides {global_batch}, or train.resume: false to start afresh"
        )
    return global_batch // per_step


def step_micro_batches(
    perm: np.ndarray, lengths: np.ndarray, step: int, global_batch: int, batch_size: int, seed: int,
    epoch: int,
) -> list[np.ndarray]:
    """The `global_batch / batch_size` micro-batches of data step `step`, in dealing order.

    Sorted by length inside the global batch so a micro-batch crops little (length bucketing),
    ties broken at random (every UPS chunk is 10 s: sorted ids would make a micro-batch a run
    of one recording); the dealing order is drawn so no rank always gets the shortest."""
    ids = perm[step * global_batch : (step + 1) * global_batch]
    rng = np.random.default_rng([seed, epoch, step, 11])
    ties = rng.random(len(ids))
    ids = ids[np.lexsort((ties, lengths[ids]))]
    n_micro = global_batch // batch_size
    micro = [ids[i * batch_size : (i + 1) * batch_size] for i in range(n_micro)]
    return [micro[i] for i in rng.permutation(n_micro)]


def rank_schedule(
    lengths: np.ndarray,
    *,
    seed: int,
    global_batch: int,
    batch_size: int,
    rank: int,
    world_size: int,
    start_epoch: int = 0,
    start_step: int = 0,
) -> Iterator[MicroBatch]:
    """A rank's micro-batches from (start_epoch, start_step) on, epoch after epoch, for ever.

    Starting mid-epoch costs no reading: the position is arithmetic on the permutation."""
    if global_batch % (batch_size * world_size):
        raise ValueError(f"global batch {global_batch}: not batch {batch_size} x {world_size} ranks x k")
    n = len(lengths)
    per_epoch = steps_per_epoch(n, global_batch)
    if per_epoch == 0:
        return
    epoch, step = start_epoch, start_step
    while True:
        perm = epoch_permutation(n, seed, epoch)
        for s in range(step, per_epoch):
            micro = step_micro_batches(perm, lengths, s, global_batch, batch_size, seed, epoch)
            for m in range(rank, len(micro), world_size):
                yield MicroBatch(epoch, s, m, micro[m])
        epoch, step = epoch + 1, 0


def worker_share(items: Iterator[MicroBatch], worker: int, n_workers: int) -> Iterator[MicroBatch]:
    """Every `n_workers`-th item from `worker`: the DataLoader reads workers round-robin, so the
    rank sees its schedule in order."""
    for k, item in enumerate(items):
        if k % n_workers == worker:
            yield item


def valid_batches(lengths: np.ndarray, chunk_ids: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Validation batches: every chunk once, sorted by (length, id) and cut, the same for any
    number of ranks and workers (each rank takes batches `rank::ranks`)."""
    order = np.lexsort((chunk_ids, lengths))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
