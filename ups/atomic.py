"""Atomic writes: a killed run never leaves a half file that a later run trusts.

Files are written to a temporary name in the same directory, flushed, fsynced and renamed over
the target (`os.replace` is atomic on POSIX within one filesystem). Directories are built in a
sibling `<name>.partial` and renamed into place. Long stages record each finished unit with a
small JSON marker written last, so a restart skips exactly the units whose marker exists.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import itertools
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import orjson

PathLike = str | os.PathLike[str]


def _read_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; outputs get the mode a plain open() would give them (0666 minus the
# umask), so other users and groups read them as the umask allows. Read once, at import (before
# any worker thread starts), since reading it means setting it for a moment.
FILE_MODE = 0o666 & ~_read_umask()


_WRITERS = itertools.count()


def writer_tag() -> str:
    """host.pid.n, unique per call: in a temporary's name, so that two writers of one file (two
    array tasks, a task and its requeued copy on another node, two threads) never open, rename or
    delete each other's."""
    return f"{socket.gethostname()}.{os.getpid()}.{next(_WRITERS)}"


@contextlib.contextmanager
def locked(path: PathLike) -> Iterator[None]:
    """An exclusive `flock` on `path` (created), held for the block; waits while another holds it.

    Across nodes this needs a file system whose locks work there (NFSv4, Lustre with `flock`).
    """
    lock = Path(path)
    lock.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    """Persist a rename: the directory entry itself must reach the disk."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: PathLike, mode: str = "wb") -> Iterator[IO[Any]]:
    """Open a temporary file beside `path`; on success it replaces `path`, on error it is removed."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, mode) as fh:
            os.fchmod(fh.fileno(), FILE_MODE)
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
        _fsync_dir(target.parent)
    except BaseException as exc:
        if isinstance(exc, OSError) and _disk_full(exc, target.parent):
            exc.add_note(f"disk full while writing {target}: nothing was left at that name; "
                         "free space and rerun (finished units are kept)")
        tmp.unlink(missing_ok=True)
        raise


def _disk_full(exc: OSError, where: Path) -> bool:
    """ENOSPC, or a short write (numpy's `tofile` says only "N requested and M written")."""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(where).free < (1 << 20)
    except OSError:
        return False


def write_bytes(path: PathLike, data: bytes) -> None:
    with atomic_write(path, "wb") as fh:
        fh.write(data)


def write_json(path: PathLike, obj: Any) -> None:
    """Atomic, sorted, indented JSON (numpy scalars and arrays allowed)."""
    data = orjson.dumps(
        obj, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS | orjson.OPT_SERIALIZE_NUMPY
    )
    write_bytes(path, data + b"\n")


def read_json(path: PathLike) -> Any:
    return orjson.loads(Path(path).read_bytes())


@contextlib.contextmanager
def atomic_dir(path: PathLike) -> Iterator[Path]:
    """Build a directory in `<path>.partial`, then swap it into place; an old `path` is replaced."""
    target = Path(path)
    partial = target.with_name(target.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    try:
        yield partial
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(partial, target)
    _fsync_dir(target.parent)
    if old.exists():
        shutil.rmtree(old)


def marker_path(done_dir: PathLike, unit: str) -> Path:
    return Path(done_dir) / f"{unit}.done.json"


def mark_done(done_dir: PathLike, unit: str, info: dict[str, Any] | None = None) -> None:
    """Record that `unit` is complete; call only after every file of the unit has landed."""
    write_json(marker_path(done_dir, unit), {"unit": unit, **(info or {})})


def read_done(done_dir: PathLike, unit: str) -> dict[str, Any] | None:
    p = marker_path(done_dir, unit)
    if not p.is_file():
        return None
    try:
        data = read_json(p)
    except orjson.JSONDecodeError:
        return None  # a marker is written atomically; an unreadable one is not trusted
    return data if isinstance(data, dict) else None


def clear_stale_tmp(directory: PathLike) -> int:
    """Delete `atomic_write` temporaries a killed run left under `directory`; returns how many.

    Call at the start of a stage that writes into an existing output directory, so that a rerun
    after a kill leaves the same files as an uninterrupted run (DVC hashes the whole directory).
    """
    n = 0
    root = Path(directory)
    if root.is_dir():
        for p in root.rglob(".*.tmp"):
            if p.is_file():
                p.unlink()
                n += 1
    return n
