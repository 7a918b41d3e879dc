"""Member index of a tar: where each member's bytes lie, read from its headers alone.

A tar is a sequence of 512-byte headers, each giving the size of the member that follows, so the
layout of a 4.5-15 GB tar can be read with one small ranged read per member instead of a
download. The walk hands Python's own `tarfile` parser a file object whose reads are ranged reads
(`RangeFile`), and lets it seek over member data without reading it: GNU long names and links,
pax headers (per member and global), base-256 sizes and every other format detail are parsed
exactly as `tarfile` parses them. Each miss of the read buffer fetches `window` bytes, so a
member's header blocks (a pax or GNU header, its record, the ustar header) usually come in one
request; a small member's data and the next header often come with it.

Directory entries are skipped; other non-regular or unsafe entries are kept with the reason
`ups.tar_reader.unsafe_reason` gives (so a member-level read counts them exactly like a whole-tar
read). `tarfile` ends a walk silently at a header it cannot parse and lists a member whose data
runs past the end of the file; the walk reports both (`bad_header`, `truncated`), and the stage
then falls back to the whole tar, whose reader counts the damage as it always has (so does a GNU
sparse member, `unsupported`: its bytes are not one range).
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ups.atomic import atomic_write
from ups.keys import normalize_key
from ups.tar_reader import unsafe_reason

WINDOW = 2048  # bytes per buffer miss: a header with its pax or GNU record (1.5 KiB) in one request
SCHEMA = pa.schema([("tar", pa.int32()), ("name", pa.string()), ("key", pa.string()),
                    ("offset", pa.int64()), ("size", pa.int64()), ("skip", pa.string())])

# `read(offset, size)` -> the bytes of [offset, offset + size), fewer only at the end of the file
Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Entry:
    """One non-directory tar entry: its name, data offset and size; `skip` when unusable."""

    name: str
    offset: int
    size: int
    skip: str | None = None

    @property
    def key(self) -> str:
        return normalize_key(self.name)


@dataclass
class MemberIndex:
    """The entries of one tar in tar order, how the walk ended, and what it cost."""

    tar: int
    tar_size: int
    entries: list[Entry]
    status: str = "ok"
    reason: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # what the tar was (size, sha256, ...)
    requests: int = 0
    bytes_read: int = 0

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def member_bytes(self, keys: set[str] | None = None) -> int:
        """Bytes of the regular members (with one of `keys`, when given)."""
        return sum(e.size for e in self.entries
                   if e.skip is None and (keys is None or e.key in keys))


class RangeFile:
    """A read-only, seekable file object over `read(offset, size)`, buffered by `window`."""

    def __init__(self, read: Reader, size: int, window: int = WINDOW, name: str = "<range>") -> None:
        self._read, self.size, self.window, self.name = read, size, window, name
        self._pos = 0
        self._buf_start, self._buf = 0, b""
        self.requests = self.bytes_read = 0

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self.size}[whence]
        self._pos = max(0, base + pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        if n == 0:
            return b""
        lo = self._pos - self._buf_start
        if not (0 <= lo and lo + n <= len(self._buf)):
            want = min(max(n, self.window), self.size - self._pos)
            self._buf_start, self._buf = self._pos, self._read(self._pos, want)
            self.requests += 1
            self.bytes_read += len(self._buf)
            lo = 0
        out = self._buf[lo:lo + n]
        self._pos += len(out)
        return out

    def close(self) -> None:
        self._buf = b""


def walk(tar: int, read: Reader, size: int, *, window: int = WINDOW,
         source: dict[str, Any] | None = None) -> MemberIndex:
    """Index tar number `tar` (`size` bytes) through `read`, never reading member data."""
    f = RangeFile(read, size, window, name=f"tar {tar:06d}")
    index = MemberIndex(tar, size, [], source=dict(source or {}))
    try:
        tf = tarfile.open(fileobj=f, mode="r:")  # type: ignore[call-overload]
    except (tarfile.TarError, EOFError) as exc:
        index.status, index.reason = "unreadable", f"{type(exc).__name__}: {exc}"
        index.requests, index.bytes_read = f.requests, f.bytes_read
        return index
    with tf:
        while True:
            try:
                info = tf.next()
            except (tarfile.TarError, EOFError) as exc:
                cut = "unexpected end of data" in str(exc)
                index.status = "truncated" if cut else "bad_header"
                index.reason = f"{type(exc).__name__}: {exc}"
                break
            if info is None:
                break
            if info.isdir():
                continue
            if info.sparse is not None:  # its data on disk is not [offset_data, + size)
                index.status, index.reason = "unsupported", f"{info.name}: GNU sparse member"
                break
            index.entries.append(Entry(info.name, info.offset_data, info.size if info.isfile() else 0,
                                       unsafe_reason(info)))
            if info.isfile() and info.offset_data + info.size > size:
                index.status = "truncated"
                index.reason = f"{info.name}: data ends at byte {info.offset_data + info.size} of {size}"
                break
        if index.status == "ok":
            index.status, index.reason = _end_of_walk(f, tf.offset, size)
    index.requests, index.bytes_read = f.requests, f.bytes_read
    return index


def _end_of_walk(f: RangeFile, offset: int, size: int) -> tuple[str, str]:
    """Why tarfile stopped at `offset`: the end (zero blocks or end of file) or a damaged header."""
    if offset >= size:
        return "ok", ""
    f.seek(offset)
    block = f.read(tarfile.BLOCKSIZE)
    if block.count(0) == len(block) == tarfile.BLOCKSIZE:
        return "ok", ""
    if len(block) < tarfile.BLOCKSIZE:
        return "truncated", f"a header cut at byte {size} (it starts at {offset})"
    return "bad_header", f"the header at byte {offset} does not parse"


# --------------------------------------------------------------------------------------------
# Parquet: one file per tar, the walk's outcome in the schema metadata
# --------------------------------------------------------------------------------------------

def path_for(index_dir: Path, tar: int) -> Path:
    return Path(index_dir) / f"{tar:06d}.parquet"


def write(index: MemberIndex, index_dir: Path) -> Path:
    import orjson

    e = index.entries
    table = pa.table({
        "tar": pa.array([index.tar] * len(e), pa.int32()), "name": pa.array([x.name for x in e], pa.string()),
        "key": pa.array([x.key for x in e], pa.string()),
        "offset": pa.array([x.offset for x in e], pa.int64()),
        "size": pa.array([x.size for x in e], pa.int64()),
        "skip": pa.array([x.skip for x in e], pa.string()),
    }, schema=SCHEMA)
    meta = {"status": index.status, "reason": index.reason, "tar_size": index.tar_size,
            "source": index.source, "requests": index.requests, "bytes_read": index.bytes_read}
    table = table.replace_schema_metadata(
        {"ups_member_index": orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)})
    out = path_for(index_dir, index.tar)
    with atomic_write(out) as fh:
        pq.write_table(table, fh, compression="zstd")
    return out


def read(index_dir: Path, tar: int) -> MemberIndex | None:
    """The stored index of `tar`, or None if there is none (or it cannot be read)."""
    import orjson

    p = path_for(index_dir, tar)
    if not p.is_file():
        return None
    try:
        table = pq.read_table(p)
        meta = orjson.loads((table.schema.metadata or {})[b"ups_member_index"])
    except (OSError, pa.ArrowException, KeyError, orjson.JSONDecodeError):
        return None
    cols = {c: table.column(c).to_pylist() for c in ("name", "offset", "size", "skip")}
    entries = [Entry(n, int(o), int(s), k) for n, o, s, k in
               zip(cols["name"], cols["offset"], cols["size"], cols["skip"], strict=True)]
    return MemberIndex(tar, int(meta["tar_size"]), entries, str(meta["status"]), str(meta["reason"]),
                       dict(meta.get("source") or {}), int(meta.get("requests", 0)),
                       int(meta.get("bytes_read", 0)))


# --------------------------------------------------------------------------------------------
# A tar of a dataset (`ups.dataset.Dataset`): stored index if it still describes the tar, else walk
# --------------------------------------------------------------------------------------------

def for_tar(ds: Any, tar: int, index_dir: Path | None = None, *,
            save: bool = False) -> tuple[MemberIndex, bool]:
    """(index of `tar`, whether it was walked now). A stored index is used while its recorded
    identity (size and sha256 on the hub, size and mtime on a mirror) is the tar's current one."""
    ident = ds.tar_identity(tar)
    if index_dir is not None:
        stored = read(index_dir, tar)
        if stored is not None and stored.source == ident:
            return stored, False
    index = walk(tar, lambda off, n: ds.read_tar_range(tar, off, n), int(ident["size"]), source=ident)
    if save and index_dir is not None:
        write(index, index_dir)
    return index, True
