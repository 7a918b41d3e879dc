"""ups.blas: MFCC, k-means and nearest-centroid bytes do not depend on the BLAS thread count.

On OpenBLAS' AVX2 (Haswell) kernels a multi-threaded sgemm's last bits depend on the thread
count, so the checks run in fresh processes with `OPENBLAS_CORETYPE=Haswell` (the kernel must be
chosen before numpy loads) as well as with the machine's own kernel, under 1 and 2 threads set
both ways: `threadpool_limits` inside one process and `OPENBLAS_NUM_THREADS` per process.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from ups import blas
from ups.config import KmeansConfig
from ups.kmeans import assign, fit_kmeans, kmeans_plusplus_runs
from ups.mfcc import hubert_mfcc

REPO = Path(__file__).resolve().parent.parent
HASWELL = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "512"}

# Digests of every float output under threadpool_limits(1) and (2), printed as JSON.
PROBE = r"""
import hashlib, json, sys
import numpy as np
from threadpoolctl import threadpool_limits, threadpool_info
from ups.config import KmeansConfig
from ups.kmeans import assign, fit_kmeans
from ups.mfcc import hubert_mfcc

def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()

rng = np.random.default_rng(0)
audio = (rng.standard_normal(160_000) * 0.1).astype(np.float32)
small = rng.standard_normal((3000, 39)).astype(np.float32)       # MFCC-sized: inline blocks
wide = rng.standard_normal((9000, 96)).astype(np.float32)        # large enough for the pool
cfg_small = KmeansConfig(n_clusters=20, batch_size=500, n_init=3, max_iter=3, seed=1)
cfg_wide = KmeansConfig(n_clusters=300, batch_size=5000, n_init=2, max_iter=2, seed=2)
out = {"kernel": sorted({i.get("architecture", "") for i in threadpool_info()})}
for threads in (1, 2):
    with threadpool_limits(threads):
        m = hubert_mfcc(audio)
        ks = fit_kmeans(small, cfg_small)
        kw = fit_kmeans(wide, cfg_wide)
        lab, ine = assign(wide, kw.centroids)
    out[str(threads)] = {"mfcc": digest(m), "kmeans_small": digest(ks.centroids),
                         "kmeans_wide": digest(kw.centroids), "labels": digest(lab),
                         "inertia": repr(ine), "init_inertias": repr(kw.init_inertias)}
print(json.dumps(out))
"""


def _probe(extra_env: dict[str, str]) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENBLAS_")}
    env.update({"PYTHONPATH": str(REPO), **extra_env})
    res = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True,
                         timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    return json.loads(res.stdout.splitlines()[-1])


@pytest.mark.parametrize("kernel", ["haswell", "native"])
def test_outputs_are_the_same_bytes_for_1_and_2_blas_threads(kernel):
    base = HASWELL if kernel == "haswell" else {}
    runs = [_probe({**base, "OPENBLAS_NUM_THREADS": n}) for n in ("1", "2")]
    if kernel == "haswell":
        assert runs[0]["kernel"] == ["Haswell"]
    figures = [run[t] for run in runs for t in ("1", "2")]
    for other in figures[1:]:
        assert other == figures[0]


def test_map_blocks_gives_the_same_result_inline_and_on_a_pool(monkeypatch):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((10_000, 64)).astype(np.float32)
    c = rng.standard_normal((400, 64)).astype(np.float32)
    calls: list[int] = []
    real = blas.ThreadPoolExecutor

    def counting(*a, **k):
        calls.append(k.get("max_workers", 0))
        return real(*a, **k)

    monkeypatch.setattr(blas, "ThreadPoolExecutor", counting)
    with threadpool_limits(2):
        pooled = assign(x, c)
    assert calls == [2]  # 3 blocks of 4096 rows, 2 threads
    monkeypatch.setattr(blas, "POOL_MIN_MACS", float("inf"))
    inline = assign(x, c)
    assert pooled[0].tobytes() == inline[0].tobytes() and pooled[1] == inline[1]


def test_fixed_blas_pins_one_thread_and_restores_the_count():
    from threadpoolctl import threadpool_info

    def counts() -> list[int]:
        return [int(i["num_threads"]) for i in threadpool_info() if i["user_api"] == "blas"]

    with threadpool_limits(2):
        with blas.fixed_blas():
            assert counts() and set(counts()) == {1}
            assert blas.pool_threads() == 2
            with blas.fixed_blas():  # nested: still pinned after the inner exit
                pass
            assert set(counts()) == {1}
        assert set(counts()) == {2}
    assert blas.pool_threads() == 1


def test_blocks_cover_every_row_once_in_order():
    assert blas.blocks(0) == []
    assert blas.blocks(10, 4) == [(0, 4), (4, 8), (8, 10)]
    spans = blas.blocks(10_001)
    assert spans[0][0] == 0 and spans[-1][1] == 10_001
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_in_process_results_match_under_both_thread_counts():
    rng = np.random.default_rng(5)
    audio = (rng.standard_normal(48_000) * 0.1).astype(np.float32)
    x = rng.standard_normal((6000, 80)).astype(np.float32)
    cfg = KmeansConfig(n_clusters=200, batch_size=3000, n_init=2, max_iter=2, seed=3)
    out = []
    for threads in (1, 2):
        with threadpool_limits(threads):
            km = fit_kmeans(x, cfg)
            pp = kmeans_plusplus_runs(x[:2000], 50, 3, np.random.default_rng(0))
            out.append(hashlib.sha256(hubert_mfcc(audio).tobytes() + km.centroids.tobytes()
                                      + pp.tobytes()).hexdigest())
    assert out[0] == out[1]


def test_a_pin_entered_before_numpy_loads_still_pins_it():
    """The `ups` command enters the pin before the stage imports numpy."""
    code = ("from ups import blas\n"
            "with blas.fixed_blas():\n"
            "    import numpy\n"
            "    from threadpoolctl import threadpool_info\n"
            "    with blas.fixed_blas():\n"
            "        print(sorted({i['num_threads'] for i in threadpool_info() if i['user_api'] == 'blas'}),"
            " blas.pool_threads())\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENBLAS_", "OMP_"))}
    env.update({"PYTHONPATH": str(REPO), "OPENBLAS_NUM_THREADS": "2"})
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120, check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.split() == ["[1]", "2"]
