"""Resumable, verified, atomic file transfer: the one code path every dataset file goes through.

`fetch(meta, dest, open_range, ...)` appends to `dest.partial` from its current size (an HTTP
Range request for the hub, a seek for a local mirror), retries transient failures with
exponential backoff (honouring `Retry-After` on 429/503), checks the result against the size and
hash the source reports, and only then renames it to `dest`. A file that fails the check is
deleted and fetched again; after `max_retries` a `DownloadError` names the file and the reason.

The access token travels in the `Authorization` header only: it is never part of a URL, a log
record or an exception message, and it is dropped when a redirect leaves the original host.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import http.client
import logging
import os
import socket
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

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


@dataclass(frozen=True)
class FileMeta:
    """What the source says a file is: its repo path, size and content hashes (None: unknown)."""

    path: str
    size: int
    sha256: str | None = None
    git_sha1: str | None = None  # git blob id, the check for small non-LFS files on the hub


# `open_range(offset)` -> context manager yielding (start, chunks): `start` is the offset the
# bytes really begin at (0 when a server ignored the Range header), `chunks` the byte pieces.
RangeOpener = Callable[[int], AbstractContextManager[tuple[int, Iterator[bytes]]]]

_TRANSIENT = (RetryableError, urllib.error.URLError, http.client.HTTPException, ConnectionError,
              TimeoutError, socket.timeout)


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
    attempt = 0
    while True:
        try:
            sha = _transfer(meta, partial, open_range)
        except _TRANSIENT as exc:
            attempt += 1
            reason = _describe(exc)
            if attempt > max_retries:
                raise DownloadError(
                    f"{meta.path}: giving up after {attempt} attempt(s): {reason}"
                ) from None
            delay = max(backoff_s * 2 ** (attempt - 1), getattr(exc, "retry_after_s", 0.0))
            log.warning("%s: attempt %d/%d failed (%s); retrying in %.1f s", meta.path, attempt,
                        max_retries + 1, reason, delay)
            sleep(delay)
            continue
        os.replace(partial, dest)
        _fsync_dir(dest.parent)
        log.info("%s: fetched %d bytes, verified", meta.path, meta.size)
        return meta if meta.sha256 else _with_sha(meta, sha)


def _with_sha(meta: FileMeta, sha256: str) -> FileMeta:
    return FileMeta(meta.path, meta.size, sha256, meta.git_sha1)


def _describe(exc: BaseException) -> str:
    """A short reason for a log line or error: type and message, nothing from request headers."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code}"
    if isinstance(exc, urllib.error.URLError):
        return f"connection failed: {exc.reason}"
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
        with open_range(offset) as (start, chunks):
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
        raise RetryableError(f"downloaded file does not match the source: {reason}")
    return hasher.sha256.hexdigest()


# ---------------------------------------------------------------------------------------------
# Range openers: a local file, an HTTP URL
# ---------------------------------------------------------------------------------------------

def local_range(src: Path) -> RangeOpener:
    """Read `src` from an offset (a local mirror: resumable copy through the same checks)."""

    @contextlib.contextmanager
    def open_range(offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        with open(src, "rb") as fh:
            fh.seek(offset)
            yield offset, iter(lambda: fh.read(CHUNK_BYTES), b"")

    return open_range


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Redirects are followed by hand so the token can be dropped when the host changes."""

    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None


_OPENER = urllib.request.build_opener(_NoRedirect)


def _retry_after_s(value: str | None) -> float:
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


def http_range(url: str, token: Callable[[], str | None], timeout_s: float,
               user_agent: str = "ups") -> RangeOpener:
    """GET `url` with `Range: bytes=<offset>-`; `token()` is called per request, sent as a header.

    429 and 5xx raise `RetryableError` (with Retry-After); other 4xx raise `DownloadError`.
    """

    @contextlib.contextmanager
    def open_range(offset: int) -> Iterator[tuple[int, Iterator[bytes]]]:
        target = url
        origin = urllib.parse.urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 1):
            headers = {"User-Agent": user_agent, "Accept-Encoding": "identity"}
            if offset:
                headers["Range"] = f"bytes={offset}-"
            tok = token()
            if tok and urllib.parse.urlsplit(target).netloc == origin:
                headers["Authorization"] = f"Bearer {tok}"
            request = urllib.request.Request(target, headers=headers)
            try:
                response = _OPENER.open(request, timeout=timeout_s)
            except urllib.error.HTTPError as exc:
                status = exc.code
                location = exc.headers.get("Location") if exc.headers else None
                retry_after = _retry_after_s(exc.headers.get("Retry-After") if exc.headers else None)
                exc.close()
                if status in (301, 302, 303, 307, 308) and location:
                    target = urllib.parse.urljoin(target, location)
                    continue
                if status == 416:
                    # Our partial is no prefix of the file (or already complete): start over.
                    raise RetryableError("HTTP 416 (range not satisfiable)") from None
                if status == 429 or status >= 500:
                    raise RetryableError(f"HTTP {status}", retry_after) from None
                hint = (" (check HF_TOKEN or `hf auth login`, and that you accepted the dataset's "
                        "terms on the hub)") if status in (401, 403) else ""
                raise DownloadError(f"HTTP {status} for {url}{hint}") from None
            with response:
                status = response.status
                if status == 206:
                    start = _content_range_start(response.headers.get("Content-Range"))
                    if start != offset:
                        raise RetryableError(f"server answered range from byte {start}, "
                                             f"asked for {offset}")
                elif status == 200:
                    start = 0  # Range ignored: the whole file follows
                else:
                    raise RetryableError(f"unexpected HTTP {status}")
                # read1: whatever has arrived, so a dropped connection keeps its bytes
                yield start, iter(functools.partial(response.read1, CHUNK_BYTES), b"")
                return
        raise DownloadError(f"too many redirects for {url}")

    return open_range


def _content_range_start(value: str | None) -> int:
    # "bytes 100-199/200"
    try:
        unit, _, rest = (value or "").partition(" ")
        if unit != "bytes":
            raise ValueError
        return int(rest.split("-", 1)[0])
    except ValueError:
        raise RetryableError(f"bad Content-Range header {value!r}") from None
