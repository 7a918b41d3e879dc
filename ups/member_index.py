"""Member index of a tar: where each member's bytes lie, read from its headers alone.

A tar is a sequence of 512-byte headers, each giving the size of the member that follows, so the
layout of a 4.5-15 GB tar can be read with one small ranged read per member instead of a
download. The walk runs Python's own `tarfile` parser over a file object that holds only the
bytes fetched so far (`Walker`): GNU long names and links, pax headers (per member and global),
base-256 sizes and every other format detail are parsed exactly as `tarfile` parses them, and
member data is seeked over, never read. When `tarfile` asks for bytes it does not have, the walker
says which (`need()`), and whoever drives it fetches them (`feed()`): `walk()` with a blocking
`read(offset, size)` (a local mirror, a test), `ups.header_walk` with many walks in flight over an
async HTTP client (the hub). Each fetch is `window` bytes from one byte before the next header, so
a member's header blocks (a pax or GNU header, its record, the ustar header) and tarfile's
end-of-data check come in one request.

A walk given the `wanted` keys stops after the last of them (the first occurrence of each) and
records where (`next_offset`, `members_seen`, the global pax headers in force); a later walk with
more keys continues from there (`resume=`), so a tar's headers are read once however the selection
grows. The same prefix rule (`needed_entries`) decides what prepare-audio reads, member by member
or from the whole tar, so both ways see the same members and count the same skips.

Directory entries are skipped; other non-regular or unsafe entries are kept with the reason
`ups.tar_reader.unsafe_reason` gives (so a member-level read counts them exactly like a whole-tar
read). `tarfile` ends a walk silently at a header it cannot parse and lists a member whose data
runs past the end of the file; the walk reports both (`bad_header`, `truncated`), and the stage
then falls back to the whole tar, whose reader counts the damage as it always has (so does a GNU
sparse member, `unsupported`: its bytes are not one range).
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ups.atomic import atomic_write
from ups.keys import normalize_key
from ups.tar_reader import unsafe_reason

WINDOW = 2048  # bytes per fetch: a header with its pax or GNU record (1.5 KiB) in one request
FORMAT = 2  # of the stored index: 2 adds header offsets and where a partial walk stopped
AUDIO_SUFFIX = ".mp3"
SCHEMA = pa.schema([("tar", pa.int32()), ("name", pa.string()), ("key", pa.string()),
                    ("offset", pa.int64()), ("size", pa.int64()), ("skip", pa.string()),
                    ("header_offset", pa.int64())])

# What a walk costs, for estimates (`make plan`): one ranged read per member header (its blocks
# and tarfile's end-of-data check come in one window) plus the first; the async walk's client CPU
# per read, measured (bench/results/header_walk.json, 2 cores, the server on the same machine).
REQUESTS_PER_MEMBER = 1
CPU_S_PER_REQUEST = 0.00034

# `read(offset, size)` -> the bytes of [offset, offset + size), fewer only at the end of the file
Reader = Callable[[int, int], bytes]


@dataclass(frozen=True)
class Entry:
    """One non-directory tar entry: its name, data offset and size; `skip` when unusable;
    `header_offset`: where its first header block (a GNU or pax header, else ustar) starts."""

    name: str
    offset: int
    size: int
    skip: str | None = None
    header_offset: int = -1

    @property
    def key(self) -> str:
        return normalize_key(self.name)

    def is_audio(self, suffix: str = AUDIO_SUFFIX) -> bool:
        """A member a reader yields: safe, regular, named `*<suffix>`."""
        return self.skip is None and self.name.lower().endswith(suffix)


@dataclass
class MemberIndex:
    """The entries of one tar in tar order, how the walk ended, where it stopped, what it cost."""

    tar: int
    tar_size: int
    entries: list[Entry]
    status: str = "ok"
    reason: str = ""
    source: dict[str, Any] = field(default_factory=dict)  # what the tar was (size, sha256, ...)
    requests: int = 0
    bytes_read: int = 0
    next_offset: int | None = None  # where the next header starts; None: walked to the end
    members_seen: int = 0  # headers parsed (directories included)
    pax_globals: dict[str, str] = field(default_factory=dict)  # global pax headers in force there

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def complete(self) -> bool:
        """The walk reached the end of the tar (or damage): no member is left unseen."""
        return self.next_offset is None

    def covers(self, keys: Iterable[str] | None) -> bool:
        """Whether the walk so far answers for `keys` (None: every member): each one is seen as
        an audio member, or the walk is complete (a key it never saw is not in the tar)."""
        if self.complete:
            return True
        return keys is not None and set(keys) <= {e.key for e in self.entries if e.is_audio()}

    def member_bytes(self, keys: set[str] | None = None) -> int:
        """Bytes of the regular members (with one of `keys`, when given)."""
        return sum(e.size for e in self.entries
                   if e.skip is None and (keys is None or e.key in keys))


def needed_entries(entries: list[Entry], wanted: set[str] | None,
                   suffix: str = AUDIO_SUFFIX) -> list[Entry]:
    """The entries a reader of `wanted` goes through: up to the first occurrence of the last
    wanted key to appear; all of them when a key is missing or `wanted` is None."""
    if wanted is None:
        return list(entries)
    left = set(wanted)
    for i, e in enumerate(entries):
        if e.is_audio(suffix):
            left.discard(e.key)
            if not left:
                return entries[:i + 1]
    return list(entries)


class _Miss(Exception):  # noqa: N818 (control flow, never shown)
    """tarfile asked for bytes the walker has not been fed."""

    def __init__(self, offset: int, n: int) -> None:
        super().__init__(offset, n)
        self.offset, self.n = offset, n


class _FedFile:
    """A read-only, seekable file object over the bytes fed so far; any other read raises _Miss.

    The bytes one step of the walk (one tarfile call) reads are contiguous; a step whose headers
    run past the fed window asks for the continuation (`wanted_after`), which `feed` appends, so
    the step's retry finds all of them. Otherwise a fed window replaces the previous one.
    """

    def __init__(self, size: int, name: str) -> None:
        self.size, self.name = size, name
        self._pos, self._buf_start, self._buf = 0, 0, b""
        self._first: int | None = None  # where the current step first read

    def seekable(self) -> bool:
        return True

    def readable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, pos: int, whence: int = 0) -> int:
        self._pos = max(0, {0: 0, 1: self._pos, 2: self.size}[whence] + pos)
        return self._pos

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = self.size - self._pos
        n = max(0, min(n, self.size - self._pos))
        if n == 0:
            return b""
        if self._first is None:
            self._first = self._pos
        lo = self._pos - self._buf_start
        if not (0 <= lo and lo + n <= len(self._buf)):
            raise _Miss(self._pos, n)
        self._pos += n
        return self._buf[lo:lo + n]

    def new_step(self) -> None:
        self._first = None

    def wanted(self, miss: _Miss, window: int) -> tuple[int, int]:
        """The (offset, size) to fetch for `miss`: the continuation of the fed bytes when the
        step already read some of them, else a fresh window at the miss."""
        end = self._buf_start + len(self._buf)
        start = end if self._first is not None and self._first < miss.offset <= end else miss.offset
        return start, min(max(miss.offset + miss.n - start, window), self.size - start)

    def feed(self, offset: int, data: bytes) -> None:
        end = self._buf_start + len(self._buf)
        if self._first is not None and offset == end and self._buf_start <= self._first < end:
            self._buf = self._buf[self._first - self._buf_start:] + data
            self._buf_start = self._first
        else:
            self._buf_start, self._buf = offset, data

    def close(self) -> None:
        self._buf = b""


class Walker:
    """One tar's header walk as a state machine: `need()` runs tarfile until it lacks bytes and
    returns the (offset, size) to fetch, or None when the walk is over; `feed()` hands them in.

    `wanted` (normalised keys) ends the walk after the first occurrence of the last of them;
    `resume` (an index of the same tar that stopped early) continues it from where it stopped.
    """

    def __init__(self, tar: int, size: int, *, wanted: Iterable[str] | None = None,
                 resume: MemberIndex | None = None, source: dict[str, Any] | None = None,
                 window: int = WINDOW, suffix: str = AUDIO_SUFFIX) -> None:
        self.window, self.suffix = window, suffix
        self._file = _FedFile(size, f"tar {tar:06d}")
        self.index = MemberIndex(tar, size, [], source=dict(source or {}))
        self._start, self._done = 0, False
        if resume is not None:
            self.index = MemberIndex(
                tar, size, list(resume.entries), resume.status, resume.reason,
                dict(source if source is not None else resume.source), resume.requests,
                resume.bytes_read, resume.next_offset, resume.members_seen, dict(resume.pax_globals))
            self._start, self._done = resume.next_offset or 0, resume.complete
        self._left = None if wanted is None else (
            set(wanted) - {e.key for e in self.index.entries if e.is_audio(suffix)})
        if self._left is not None and not self._left and not self._done:
            self._finish("ok", "", self._start)
        self._tf: tarfile.TarFile | None = None
        self._ending_at: int | None = None  # tarfile found no further header here: why?
        self._asked: tuple[int, int] | None = None

    def need(self) -> tuple[int, int] | None:
        while not self._done:
            self._file.new_step()
            try:
                self._step()
            except _Miss as miss:
                asked = self._file.wanted(miss, self.window)
                if self._tf is None and 0 < self._start == miss.offset:
                    # a resumed walk reads from one byte earlier, as the walk it continues would
                    # have (tarfile's end-of-data check): the same requests, so the same index
                    asked = (self._start - 1, min(self.window, self._file.size - self._start + 1))
                if asked == self._asked:  # fed and still missing: the reader returned too little
                    raise RuntimeError(f"tar {self.index.tar:06d}: bytes {asked} were fed short") from None
                self._asked = asked
                return asked
        return None

    def checkpoint(self) -> MemberIndex | None:
        """A copy of the walk so far that a later walk can resume from (None while a member is
        half-read or the walk has not started or is over)."""
        tf = self._tf
        if self._done or tf is None or self._ending_at is not None:
            return None
        if getattr(tf, "firstmember", None) is not None:  # read by tarfile, not yet recorded
            return None
        i = self.index
        return MemberIndex(i.tar, i.tar_size, list(i.entries), "ok", "", dict(i.source), i.requests,
                           i.bytes_read, tf.offset, i.members_seen, dict(tf.pax_headers))

    def feed(self, offset: int, data: bytes) -> None:
        self._file.feed(offset, data)
        self.index.requests += 1
        self.index.bytes_read += len(data)

    def _step(self) -> None:
        if self._ending_at is not None:
            self._finish(*_end_of_walk(self._file, self._ending_at, self._file.size), None)
            return
        if self._tf is None:
            self._file.seek(self._start)
            try:
                self._tf = tarfile.TarFile(fileobj=self._file, mode="r",  # type: ignore[arg-type]
                                           pax_headers=dict(self.index.pax_globals))
            except (tarfile.TarError, EOFError) as exc:
                self._finish("unreadable", f"{type(exc).__name__}: {exc}", None)
            return
        try:
            info = self._tf.next()
        except (tarfile.TarError, EOFError) as exc:
            cut = "unexpected end of data" in str(exc)
            self._finish("truncated" if cut else "bad_header", f"{type(exc).__name__}: {exc}", None)
            return
        if info is None:
            self._ending_at = self._tf.offset
            return
        self._add(info)

    def _add(self, info: tarfile.TarInfo) -> None:
        self.index.members_seen += 1
        if info.isdir():
            return
        if info.sparse is not None:  # its data on disk is not [offset_data, + size)
            self._finish("unsupported", f"{info.name}: GNU sparse member", None)
            return
        e = Entry(info.name, info.offset_data, info.size if info.isfile() else 0, unsafe_reason(info),
                  info.offset)
        self.index.entries.append(e)
        if info.isfile() and info.offset_data + info.size > self._file.size:
            self._finish("truncated", f"{info.name}: data ends at byte {info.offset_data + info.size} "
                                      f"of {self._file.size}", None)
        elif self._left is not None and e.is_audio(self.suffix):
            self._left.discard(e.key)
            if not self._left:
                assert self._tf is not None
                self._finish("ok", "", self._tf.offset)

    def _finish(self, status: str, reason: str, next_offset: int | None) -> None:
        self.index.status, self.index.reason, self.index.next_offset = status, reason, next_offset
        if self._tf is not None:
            self.index.pax_globals = dict(self._tf.pax_headers)
        self._done = True


def walk(tar: int, read: Reader, size: int, *, wanted: Iterable[str] | None = None,
         resume: MemberIndex | None = None, window: int = WINDOW,
         source: dict[str, Any] | None = None) -> MemberIndex:
    """Index tar number `tar` (`size` bytes) through a blocking `read`, never reading member
    data (see `Walker` for `wanted` and `resume`)."""
    w = Walker(tar, size, wanted=wanted, resume=resume, source=source, window=window)
    while (need := w.need()) is not None:
        w.feed(need[0], read(*need))
    return w.index


def walk_requests(n_members: int) -> int:
    """Ranged reads of a walk through `n_members` members (to the end of the tar: one more)."""
    return REQUESTS_PER_MEMBER * n_members + 1


def walk_estimate_s(n_requests: int, max_tar_requests: int, latency_s: float, walks: int,
                    n_tars: int, cpu_s_per_request: float = CPU_S_PER_REQUEST) -> float:
    """Wall seconds of index-members' walks: the longest of the requests shared by the walks in
    flight (min(walks, n_tars)) at `latency_s` each, one tar's reads in sequence, and the
    client's CPU (one core: the walks share one event loop)."""
    in_flight = max(1, min(walks, n_tars))
    return max(n_requests * latency_s / in_flight, max_tar_requests * latency_s,
               n_requests * cpu_s_per_request)


def _end_of_walk(f: _FedFile, offset: int, size: int) -> tuple[str, str]:
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


def header_mismatch(entry: Entry, head: bytes, pax_globals: dict[str, str] | None = None) -> str | None:
    """Why `head`, the tar's bytes from `entry.header_offset` up to its data, is not the header
    the index recorded for `entry` (parsed by tarfile, as the walk parsed it), or None."""
    try:
        tf = tarfile.TarFile(fileobj=io.BytesIO(head), mode="r", pax_headers=dict(pax_globals or {}))
        info = tf.next()
    except (tarfile.TarError, EOFError) as exc:
        return f"no tar header at byte {entry.header_offset} ({type(exc).__name__}: {exc})"
    if info is None:
        return f"no tar header at byte {entry.header_offset}"
    got = (info.name, info.size, entry.header_offset + info.offset_data)
    if got != (entry.name, entry.size, entry.offset):
        return (f"the header at byte {entry.header_offset} is {info.name!r} ({info.size} bytes at "
                f"byte {got[2]}), the member index says {entry.name!r} ({entry.size} bytes at byte "
                f"{entry.offset})")
    return None


# --------------------------------------------------------------------------------------------
# Parquet: one file per tar, the walk's outcome and where it stopped in the schema metadata
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
        "header_offset": pa.array([x.header_offset for x in e], pa.int64()),
    }, schema=SCHEMA)
    meta = {"format": FORMAT, "status": index.status, "reason": index.reason,
            "tar_size": index.tar_size, "source": index.source, "requests": index.requests,
            "bytes_read": index.bytes_read, "next_offset": index.next_offset,
            "members_seen": index.members_seen, "pax_globals": index.pax_globals}
    table = table.replace_schema_metadata(
        {"ups_member_index": orjson.dumps(meta, option=orjson.OPT_SORT_KEYS)})
    out = path_for(index_dir, index.tar)
    with atomic_write(out) as fh:
        pq.write_table(table, fh, compression="zstd")
    return out


def read(index_dir: Path, tar: int) -> MemberIndex | None:
    """The stored index of `tar`, or None if there is none (or it cannot be read, or it is of
    another format: walked again)."""
    import orjson

    p = path_for(index_dir, tar)
    if not p.is_file():
        return None
    try:
        table = pq.read_table(p)
        meta = orjson.loads((table.schema.metadata or {})[b"ups_member_index"])
        if meta.get("format") != FORMAT:
            return None
        cols = {c: table.column(c).to_pylist() for c in ("name", "offset", "size", "skip", "header_offset")}
    except (OSError, pa.ArrowException, KeyError, orjson.JSONDecodeError):
        return None
    entries = [Entry(n, int(o), int(s), k, int(h)) for n, o, s, k, h in
               zip(cols["name"], cols["offset"], cols["size"], cols["skip"], cols["header_offset"],
                   strict=True)]
    nxt = meta.get("next_offset")
    return MemberIndex(tar, int(meta["tar_size"]), entries, str(meta["status"]), str(meta["reason"]),
                       dict(meta.get("source") or {}), int(meta.get("requests", 0)),
                       int(meta.get("bytes_read", 0)), None if nxt is None else int(nxt),
                       int(meta.get("members_seen", 0)), dict(meta.get("pax_globals") or {}))


# --------------------------------------------------------------------------------------------
# A tar of a dataset (`ups.dataset.Dataset`): stored index if it still describes the tar, else walk
# --------------------------------------------------------------------------------------------

def stored_for(index_dir: Path | None, tar: int, ident: dict[str, Any]) -> MemberIndex | None:
    """The stored index of `tar` while its recorded identity (size and sha256 on the hub; size,
    mtime and ctime on a mirror) is the tar's current one, else None."""
    stored = read(index_dir, tar) if index_dir is not None else None
    return stored if stored is not None and stored.source == ident else None


def for_tar(ds: Any, tar: int, index_dir: Path | None = None, *, wanted: Iterable[str] | None = None,
            save: bool = False) -> tuple[MemberIndex, bool]:
    """(index of `tar` covering `wanted`, whether headers were read now). A stored index that
    covers them is used as it is; one that stopped short of them is continued."""
    ident = ds.tar_identity(tar)
    stored = stored_for(index_dir, tar, ident)
    if stored is not None and stored.covers(wanted):
        return stored, False
    index = walk(tar, lambda off, n: ds.read_tar_range(tar, off, n), int(ident["size"]), wanted=wanted,
                 resume=stored, source=ident)
    if save and index_dir is not None:
        write(index, index_dir)
    return index, True
