"""The audio members of one tar, fetched whole-tar or member by member, yielded the same way.

`open_members(ds, tar, ...)` yields an iterator of `ups.tar_reader.Member` in tar order. With
`dataset.fetch: members` it reads the tar's member index (index-members' stored file, continued
or walked now when it does not reach the wanted members) and fetches only the wanted members, one
ranged request each, `ahead` at a time (so at most `ahead` + 1 members are held in memory: those
in flight and the one being decoded; nothing on disk), each resumed after a dropped connection
and checked: by its length, by the tar's size (Content-Range), and by its own header blocks,
fetched with it, which must name the member and its size as the index does (`fetch_member`).
Unsafe and non-audio entries up to the last wanted member are counted and skipped exactly as
`iter_members` counts them reading the whole tar, so both ways give the same members, the same
skip counts and therefore the same shards. When the index is not usable
(a truncated or damaged tar, a sparse member) the tar is fetched whole (and hash-checked) and
read by `iter_members`, which counts the damage.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ups import member_index
from ups.skips import Skips
from ups.tar_reader import Member, iter_members

log = logging.getLogger(__name__)


@contextlib.contextmanager
def open_members(ds: Any, tar: int, skips: Skips, wanted: set[str], *, fetch: str,
                 members_dir: Path | None, ahead: int, suffix: str = ".mp3") -> Iterator[Iterator[Member]]:
    """The wanted audio members of `tar` (see the module docstring)."""
    if fetch == "members":
        index, walked = member_index.for_tar(ds, tar, members_dir, wanted=wanted)
        if walked:
            log.info("tar %06d: no stored member index; walked its headers (%d requests)", tar,
                     index.requests)
        if index.ok:
            with ThreadPoolExecutor(max_workers=max(1, ahead)) as pool:
                yield _fetched(ds, index, skips, wanted, str(ds.local_tar_path(tar)), suffix, pool,
                               max(1, ahead))
            return
        log.warning("tar %06d: member index %s (%s): fetching the whole tar", tar, index.status,
                    index.reason)
    with ds.tar(tar) as path:
        yield iter_members(path, skips, wanted=wanted, suffix=suffix)


def _fetched(ds: Any, index: member_index.MemberIndex, skips: Skips, wanted: set[str], label: str,
             suffix: str, pool: ThreadPoolExecutor, ahead: int) -> Iterator[Member]:
    todo = []
    for e in member_index.needed_entries(index.entries, wanted, suffix):
        if e.skip is not None:
            skips.add(e.skip, f"{label}: {e.name}")
        elif e.is_audio(suffix) and e.key in wanted:
            todo.append(e)
    queue: deque[tuple[member_index.Entry, Future[bytes]]] = deque()
    pending = iter(todo)
    first = next(pending, None)
    if first is None:
        return
    # the first member alone: it learns the storage URL the hub redirects to, so the others go
    # there directly (one rate-limited /resolve/ request per tar, not one per concurrent fetch)
    data = fetch_member(ds, index, first)
    try:
        for e in itertools.islice(pending, ahead):
            queue.append((e, pool.submit(fetch_member, ds, index, e)))
        yield Member(name=first.name, key=first.key, data=data)
        while queue:
            e, fut = queue.popleft()
            data = fut.result()
            nxt = next(pending, None)
            if nxt is not None:
                queue.append((nxt, pool.submit(fetch_member, ds, index, nxt)))
            yield Member(name=e.name, key=e.key, data=data)
    finally:
        for _, fut in queue:
            fut.cancel()


def fetch_member(ds: Any, index: member_index.MemberIndex, e: member_index.Entry) -> bytes:
    """Member `e`'s data, fetched together with its header blocks, which must name the member,
    its size and its data offset as the index does: else the tar is not the one the index
    describes (it changed under the same identity) and the stage stops, naming tar and revision."""
    from ups.dataset import DatasetError

    head_n = e.offset - e.header_offset
    buf = ds.read_tar_range(index.tar, e.header_offset, head_n + e.size)
    reason = member_index.header_mismatch(e, buf[:head_n], index.pax_globals)
    if reason is not None:
        raise DatasetError(
            f"{ds.describe_tar(index.tar)}: {reason}. The tar is not the one its member index "
            f"describes, though its identity ({', '.join(sorted(index.source))}) is unchanged: the "
            f"source serves other bytes than its metadata says. Fix the source, or delete "
            f"{index.tar:06d}.parquet from the member index (data/index/members) and run "
            "index-members again.")
    return buf[head_n:]
