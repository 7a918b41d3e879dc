"""STAND-IN for the dataset-access module (issue 4 branch only; replace with the real one at merge).

Local-only: `tar(n)` yields `<local_root>/<tar_path(n)>`; `prefetch` does nothing.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from ups.config import DatasetConfig
from ups.keys import tar_path


class LocalDataset:
    def __init__(self, cfg: DatasetConfig) -> None:
        self.root = Path(cfg.local_root)

    @contextlib.contextmanager
    def tar(self, tar_number: int) -> Iterator[Path]:
        yield self.root / tar_path(tar_number)

    def prefetch(self, numbers: Iterable[int]) -> None:
        return None

    def tar_size(self, tar_number: int) -> int:
        return (self.root / tar_path(tar_number)).stat().st_size


def open_dataset(cfg: DatasetConfig) -> LocalDataset:
    return LocalDataset(cfg)
