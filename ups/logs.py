"""Logging set-up, called once by the CLI. Rank > 0 under torchrun logs warnings only."""

from __future__ import annotations

import logging
import os

# huggingface_hub's HTTP client logs one INFO line per request ("HTTP Request: GET ... 200 OK");
# those are debugging detail, shown with -v only.
HTTP_CLIENTS = ("httpx", "httpx2")


class _DemoteToDebug(logging.Filter):
    """Re-level a logger's INFO records as DEBUG, and keep them only when DEBUG is on."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return record.levelno > logging.DEBUG or logging.getLogger().isEnabledFor(logging.DEBUG)


def setup(verbose: bool = False) -> None:
    rank = int(os.environ.get("RANK", "0"))
    level = logging.DEBUG if verbose else logging.INFO
    if rank != 0:
        level = logging.WARNING
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
        force=True,
    )
    # Libraries that log request URLs or headers stay quiet: nothing that could echo a token.
    for noisy in ("urllib3", "huggingface_hub", "filelock", "fsspec", "httpcore", "httpcore2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for name in HTTP_CLIENTS:
        client = logging.getLogger(name)
        client.setLevel(logging.NOTSET)
        if not any(isinstance(f, _DemoteToDebug) for f in client.filters):
            client.addFilter(_DemoteToDebug())
