"""Progress bars: on for rank 0 at a terminal, off elsewhere, forced either way by UPS_PROGRESS."""

from __future__ import annotations

import io
import sys

import pytest

from ups.progress import bar, rank


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize(
    "env, tty, shown",
    [({}, True, True), ({}, False, False), ({"RANK": "1"}, True, False),
     ({"UPS_PROGRESS": "1"}, False, True), ({"UPS_PROGRESS": "0"}, True, False),
     ({"UPS_PROGRESS": "1", "RANK": "3"}, False, True)],
)
def test_when_a_bar_is_shown(monkeypatch, env, tty, shown):
    for k in ("RANK", "UPS_PROGRESS"):
        monkeypatch.delenv(k, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    err = _Tty() if tty else io.StringIO()
    monkeypatch.setattr(sys, "stderr", err)
    items = list(bar(range(5), desc="stage", unit="tar", total=5, file=err))
    assert items == [0, 1, 2, 3, 4]  # the loop is the same either way
    assert ("stage" in err.getvalue()) is shown
    if shown:
        assert "5/5" in err.getvalue() and "tar" in err.getvalue()


def test_rank_reads_torchrun_environment(monkeypatch):
    monkeypatch.setenv("RANK", "7")
    assert rank() == 7
    monkeypatch.delenv("RANK")
    assert rank() == 0
