"""Preemption requests: a signal or the request file sets one; the handlers come and go cleanly."""

from __future__ import annotations

import os
import signal

import pytest

from ups import preempt
from ups.distributed import Dist


@pytest.fixture
def handlers(monkeypatch):
    monkeypatch.delenv("UPS_PREEMPT_FILE", raising=False)
    before = {s: signal.getsignal(s) for s in preempt.SIGNALS}
    preempt.install()
    yield before
    preempt.uninstall()


@pytest.mark.parametrize("sig", preempt.SIGNALS)
def test_a_signal_becomes_a_request_not_a_kill(handlers, sig):
    assert not preempt.requested(Dist())
    os.kill(os.getpid(), sig)
    assert preempt.requested(Dist())
    preempt.install()  # a new run starts without the old request
    assert not preempt.requested(Dist())


def test_the_request_file_asks_too(handlers, monkeypatch, tmp_path):
    flag = tmp_path / "preempt-1"
    monkeypatch.setenv("UPS_PREEMPT_FILE", str(flag))
    assert not preempt.requested(Dist())
    flag.touch()
    assert preempt.requested(Dist())


def test_uninstall_gives_back_the_handlers_from_before(handlers):
    preempt.uninstall()
    assert {s: signal.getsignal(s) for s in preempt.SIGNALS} == handlers


def test_preempted_exits_with_the_requeue_code():
    with pytest.raises(SystemExit) as exc:
        raise preempt.Preempted(step=12)
    assert exc.value.code == preempt.EXIT_CODE == 75 and exc.value.step == 12
