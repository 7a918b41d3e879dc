"""A client-side limit on calls to a rate-limited service: at most `calls` in any `period_s`.

The hub counts requests per account in 5-minute windows, in separate budgets for its API
(metadata: paths-info, revision lookups) and for `/resolve/` (huggingface.co/docs/hub/rate-limits:
1,000 and 5,000 per 5 minutes for a free account). Going over answers 429 for the rest of the
window, to every process of the account, so the kit keeps below the budget itself rather than
learning it from errors. The limit is a sliding window (no `period_s` span ever holds more than
`calls`), shared by the threads and coroutines of a process; processes that share one budget each
take a share of it (`share`).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from collections.abc import Callable

PERIOD_S = 300.0  # the hub's window


class RateLimiter:
    """Reserves call slots: `wait_s()` books the next free slot and says how long to wait for it."""

    def __init__(self, calls: int, period_s: float = PERIOD_S, *, share: int = 1,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        if calls < 1 or period_s <= 0 or share < 1:
            raise ValueError(f"a rate limit needs calls >= 1, period_s > 0 and share >= 1, got "
                             f"{calls}, {period_s}, {share}")
        self.calls, self.period_s = max(1, calls // share), period_s
        self._clock, self._sleep = clock, sleep
        self._slots: deque[float] = deque()  # booked call times, ascending
        self._lock = threading.Lock()
        self.waited_s = 0.0  # total wait asked of callers (for logs and tests)

    def wait_s(self) -> float:
        """Book a slot; the seconds until it (0 when the budget has room now)."""
        with self._lock:
            now = self._clock()
            while self._slots and self._slots[0] <= now - self.period_s:
                self._slots.popleft()
            at = now
            if len(self._slots) >= self.calls:
                at = max(now, self._slots[-self.calls] + self.period_s, self._slots[-1])
            self._slots.append(at)
            self.waited_s += at - now
            return at - now

    def acquire(self) -> None:
        """Block until a call may go out."""
        wait = self.wait_s()
        if wait > 0:
            self._sleep(wait)

    async def acquire_async(self) -> None:
        """Await until a call may go out (other coroutines run meanwhile)."""
        wait = self.wait_s()
        if wait > 0:
            await asyncio.sleep(wait)
