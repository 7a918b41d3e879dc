"""The client-side rate limit: no window of `period_s` ever holds more than `calls` calls."""

from __future__ import annotations

import asyncio
import random

import pytest

from ups.rate_limit import RateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.now += s


def test_calls_beyond_the_budget_wait_for_the_window_to_move():
    clock = Clock()
    limit = RateLimiter(3, 300.0, clock=clock, sleep=clock.sleep)
    at = []
    for _ in range(7):
        limit.acquire()
        at.append(clock.now)
    assert at == [0, 0, 0, 300, 300, 300, 600]
    assert limit.waited_s == 600  # call 4 waited 300 s, call 7 another 300 s


@pytest.mark.parametrize("case", range(5))
def test_no_window_ever_holds_more_than_the_budget(case):
    rng = random.Random(case)
    clock = Clock()
    limit = RateLimiter(10, 60.0, clock=clock, sleep=clock.sleep)
    times, asked = [], []
    for _ in range(300):
        clock.now += rng.choice([0.0, 0.0, 0.5, 3.0, 20.0])
        asked.append(clock.now)
        limit.acquire()
        times.append(clock.now)
    assert times == sorted(times)
    for i, t in enumerate(times):
        assert sum(t - 60.0 < u <= t for u in times[:i + 1]) <= 10
    # and no call waits longer than it must: until the 10th call before it leaves the window
    for i in range(len(times)):
        assert times[i] == max(asked[i], times[i - 10] + 60.0 if i >= 10 else 0.0)


def test_threads_and_coroutines_share_one_budget():
    clock = Clock()
    limit = RateLimiter(4, 300.0, clock=clock, sleep=clock.sleep)

    async def main() -> list[float]:
        return [limit.wait_s() for _ in range(9)]

    assert asyncio.run(main()) == [0, 0, 0, 0, 300, 300, 300, 300, 600]


def test_a_share_of_the_budget_and_bad_values():
    assert RateLimiter(500, share=4).calls == 125
    assert RateLimiter(3, share=8).calls == 1
    for calls, period, share in ((0, 300.0, 1), (5, 0.0, 1), (5, 300.0, 0)):
        with pytest.raises(ValueError, match="rate limit"):
            RateLimiter(calls, period, share=share)
