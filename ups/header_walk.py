"""Many header walks at once: how index-members reads the layout of hundreds of tars in minutes.

A walk (`ups.member_index.Walker`) is a chain of small ranged reads, each waiting for the one
before it (a header gives the offset of the next), so one walk is bound by latency: 1,000 members
at 50 ms a request take 50 s whatever the bandwidth. The walks of different tars are independent:
`walk_tars` runs `dataset.header_walks` of them at once. On the hub they share one asyncio loop and
one aiohttp client, whose CPU cost per read is what bounds hundreds of walks in flight on one core:
0.20 ms a ranged GET against 0.86 ms for huggingface_hub's httpx2 client from threads and 1.33 ms
for its async client; 0.31-0.36 ms a header read for the whole walk against 1.4-1.6 ms for 16
walks on threads with the library's client (bench/results/header_walk.json). The requests keep
the hub's rules: the first read of a tar resolves its `/resolve/` URL (within
`dataset.resolves_per_5min`), later ones go to the storage URL it redirected to (re-resolved when
it expires), the token goes to the hub's host only, 429/503 waits are honoured and retries follow
`ups.download.Attempts`. A mirror's tars are read with plain blocking reads (a local seek costs
microseconds).

Every finished walk is written at once (`save`), and a long walk writes its progress every
`checkpoint_s`, so a killed stage loses at most that much of each walk: the next run resumes
each tar where its stored index stopped.
"""

from __future__ import annotations

import asyncio
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from typing import Any

from ups.download import (
    MAX_REDIRECTS,
    Attempts,
    DownloadError,
    RetryableError,
    base_headers,
    check_answer,
    describe_error,
    follow,
)
from ups.keys import tar_path
from ups.member_index import MemberIndex, Walker
from ups.progress import bar

log = logging.getLogger(__name__)

CHECKPOINT_S = 60.0  # a walk in progress is written this often
LOCAL_THREADS = 4  # mirror walks at once (CPU-bound: tarfile's parse, no waiting)

Save = Callable[[MemberIndex], Any]


@dataclass(frozen=True)
class WalkJob:
    """One tar to walk: its identity, the keys the walk must reach (None: all), a stored index
    of the same tar to continue from."""

    tar: int
    ident: dict[str, Any]
    wanted: frozenset[str] | None = None
    resume: MemberIndex | None = None

    def walker(self) -> Walker:
        return Walker(self.tar, int(self.ident["size"]), wanted=self.wanted, resume=self.resume,
                      source=self.ident)


def walk_tars(ds: Any, jobs: list[WalkJob], *, walks: int, save: Save, desc: str = "header walk",
              checkpoint_s: float = CHECKPOINT_S) -> tuple[dict[int, MemberIndex], dict[int, str]]:
    """Walk every job, `walks` at a time; `save` each index as it ends (and a partial one every
    `checkpoint_s` of a walk). Returns (tar -> index, tar -> error of the walks that failed)."""
    from ups.dataset import HubDataset

    if not jobs:
        return {}, {}
    with bar(desc=desc, unit="tar", total=len(jobs)) as pbar:
        if isinstance(ds, HubDataset):
            out, errors = asyncio.run(_walk_hub(ds, jobs, walks, save, checkpoint_s, pbar.update))
        else:
            out, errors = _walk_local(ds, jobs, save, pbar.update)
    log.info("%s: %d tar(s) walked (%d header reads), %d failed", desc, len(out),
             sum(i.requests - (j.resume.requests if j.resume else 0) for j in jobs
                 if (i := out.get(j.tar)) is not None), len(errors))
    return out, errors


def _walk_local(ds: Any, jobs: list[WalkJob], save: Save,
                done: Callable[[int], Any]) -> tuple[dict[int, MemberIndex], dict[int, str]]:
    from ups.dataset import DatasetError

    def one(job: WalkJob) -> MemberIndex:
        w = job.walker()
        while (need := w.need()) is not None:
            w.feed(need[0], ds.read_tar_range(job.tar, *need))
        save(w.index)
        return w.index

    out: dict[int, MemberIndex] = {}
    errors: dict[int, str] = {}
    with ThreadPoolExecutor(max_workers=LOCAL_THREADS) as pool:
        futures = {pool.submit(one, job): job.tar for job in jobs}
        for fut in as_completed(futures):
            try:
                out[futures[fut]] = fut.result()
            except (DatasetError, DownloadError, OSError) as exc:
                errors[futures[fut]] = str(exc)
            done(1)
    return out, errors


async def _walk_hub(ds: Any, jobs: list[WalkJob], walks: int, save: Save, checkpoint_s: float,
                    done: Callable[[int], Any]) -> tuple[dict[int, MemberIndex], dict[int, str]]:
    from ups.dataset import DatasetError

    out: dict[int, MemberIndex] = {}
    errors: dict[int, str] = {}
    slots = asyncio.Semaphore(walks)
    async with AsyncRanges(ds, connections=walks) as ranges:

        async def one(job: WalkJob) -> None:
            async with slots:
                try:
                    out[job.tar] = await walk_async(job, ranges.reader(job), save, checkpoint_s)
                except (DatasetError, DownloadError, OSError) as exc:
                    errors[job.tar] = str(exc)
                done(1)

        await asyncio.gather(*(one(job) for job in jobs))
    return out, errors


async def walk_async(job: WalkJob, read: Callable[[int, int], Awaitable[bytes]], save: Save,
                     checkpoint_s: float = CHECKPOINT_S) -> MemberIndex:
    """One walk over an async `read(offset, size)`; saves it at the end and every
    `checkpoint_s` meanwhile (and what it reached when a read fails for good)."""
    w = job.walker()
    last = time.monotonic()
    try:
        while (need := w.need()) is not None:
            if time.monotonic() - last >= checkpoint_s and (part := w.checkpoint()) is not None:
                save(part)
                last = time.monotonic()
            w.feed(need[0], await read(*need))
    except BaseException:
        if (part := w.checkpoint()) is not None and part.members_seen > (
                job.resume.members_seen if job.resume else 0):
            save(part)
        raise
    save(w.index)
    return w.index


class AsyncRanges:
    """Ranged reads of a HubDataset's files over one aiohttp client (see the module docstring).

    `asleep` is how a retry waits (tests pass a recorder)."""

    def __init__(self, ds: Any, *, connections: int,
                 asleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.ds, self.connections, self._asleep = ds, connections, asleep
        self._client: Any = None
        self._token: str | None = None
        self._urls: dict[str, str] = {}  # repo path -> its /resolve/ URL
        self._proxies: dict[tuple[str, str], str | None] = {}  # (scheme, host) -> proxy URL

    async def __aenter__(self) -> AsyncRanges:
        import aiohttp

        t = self.ds.cfg.timeout_s
        self._token = self.ds._token()  # read once: it costs a file lookup per call
        self._client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=self.connections, ttl_dns_cache=300),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=t, sock_read=t),
            headers=base_headers(), auto_decompress=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._client.close()

    def reader(self, job: WalkJob) -> Callable[[int, int], Awaitable[bytes]]:
        path, size = tar_path(job.tar), int(job.ident["size"])
        return lambda offset, n: self.read(path, offset, n, size)

    async def read(self, path: str, offset: int, n: int, size: int | None = None) -> bytes:
        """Bytes [offset, offset + n) of repo file `path` (`size` bytes, checked), retried."""
        import aiohttp

        what = f"{path} [{offset}, {offset + n})"
        policy = Attempts(what, self.ds.cfg.max_retries, self.ds.cfg.retry_backoff_s)
        while True:
            try:
                return await self._once(path, offset, n, size)
            except (TimeoutError, RetryableError, aiohttp.ClientError) as exc:
                reason = describe_error(exc)
                delay = policy.delay(reason, getattr(exc, "retry_after_s", 0.0))
                if delay is None:
                    raise DownloadError(f"{what}: giving up after {policy.failures} attempt(s): "
                                        f"{reason}") from None
                await self._asleep(delay)

    def _proxy(self, target: str) -> str | None:
        """The proxy the environment names for `target` (HTTP(S)_PROXY, NO_PROXY), looked up once
        per host: aiohttp's own lookup (trust_env) costs two thread hops per request."""
        import urllib.request

        parts = urllib.parse.urlsplit(target)
        key = (parts.scheme, parts.hostname or "")
        if key not in self._proxies:
            bypass = bool(parts.hostname) and urllib.request.proxy_bypass(parts.hostname or "")
            self._proxies[key] = None if bypass else urllib.request.getproxies().get(parts.scheme)
        return self._proxies[key]

    async def _once(self, path: str, offset: int, n: int, size: int | None) -> bytes:
        if (url := self._urls.get(path)) is None:
            url = self._urls[path] = self.ds.file_url(path)
        locations = self.ds._locations
        remembered = locations.get(url)
        target, origin = remembered or url, urllib.parse.urlsplit(url).netloc
        for _ in range(MAX_REDIRECTS + 2):
            headers = {"Range": f"bytes={offset}-{offset + n - 1}", "Accept-Encoding": "identity"}
            if self._token and urllib.parse.urlsplit(target).netloc == origin:
                headers["Authorization"] = f"Bearer {self._token}"
            if target == url:
                await self.ds.resolve_limit.acquire_async()
            self.ds.stats.add(requests=1)
            async with self._client.get(target, headers=headers, allow_redirects=False,
                                         proxy=self._proxy(target)) as resp:
                status = resp.status
                nxt = follow(url, target, remembered, status, resp.headers.get("Location"), locations)
                if nxt is not None:
                    target, remembered = nxt
                    continue
                start = check_answer(url, status, resp.headers, offset, size)
                if start != offset or (status == 200 and (size is None or n < size)):
                    raise DownloadError(f"{path}: the server ignores Range requests (answered from "
                                        f"byte {start}, asked for {offset}); use dataset.fetch: tars")
                body = await resp.read()
                self.ds.stats.add(n_bytes=len(body))
                if len(body) < n:
                    raise RetryableError(f"range ended early at byte {offset + len(body)} of {offset + n}")
                return body[:n]
        raise DownloadError(f"too many redirects for {url}")
