"""Byte-deterministic WebDataset shards: the same samples always give the same tar bytes.

A sample is `<key>.pcm.npy` (int16 mono 16 kHz) and `<key>.json` (metadata, sorted keys). Members
carry mtime 0, uid/gid 0, empty owner names and mode 0644, so a resumed run, another worker count
or another number of torchrun ranks writes identical files. Each shard is written to a hidden
temporary name beside its target and renamed when closed; the tar's completion marker is written
after all its shards.
"""

from __future__ import annotations

import contextlib
import io
import os
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ups.atomic import _fsync_dir, writer_tag


def npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(a), allow_pickle=False)
    return buf.getvalue()


def json_bytes(obj: dict[str, Any]) -> bytes:
    return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY)


def _member(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


def shard_name(tar_number: int, index: int) -> str:
    return f"{tar_number:06d}-{index:03d}.tar"


class ShardWriter:
    """Writes samples of one source tar and one split into `<tar:06d>-<k:03d>.tar` shards."""

    def __init__(self, out_dir: Path, tar_number: int, max_samples: int) -> None:
        self.out_dir = out_dir
        self.tar_number = tar_number
        self.max_samples = max_samples
        self.n_shards = 0
        self._tf: tarfile.TarFile | None = None
        self._fh: Any = None
        self._tmp: Path | None = None
        self._n_in_shard = 0

    def _open(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        name = shard_name(self.tar_number, self.n_shards)
        self._tmp = self.out_dir / f".{name}.{writer_tag()}.partial"  # one per writer
        self._fh = open(self._tmp, "wb")  # noqa: SIM115 (closed in _close)
        self._tf = tarfile.open(fileobj=self._fh, mode="w", format=tarfile.USTAR_FORMAT)
        self._n_in_shard = 0

    def _close(self) -> None:
        assert self._tf is not None and self._tmp is not None
        self._tf.close()
        self._fh.flush()
        os.fsync(self._fh.fileno())
        self._fh.close()
        os.replace(self._tmp, self.out_dir / shard_name(self.tar_number, self.n_shards))
        _fsync_dir(self.out_dir)
        self.n_shards += 1
        self._tf = self._fh = self._tmp = None

    def write(self, key: str, pcm: np.ndarray, meta: dict[str, Any]) -> None:
        if self._tf is None:
            self._open()
        assert self._tf is not None
        for name, data in ((f"{key}.json", json_bytes(meta)), (f"{key}.pcm.npy", npy_bytes(pcm))):
            self._tf.addfile(_member(name, len(data)), io.BytesIO(data))
        self._n_in_shard += 1
        if self._n_in_shard >= self.max_samples:
            self._close()

    def close(self) -> None:
        if self._tf is not None:
            self._close()

    def abort(self) -> None:
        if self._tf is not None:
            # Closing writes the end blocks and flushes: on a full disk that fails again, and
            # the partial shard is discarded either way.
            for close in (self._tf.close, self._fh.close):
                with contextlib.suppress(OSError):
                    close()
            if self._tmp is not None:
                self._tmp.unlink(missing_ok=True)
            self._tf = self._fh = self._tmp = None


def iter_shard(path: str | Path) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
    """(key, pcm int16, metadata) for each sample of a shard, in order (for stages and tests)."""
    with tarfile.open(path, "r") as tf:
        pending: dict[str, dict[str, Any]] = {}
        for info in tf:
            f = tf.extractfile(info)
            if f is None:
                continue
            key, _, ext = info.name.partition(".")
            entry = pending.setdefault(key, {})
            entry[ext] = f.read()
            if "json" in entry and "pcm.npy" in entry:
                pcm = np.load(io.BytesIO(entry["pcm.npy"]), allow_pickle=False)
                yield key, pcm, orjson.loads(entry["json"])
                del pending[key]
