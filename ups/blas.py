"""Matrix products whose bytes do not depend on the number of BLAS threads.

OpenBLAS splits a multi-threaded sgemm differently for each thread count, and on its AVX2
(Haswell) kernels the last bits of a product then depend on how many threads computed it: the
same 10 s of MFCC differed by up to 4.8e-6 between one and two threads, so a Slurm array task, a
torchrun rank started with `OMP_NUM_THREADS=1` or a rerun on a busier machine wrote other bytes
than the run before it. Every product whose result reaches an output DVC tracks therefore runs
inside `fixed_blas()`, on ONE BLAS thread. Where a product is large enough to want several cores,
`map_blocks` cuts it into blocks of a fixed number of rows (a function of the data, never of the
core count) and runs the blocks on a thread pool, each on one BLAS thread: the cores are used and
the result is the same for 1, 2 or 64 of them.

The pool has as many threads as BLAS had before the pin (so `OMP_NUM_THREADS`,
`OPENBLAS_NUM_THREADS` and a Slurm job's CPU binding still say how many cores are used).
Torch's own CPU kernels (MKL, oneDNN) are not OpenBLAS and are not pinned here.
"""

from __future__ import annotations

import functools
import sys
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])

# rows per block in `map_blocks`: 4096 rows x 500 centroids of float32 distances is 8 MB per thread
BLOCK_ROWS = 4096
# products below this many multiply-adds run inline: a pool's hand-off costs more than it gives
POOL_MIN_MACS = 50_000_000

# modules that load a BLAS (numpy's, scipy's, sklearn's via scipy): the controller is rebuilt when
# one of them appears, because threadpoolctl sees only the libraries loaded when it looked (the
# `ups` command enters the pin before a stage imports numpy)
_BLAS_LOADERS = ("numpy", "scipy.linalg", "sklearn", "torch")

_lock = threading.RLock()
_depth = 0
_limiters: list[Any] = []
_threads = 1
_controller: Any = None
_controller_key: tuple[bool, ...] | None = None


def _refresh_controller() -> bool:
    """Rebuild the controller when a BLAS-loading module appeared; True when it was rebuilt."""
    global _controller, _controller_key
    key = tuple(m in sys.modules for m in _BLAS_LOADERS)
    if _controller is not None and key == _controller_key:
        return False
    from threadpoolctl import ThreadpoolController

    _controller = ThreadpoolController().select(user_api="blas")
    _controller_key = key
    return True


@contextmanager
def fixed_blas() -> Iterator[None]:
    """Every BLAS library of the process on one thread inside; re-entrant, from any thread.

    The outermost entry records the thread count BLAS had (the pool size of `map_blocks`) and
    restores it on exit. A nested entry pins the libraries loaded since (scipy's, when sklearn
    was imported inside), so a stage pinned as a whole stays pinned."""
    global _depth, _threads
    with _lock:
        if _refresh_controller() or _depth == 0:
            counts = [int(lib.num_threads) for lib in _controller.lib_controllers]
            _threads = max([1, *counts]) if _depth == 0 else max([_threads, *counts])
            _limiters.append(_controller.limit(limits=1))
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                while _limiters:
                    _limiters.pop().restore_original_limits()


def single_threaded(fn: F) -> F:
    """Decorator: `fn` runs inside `fixed_blas()`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with fixed_blas():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def pool_threads() -> int:
    """Threads `map_blocks` uses: BLAS's own count before the pin (1 outside `fixed_blas`)."""
    return _threads if _depth else 1


def blocks(n_rows: int, block_rows: int = BLOCK_ROWS) -> list[tuple[int, int]]:
    """[start, stop) of each block of `block_rows` rows (the last one shorter)."""
    return [(s, min(s + block_rows, n_rows)) for s in range(0, n_rows, block_rows)]


def map_blocks(fn: Callable[[int, int], T], n_rows: int, macs_per_row: float,
               block_rows: int = BLOCK_ROWS) -> list[T]:
    """[fn(start, stop) for each fixed block], in block order, on a pool when it pays.

    Call inside `fixed_blas()`: each call of `fn` then computes on one BLAS thread, and the
    results do not depend on whether or how wide a pool ran them."""
    spans = blocks(n_rows, block_rows)
    threads = min(pool_threads(), len(spans))
    if threads <= 1 or n_rows * macs_per_row < POOL_MIN_MACS:
        return [fn(s, e) for s, e in spans]
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ups-blas") as pool:
        return list(pool.map(lambda span: fn(*span), spans))
