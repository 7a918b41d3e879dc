"""How well the training order mixes, at the real run's shape, with the trainer's own schedule.

A synthetic catalogue shaped like 100 h of UPS chunks (200 source tars of uneven size, files of
1-10 min cut into 10 s chunks), dealt by `ups.data_order` to 8 ranks x 4 workers at batch 64 x
accumulation 1, against two references measured in the same run: random micro-batches of the
whole corpus (the ideal) and per-stream contiguous runs of the shard order shuffled within each
stream (the best a per-stream shuffle buffer can do). Figures: source tars and same-file pairs
per micro-batch, chunks that sit out an epoch, steps per epoch.

    python -m bench.data_order            # writes bench/results/data_order.json
"""

from __future__ import annotations

import argparse
import json
import os
from itertools import islice
from pathlib import Path

import numpy as np

from ups.data_order import rank_schedule, steps_per_epoch, worker_share

ROOT = Path(__file__).resolve().parents[1]


def synthetic_catalogue(
    hours: float = 100.0, n_tars: int = 200, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """(tar, file) of every 10 s chunk, in catalogue (tar) order."""
    rng = np.random.default_rng(seed)
    n_chunks = int(hours * 360)
    share = rng.lognormal(0.0, 1.0, n_tars)
    per_tar = np.maximum(1, np.round(share / share.sum() * n_chunks)).astype(int)
    tars, files = [], []
    file_id = 0
    for t, n in enumerate(per_tar):
        left = int(n)
        while left > 0:
            k = min(left, int(rng.integers(6, 61)))  # a 1-10 min file
            tars += [t] * k
            files += [file_id] * k
            file_id += 1
            left -= k
    return np.asarray(tars), np.asarray(files)


def mix(batches: list[np.ndarray], tars: np.ndarray, files: np.ndarray) -> dict[str, float]:
    """Mean distinct source tars per micro-batch, and the share of same-file pairs."""
    n_tars = [len(np.unique(tars[b])) for b in batches]
    pairs = same = 0
    for b in batches:
        _, counts = np.unique(files[b], return_counts=True)
        same += int((counts * (counts - 1) // 2).sum())
        pairs += len(b) * (len(b) - 1) // 2
    return {"tars_per_micro_batch": float(np.mean(n_tars)), "same_file_pair_share": same / max(pairs, 1)}


def schedule_batches(
    n: int, ranks: int, workers: int, batch: int, accum: int, epoch: int = 0
) -> list[np.ndarray]:
    """Every micro-batch of one epoch, as each (rank, worker) stream reads it."""
    lengths = np.full(n, 500)  # every chunk 10 s
    g = batch * accum * ranks
    per_rank = steps_per_epoch(n, g) * accum
    out = []
    for r in range(ranks):
        for w in range(workers):
            items = rank_schedule(lengths, seed=0, global_batch=g, batch_size=batch, rank=r, world_size=ranks,
                                  start_epoch=epoch)
            share = worker_share(islice(items, per_rank), w, workers)
            out += [mb.indices for mb in share]
    return out


def contiguous_batches(n: int, n_streams: int, batch: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Per-stream contiguous runs of the catalogue, each shuffled as a whole, cut into batches."""
    out = []
    base = n // n_streams
    for s in range(n_streams):
        run = rng.permutation(np.arange(s * base, (s + 1) * base))
        out += [run[i : i + batch] for i in range(0, len(run) - batch + 1, batch)]
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--hours", type=float, default=100.0)
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "data_order.json"))
    args = p.parse_args(argv)
    tars, files = synthetic_catalogue(args.hours)
    n, ranks, workers, batch = len(tars), 8, 4, 64
    rng = np.random.default_rng(1)
    ours = schedule_batches(n, ranks, workers, batch, accum=1)
    random = [rng.choice(n, batch, replace=False) for _ in range(len(ours))]
    contiguous = contiguous_batches(n, ranks * workers, batch, rng)
    g = batch * ranks
    result = {
        "shape": {"hours": args.hours, "chunks": n, "tars": int(tars.max()) + 1, "ranks": ranks,
                  "workers": workers, "batch": batch, "accum": 1, "global_batch": g},
        "global_order": mix(ours, tars, files),
        "random_batches": mix(random, tars, files),
        "per_stream_contiguous": mix(contiguous, tars, files),
        "steps_per_epoch": steps_per_epoch(n, g),
        "chunks_sitting_out": n - sum(len(b) for b in ours),
        "chunks_sitting_out_share": (n - sum(len(b) for b in ours)) / n,
        "per_stream_contiguous_sitting_out_share": (n - sum(len(b) for b in contiguous)) / n,
        "load_1min": os.getloadavg()[0],
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
