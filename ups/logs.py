"""Logging set-up, called once by the CLI. Rank > 0 under torchrun logs warnings only."""

from __future__ import annotations

import logging
import os


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
    for noisy in ("urllib3", "httpx", "huggingface_hub", "filelock", "fsspec"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
