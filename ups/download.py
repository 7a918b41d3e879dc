"""Resumable, verified, atomic file transfer: the one code path every dataset file goes through.

`fetch(meta, dest, open_range, ...)` appends to `dest.partial` from its current size (an HTTP
Range request for the hub, a seek for a local mirror), retries transient failures with
exponential backoff (honouring `Retry-After` on 429/503), checks the result against the size and
hash the source reports, and only then renames it to `dest`. A file that fails the check is
deleted and fetched again; after `max_retries` a `DownloadError` names the file and the reason.
`read_range(...)` is the same loop for one byte range held in memory (a tar member): a dropped
connection resumes from the bytes already received, the result is checked by its length.

HTTP goes through huggingface_hub's own client (`huggingface_hub.get_session()`: the user's
client factory, proxies, keep-alive connections shared with the library, `HF_HUB_OFFLINE`) with
the library's headers (`build_hf_headers`: user agent). The transfer loop stays ours: the
library's `hf_hub_download` cannot resume after a kill and nests its own fixed retries inside
ours (measured in bench/results/hub_client.json; docs/dataset.md, "Why not hf_hub_download").

The access token travels in the `Authorization` header only: it is never part of a URL, a log
record or an exception message, and it is dropped when a redirect leaves the original host.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import logging
import os
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import TypeVar

import httpx2

from ups.atomic import _fsync_dir
from ups.progress import bar

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_REDIRECTS = 5


class DownloadError(RuntimeError):
    """A file could not be fetched or verified (after retries, or a permanent HTTP error)."""


class RetryableError(Exception):
    """A transient failure: retry after `retry_after_s` (or the backoff, whichever is longer)."""

    def __init__(self, message: str, retry_after_s: float = 0.0) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MismatchError(RetryableError):
    """The bytes received are not the file the source's metadata describes (`reason`)."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"downloaded file does not match the source: {reason}")
        self.reason = reason


@dataclass(frozen=True)
class FileMeta:
    """What the source says a file is: its repo path, size and content hashes (None: unknown)."""

    path: str
    size: int
    sha256: str | None = None
    git_sha1: str | None = None  # git blob id, the check for small non-LFS files on the hub


# `open_range(offset, end)` -> context manager yielding (start, chunks): the bytes from `offset`
# up to `end` (exclusive; None: to the end of the file). `start` is the offset the bytes really
# begin at (0 when a server ignored the Range header), `chunks` the byte pieces.
RangeOpener = Callable[[int, "int | None"], AbstractContextManager[tuple[int, Iterator[bytes]]]]

_TRANSIENT = (RetryableError, httpx2.TransportError, ConnectionError, TimeoutError, socket.timeout)
T = TypeVar("T")


@dataclass
class TransferStats:
    """Requests made and body bytes received, across threads (for logs and benchmarks)."""

    requests: int = 0
    bytes: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def add(self, requests: int = 0, n_bytes: int = 0) -> None:
        with self.lock:
            self.requests += requests
            self.bytes += n_bytes


# ---------------------------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------------------------

class _Hasher:
    """sha256 and (optionally) git's blob sha1 over the same bytes."""

    def __init__(self, meta: FileMeta) -> None:
        self.sha256 = hashlib.sha256()
        self.git = hashlib.sha1(b"blob %d\0" % meta.size) if meta.git_sha1 else None  # noqa: S324

    def update(self, data: bytes) -> None:
        self.sha256.update(data)
        if self.git is not None:
            self.git.update(data)


def _hash_prefix(path: Path, meta: FileMeta, n_bytes: int) -> _Hasher:
    h = _Hasher(meta)
    with open(path, "rb") as fh:
        left = n_bytes
        while left > 0:
            block = fh.read(min(CHUNK_BYTES, left))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return h


def _mismatch(meta: FileMeta, size: int, h: _Hasher) -> str | None:
    """Why the bytes are not the file `meta` describes, or None when they are."""
    if size != meta.size:
        return f"size {size} != expected {meta.size}"
    if meta.sha256 and h.sha256.hexdigest() != meta.sha256.lower():
        return f"sha256 {h.sha256.hexdigest()} != expected {meta.sha256}"
    if meta.git_sha1 and h.git is not None and h.git.hexdigest() != meta.git_sha1.lower():
        return f"git blob id {h.git.hexdigest()} != expected {meta.git_sha1}"
    return None


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(CHUNK_BYTES):
            h.update(block)
    return h.hexdigest()


def verify(path: Path, meta: FileMeta) -> str | None:
    """None when `path` holds exactly the file `meta` describes, else the reason it does not."""
    size = path.stat().st_size
    if size != meta.size:
        return f"size {size} != expected {meta.size}"
    return _mismatch(meta, size, _hash_prefix(path, meta, size))


# ---------------------------------------------------------------------------------------------
# The transfer loop
# ---------------------------------------------------------------------------------------------

def partial_path(dest: Path) -> Path:
    return dest.with_name(dest.name + ".partial")


def fetch(
    meta: FileMeta,
    dest: str | os.PathLike[str],
    open_range: RangeOpener,
    *,
    max_retries: int,
    backoff_s: float,
    sleep: Callable[[float], None] = time.sleep,
) -> FileMeta:
    """Make `dest` hold the file `meta` describes; resume `dest.partial`, verify, rename.

    An existing `dest` is kept only if it passes the same size/hash check. Returns `meta` with the
    sha256 that was verified filled in.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_file():
        reason = verify(dest, meta)
        if reason is None:
            log.info("%s: already present and verified", dest)
            return meta if meta.sha256 else _with_sha(meta, file_sha256(dest))
        log.warning("%s exists but does not match the source (%s): fetching again", dest, reason)
    partial = partial_path(dest)
    seen: set[str] = set()

    def attempt() -> str:
        try:
            return _transfer(meta, partial, open_range)
        except MismatchError as exc:
            if exc.reason in seen:  # the same wrong bytes again: the source holds another file
                raise DownloadError(f"{meta.path}: the source sent the same wrong bytes twice "
                                    f"({exc.reason}); it does not hold the file its metadata "
                                    "describes, so fetching again cannot help") from None
            seen.add(exc.reason)
            raise

    sha = retrying(meta.path, attempt, max_retries=max_retries, backoff_s=backoff_s, sleep=sleep)
    os.replace(partial, dest)
    _fsync_dir(dest.parent)
    log.info("%s: fetched %d bytes, verified", meta.path, meta.size)
    return meta if meta.sha256 else _with_sha(meta, sha)


MAX_SERVER_WAIT_S = 1800.0  # waits a server asks for (429/503) that count as no failed attempt


class Attempts:
    """The project's one retry policy, for one request (or one file) and its retries.

    A failure waits `backoff_s` doubling per failure, at most `max_retries` times. A 429 or 503
    that says how long to wait (`Retry-After`, or the hub's `RateLimit: ...;t=<s>`) is a rate
    limit, not a failure: it is waited out as asked and not counted, up to MAX_SERVER_WAIT_S in
    all; past that such answers count like any other failure.
    """

    def __init__(self, what: str, max_retries: int, backoff_s: float) -> None:
        self.what, self.max_retries, self.backoff_s = what, max_retries, backoff_s
        self.failures = 0
        self.server_waits_s = 0.0

    def delay(self, reason: str, server_wait_s: float = 0.0, *, transient: bool = True) -> float | None:
        """Seconds to wait before the next attempt, or None: give up (after `failures`)."""
        if not transient:
            self.failures += 1
            return None
        if server_wait_s > 0 and self.server_waits_s + server_wait_s <= MAX_SERVER_WAIT_S:
            self.server_waits_s += server_wait_s
            log.warning("%s: %s; the server asks to wait %.1f s", self.what, reason, server_wait_s)
            return server_wait_s
        self.failures += 1
        if self.failures > self.max_retries:
            return None
        delay = max(self.backoff_s * 2 ** (self.failures - 1), server_wait_s)
        log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", self.what, self.failures,
                    self.max_retries + 1, reason, delay)
        return delay


def retrying(what: str, attempt_fn: Callable[[], T], *, max_retries: int, backoff_s: float,
             sleep: Callable[[float], None] = time.sleep) -> T:
    """Run `attempt_fn` until it succeeds; transient failures are retried as `Attempts` says,
    then a DownloadError names `what`. The HTTP client underneath never retries itself."""
    policy = Attempts(what, max_retries, backoff_s)
    while True:
        try:
            return attempt_fn()
        except _TRANSIENT as exc:
            if _is_offline(exc):
                raise DownloadError(f"{what}: HF_HUB_OFFLINE is set, so nothing can be fetched "
                                    "from the hub (unset it, or use files already cached)") from None
            reason = describe_error(exc)
            delay = policy.delay(reason, getattr(exc, "retry_after_s", 0.0))
            if delay is None:
                raise DownloadError(f"{what}: giving up after {policy.failures} attempt(s): "
                                    f"{reason}") from None
            sleep(delay)


def _is_offline(exc: BaseException) -> bool:
    from huggingface_hub.errors import OfflineModeIsEnabled

    return isinstance(exc, OfflineModeIsEnabled)


def _with_sha(meta: FileMeta, sha256: str) -> FileMeta:
    return FileMeta(meta.path, meta.size, sha256, meta.git_sha1)


def describe_error(exc: BaseException) -> str:
    """A short reason for a log line or error: type and message, nothing from request headers."""
    if isinstance(exc, httpx2.ConnectError):
        return f"connection failed: {exc}"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _transfer(meta: FileMeta, partial: Path, open_range: RangeOpener) -> str:
    """One attempt: append to `partial`, then verify; a mismatch deletes it. Returns the sha256."""
    offset = partial.stat().st_size if partial.is_file() else 0
    if offset > meta.size:
        log.warning("%s: partial file larger than the source (%d > %d): restarting", meta.path,
                    offset, meta.size)
        partial.unlink()
        offset = 0
    if offset < meta.size:
        if offset:
            log.info("%s: resuming at byte %d of %d", meta.path, offset, meta.size)
        with open_range(offset, None) as (start, chunks):
            hasher = _hash_prefix(partial, meta, start) if start else _Hasher(meta)
            mode = "r+b" if partial.is_file() else "wb"
            with open(partial, mode) as fh, bar(desc=f"download {meta.path}", unit="B",
                                                 unit_scale=True, total=meta.size,
                                                 initial=start, leave=False) as pbar:
                fh.seek(start)
                fh.truncate()
                written = start
                try:
                    for chunk in chunks:
                        if written + len(chunk) > meta.size:
                            raise RetryableError(f"source sent more than {meta.size} bytes")
                        fh.write(chunk)
                        hasher.update(chunk)
                        written += len(chunk)
                        pbar.update(len(chunk))
                finally:
                    fh.flush()
                    os.fsync(fh.fileno())
        size = partial.stat().st_size
    else:
        size = offset
        hasher = _hash_prefix(partial, meta, size)
    if size < meta.size:
        raise RetryableError(f"transfer ended early at byte {size} of {meta.size}")
    reason = _mismatch(meta, size, hasher)
    if reason is not None:
        partial.unlink(missing_ok=True)
        raise MismatchError(reason)
    return hasher.sha256.hexdigest()


# ---------------------------------------------------------------------------------------------
# One byte range in memory (a tar member, a tar header)
# ---------------------------------------------------------------------------------------------

def read_range(what: str, open_range: RangeOpener, offset: int, size: int, *, max_retries: int,
               backoff_s: float, sleep: Callable[[float], None] = time.sleep) -> bytes:
    """Bytes [offset, offset + size) of a file: one ranged request, resumed from the bytes
    already received when a connection drops, retried like `fetch`; checked by length."""
    buf = bytearray()

    def attempt() -> bytes:
        at = offset + len(buf)
        if len(buf) < size:
            with open_range(at, offset + size) as (start, chunks):
                if start != at:
                    raise DownloadError(f"{what}: the server ignores Range requests (answered from "
                                        f"byte {start}, asked for {at}); use dataset.fetch: tars")
                for chunk in chunks:
                    take = chunk[:size - len(buf)]
                    buf.extend(take)
                    if len(buf) >= size:
                        break
        if len(buf) < size:
            raise RetryableError(f"range ended early at byte {offset + len(buf)} of "
                                 f"{offset + size}")
        return bytes(buf)

    return retrying(what, attempt, max_retries=max_retries, backoff_s=backoff_s, sleep=sleep)


# ---------------------------------------------------------------------------------------------
# Range openers: a local file, an HTTP URL
# ---------------------------------------------------------------------------------------------

def local_range(src: Path, size: int | None = None) -> RangeOpener:
    """Read `src` from an offset (a local mirror: resumable copy through the same checks); with
    `size`, a file of another size is a DownloadError (it changed since it was described)."""

    @contextlib.contextmanager
    def open_range(offset: int, end: int | None) -> Iterator[tuple[int, Iterator[bytes]]]:
        with open(src, "rb") as fh:
            if size is not None and (now := os.fstat(fh.fileno()).st_size) != size:
                raise DownloadError(f"{src} is {now} bytes, it was {size} when it was described: "
                                    "it changed meanwhile")
            fh.seek(offset)
            if end is None:
                yield offset, iter(lambda: fh.read(CHUNK_BYTES), b"")
            else:
                left = [max(0, end - offset)]

                def block() -> bytes:
                    data = fh.read(min(CHUNK_BYTES, left[0]))
                    left[0] -= len(data)
                    return data

                yield offset, iter(block, b"")

    return open_range


def retry_after_s(value: str | None) -> float:
    if not value:
        return 0.0
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError):
        return 0.0


_RATELIMIT_RESET = re.compile(r";\s*t=(\d+(?:\.\d+)?)")


def server_wait_s(headers: Mapping[str, str]) -> float:
    """How long a 429/503 asks to wait: `Retry-After`, else the reset time of the hub's
    `RateLimit: "<bucket>";r=<left>;t=<seconds>` header; 0 when it says nothing."""
    wait = retry_after_s(headers.get("Retry-After"))
    if wait == 0 and (m := _RATELIMIT_RESET.search(headers.get("RateLimit") or "")):
        wait = float(m.group(1))
    return wait


@functools.lru_cache(maxsize=1)
def base_headers() -> dict[str, str]:
    """huggingface_hub's request headers without a token (user agent: ups + hub library)."""
    from huggingface_hub.utils import build_hf_headers

    from ups import __version__

    return build_hf_headers(token=False, library_name="ups", library_version=__version__)


def http_range(url: str, token: Callable[[], str | None], timeout_s: float,
               stats: TransferStats | None = None,
               locations: dict[str, str] | None = None, *, size: int | None = None,
               before_resolve: Callable[[], None] | None = None) -> RangeOpener:
    """GET `url` with `Range: bytes=<offset>-[<end - 1>]` through huggingface_hub's HTTP client;
    `token()` is called per request, sent as a header, dropped when a redirect leaves the host.

    `locations` (shared by the caller across requests) remembers where `url` redirected to, so the
    next ranged read of the same file goes straight to the storage URL: one hub `/resolve/`
    request per file instead of one per member or header (the hub rate-limits resolve requests);
    `before_resolve()` runs before each request to `url` itself (a rate limiter). A remembered
    location that answers 4xx (a signed URL that expired) is forgotten and `url` resolved again.
    429 and 5xx raise `RetryableError` (with the wait the server asks for); other 4xx raise
    `DownloadError`, 416 too: the URL names a commit, so a range past its end stays so. With
    `size`, an answer whose Content-Range gives another total is a DownloadError (the source
    does not hold the file its metadata describes).
    """

    @contextlib.contextmanager
    def open_range(offset: int, end: int | None) -> Iterator[tuple[int, Iterator[bytes]]]:
        from huggingface_hub import get_session

        remembered = locations.get(url) if locations is not None else None
        target = remembered or url
        origin = urllib.parse.urlsplit(url).netloc
        client = get_session()
        for _ in range(MAX_REDIRECTS + 2):
            headers = {**base_headers(), "Accept-Encoding": "identity"}
            if offset or end is not None:
                headers["Range"] = f"bytes={offset}-" + ("" if end is None else str(end - 1))
            tok = token()
            if tok and urllib.parse.urlsplit(target).netloc == origin:
                headers["Authorization"] = f"Bearer {tok}"
            if target == url and before_resolve is not None:
                before_resolve()
            if stats is not None:
                stats.add(requests=1)
            with client.stream("GET", target, headers=headers, follow_redirects=False,
                               timeout=httpx2.Timeout(timeout_s)) as response:
                status = response.status_code
                nxt = follow(url, target, remembered, status, response.headers.get("Location"),
                             locations)
                if nxt is not None:
                    target, remembered = nxt
                    continue
                start = check_answer(url, status, response.headers, offset, size)
                # raw chunks as they arrive, so a dropped connection keeps its bytes
                yield start, _counted(response.iter_raw(), stats)
                return
        raise DownloadError(f"too many redirects for {url}")

    return open_range


def follow(url: str, target: str, remembered: str | None, status: int, location: str | None,
           locations: dict[str, str] | None) -> tuple[str, str | None] | None:
    """(next target, remembered location) when the answer of `target` for `url` is not final,
    else None. A redirect goes to its Location. A remembered storage URL that answers 4xx (not
    416 or 429) has expired: it is forgotten and `url` resolved again, not counted as a failure.
    A storage URL that answers 200/206 is remembered in `locations`."""
    if status in (301, 302, 303, 307, 308) and location:
        return urllib.parse.urljoin(target, location), remembered
    if remembered and target == remembered and 400 <= status < 500 and status not in (416, 429):
        if locations is not None:
            locations.pop(url, None)
        return url, None
    if locations is not None and target != url and status in (200, 206):
        locations[url] = target
    return None


def check_answer(url: str, status: int, headers: Mapping[str, str], offset: int,
                  size: int | None) -> int:
    """The offset the body of a final answer starts at, or the error the answer means."""
    if status == 416:
        raise DownloadError(f"HTTP 416 for {url}: the range starting at byte {offset} is past the "
                            "end of the file at this revision (its metadata says it is longer)")
    if status == 429 or status >= 500:
        raise RetryableError(f"HTTP {status}", server_wait_s(headers))
    if status >= 400:
        hint = (" (check HF_TOKEN or `hf auth login`, and that you accepted the "
                "dataset's terms on the hub)") if status in (401, 403) else ""
        raise DownloadError(f"HTTP {status} for {url}{hint}")
    if status == 200:
        return 0  # Range ignored: the whole file follows
    if status != 206:
        raise RetryableError(f"unexpected HTTP {status}")
    start, total = content_range(headers.get("Content-Range"))
    if size is not None and total is not None and total != size:
        raise DownloadError(f"{url} is {total} bytes (Content-Range), its metadata says {size}: "
                            "the source does not hold the file its metadata describes")
    if start != offset:
        raise RetryableError(f"server answered range from byte {start}, asked for {offset}")
    return start


def _counted(chunks: Iterator[bytes], stats: TransferStats | None) -> Iterator[bytes]:
    for chunk in chunks:
        if stats is not None:
            stats.add(n_bytes=len(chunk))
        yield chunk


def content_range(value: str | None) -> tuple[int, int | None]:
    """(first byte, total size or None for `*`) of a `Content-Range: bytes 100-199/200` header."""
    try:
        unit, _, rest = (value or "").partition(" ")
        span, _, total = rest.partition("/")
        if unit != "bytes" or not total:
            raise ValueError
        return int(span.split("-", 1)[0]), None if total == "*" else int(total)
    except ValueError:
        raise RetryableError(f"bad Content-Range header {value!r}") from None
