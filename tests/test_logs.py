"""Logging set-up: INFO on rank 0, warnings only on other ranks, HTTP request lines at DEBUG only."""

from __future__ import annotations

import logging

import pytest

from ups import logs


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("rank, verbose, level", [
    ("0", False, logging.INFO), ("0", True, logging.DEBUG),
    ("2", False, logging.WARNING), ("2", True, logging.WARNING),
])
def test_the_root_level_follows_rank_and_verbosity(monkeypatch, rank, verbose, level):
    monkeypatch.setenv("RANK", rank)
    logs.setup(verbose=verbose)
    assert logging.getLogger().level == level


def _emit(name: str) -> list[logging.LogRecord]:
    seen: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            seen.append(record)

    h = Keep()
    logging.getLogger().addHandler(h)
    try:
        logging.getLogger(name).info("HTTP Request: GET https://hub.example/x 200 OK")
    finally:
        logging.getLogger().removeHandler(h)
    return seen


@pytest.mark.parametrize("client", logs.HTTP_CLIENTS)
def test_http_request_lines_are_debug_detail(monkeypatch, client):
    monkeypatch.setenv("RANK", "0")
    logs.setup(verbose=False)
    assert _emit(client) == []
    logs.setup(verbose=True)
    logs.setup(verbose=True)  # set up twice: one filter, not two
    shown = _emit(client)
    assert [r.levelname for r in shown] == ["DEBUG"]
    assert sum(isinstance(f, logs._DemoteToDebug) for f in logging.getLogger(client).filters) == 1


def test_libraries_that_could_echo_a_token_log_warnings_only(monkeypatch):
    monkeypatch.setenv("RANK", "0")
    logs.setup(verbose=True)
    assert logging.getLogger("huggingface_hub").level == logging.WARNING
    assert logging.getLogger("urllib3").level == logging.WARNING
