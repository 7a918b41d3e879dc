"""The global training order at the real run's shape: 100 h, 200 uneven tars, 8 ranks x 4 workers."""

from __future__ import annotations

from itertools import islice

import numpy as np
import pytest

from bench.data_order import contiguous_batches, mix, schedule_batches, synthetic_catalogue
from ups.config import ConfigError
from ups.data_order import (
    elastic_accum,
    rank_schedule,
    step_micro_batches,
    steps_per_epoch,
    valid_batches,
    worker_share,
)


@pytest.fixture(scope="module")
def catalogue():
    return synthetic_catalogue(100.0)


def test_every_chunk_once_per_epoch_across_8_ranks_x_4_workers_checked_by_id(catalogue):
    tars, _ = catalogue
    n, g = len(tars), 64 * 8
    for epoch in (0, 1):
        seen = np.concatenate(schedule_batches(n, 8, 4, 64, accum=1, epoch=epoch))
        assert len(seen) == len(np.unique(seen)) == steps_per_epoch(n, g) * g
        assert n - len(seen) < g  # only the last partial global batch sits out
        assert set(seen.tolist()) <= set(range(n))
    a, b = (np.concatenate(schedule_batches(n, 8, 4, 64, accum=1, epoch=e)) for e in (0, 1))
    assert not np.array_equal(np.sort(a[:512]), np.sort(b[:512]))  # epochs reshuffle


def test_micro_batches_mix_source_tars_like_random_batches(catalogue):
    tars, files = catalogue
    n = len(tars)
    ours = mix(schedule_batches(n, 8, 4, 64, accum=1), tars, files)
    rng = np.random.default_rng(3)
    random = mix([rng.choice(n, 64, replace=False) for _ in range(500)], tars, files)
    assert ours["tars_per_micro_batch"] >= 0.8 * random["tars_per_micro_batch"]
    assert ours["same_file_pair_share"] <= 1.5 * random["same_file_pair_share"]
    # the per-stream layout this replaces: a stream sees a few tars of the corpus
    contiguous = mix(contiguous_batches(n, 32, 64, rng), tars, files)
    assert contiguous["tars_per_micro_batch"] < 0.3 * random["tars_per_micro_batch"]


def _step_sets(n, ranks, workers, batch, accum, steps):
    """{step: sorted chunk ids of that step, all ranks and workers together}."""
    lengths = np.full(n, 500)
    out: dict[int, list[int]] = {}
    g = batch * accum * ranks
    for r in range(ranks):
        for w in range(workers):
            items = rank_schedule(lengths, seed=5, global_batch=g, batch_size=batch, rank=r, world_size=ranks)
            for mb in worker_share(islice(items, steps * accum), w, workers):
                out.setdefault(mb.step, []).extend(mb.indices.tolist())
    return {s: sorted(v) for s, v in out.items()}


def test_a_step_trains_the_same_chunks_whatever_the_split_of_its_global_batch():
    ref = _step_sets(300, 1, 1, 16, 1, steps=5)
    for ranks, workers, batch, accum in [(2, 2, 4, 2), (4, 1, 2, 2), (1, 4, 8, 2), (8, 3, 2, 1)]:
        assert _step_sets(300, ranks, workers, batch, accum, steps=5) == ref, (ranks, workers, batch, accum)


def test_a_start_mid_epoch_continues_the_schedule_without_the_steps_before():
    lengths = np.random.default_rng(0).integers(100, 500, 200)
    kw = {"seed": 1, "global_batch": 24, "batch_size": 4, "rank": 1, "world_size": 3}
    full = list(islice(rank_schedule(lengths, **kw), 60))
    per_epoch = steps_per_epoch(200, 24) * 2  # 2 micro-batches per step on this rank
    tail = list(islice(rank_schedule(lengths, start_epoch=1, start_step=2, **kw), 60 - per_epoch - 4))
    expected = full[per_epoch + 4 :]
    assert [(m.epoch, m.step, m.micro) for m in tail] == [(m.epoch, m.step, m.micro) for m in expected]
    assert all(np.array_equal(a.indices, b.indices) for a, b in zip(tail, expected, strict=True))


def test_micro_batches_are_length_bucketed_within_the_step():
    lengths = np.random.default_rng(0).integers(100, 500, 400)
    perm = np.random.default_rng(1).permutation(400)
    micro = step_micro_batches(perm, lengths, 0, 64, 8, seed=0, epoch=0)
    spans = sorted((lengths[m].min(), lengths[m].max()) for m in micro)
    assert all(hi <= lo_next for (_, hi), (lo_next, _) in zip(spans, spans[1:], strict=False))  # disjoint
    assert sorted(np.concatenate(micro).tolist()) == sorted(perm[:64].tolist())


def test_a_global_batch_the_ranks_cannot_split_is_refused():
    with pytest.raises(ValueError, match="global batch 24"):
        next(rank_schedule(np.full(100, 5), seed=0, global_batch=24, batch_size=5, rank=0, world_size=1))


def test_a_resume_keeps_the_global_batch_with_the_accumulation_or_names_the_keys():
    assert elastic_accum(8, 2, 2) == 2  # 8 chunks a step: 2 x 2 processes x accumulation 2
    assert elastic_accum(64, 8, 8) == 1
    with pytest.raises(ConfigError, match="train.batch_size 3 x 2 processes"):
        elastic_accum(8, 3, 2)


def test_validation_batches_do_not_depend_on_the_ranks():
    lengths = np.random.default_rng(0).integers(100, 500, 50)
    batches = valid_batches(lengths, np.arange(50), 4)
    assert sorted(np.concatenate(batches).tolist()) == list(range(50))
    assert all(len(b) == 4 for b in batches[:-1]) and len(batches[-1]) == 2
