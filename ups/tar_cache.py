"""A directory of downloaded tars kept under a disk budget, least recently used evicted first.

Layout: `<root>/audio/000001.tar`, `<root>/audio2/005001.tar` (the repo's own paths), a tar's
in-progress download beside it as `<tar>.partial`, the sha256 it was verified against as
`<tar>.sha256`, pins in `<root>/.pins/`, a lock file `<root>/.lock`. Last use is the tar's mtime
(touched on every use). A cached tar is used only if its recorded sha256 is the one the source
names now, so a tar that changed between two dataset commits is fetched again, and one that did
not change is not (the cache is keyed by content, not by revision).

A pin is a small JSON file `{pid, path, reserve_bytes}`: a pinned tar is never evicted, by this
process or another one; pins whose pid is dead (a killed run) are ignored and removed. Decisions
that read or change the set of files (pin, evict, make room) hold an exclusive `flock` on the lock
file, which serialises threads and processes alike. A tar is downloaded by one worker at a time
(a per-tar lock); the others wait and then find it cached.
"""

from __future__ import annotations

import contextlib
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import orjson

from ups.atomic import locked, write_bytes, write_json

log = logging.getLogger(__name__)

GB = 1_000_000_000


class CacheFullError(RuntimeError):
    """A tar cannot fit in the budget next to the tars that are pinned (in use)."""


@dataclass(frozen=True)
class Entry:
    """A file in the cache: a finished tar or a stale partial download."""

    rel: str
    path: Path
    size: int
    last_used: float
    partial: bool


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True




class TarCache:
    """Tars under `root`, at most `budget_bytes` in all (finished tars + reserved downloads)."""

    def __init__(self, root: str | os.PathLike[str], budget_bytes: int) -> None:
        self.root = Path(root)
        self.budget_bytes = int(budget_bytes)
        self.pins_dir = self.root / ".pins"

    # --- paths ---------------------------------------------------------------------------------

    def path(self, rel: str) -> Path:
        return self.root / rel

    def sidecar(self, rel: str) -> Path:
        return self.root / (rel + ".sha256")

    def is_cached(self, rel: str, size: int, sha256: str | None = None) -> bool:
        """A finished tar of the expected size and, when `sha256` is given, recorded with that
        hash (tars land by rename only after their hash check; `record` notes the hash)."""
        p = self.path(rel)
        if not (p.is_file() and p.stat().st_size == size):
            return False
        return sha256 is None or self.recorded_sha256(rel) == sha256.lower()

    def recorded_sha256(self, rel: str) -> str | None:
        try:
            return self.sidecar(rel).read_text(encoding="ascii").strip() or None
        except (OSError, UnicodeDecodeError):
            return None

    def record(self, rel: str, sha256: str | None) -> None:
        """Note the sha256 a landed tar was verified against."""
        if sha256:
            write_bytes(self.sidecar(rel), sha256.lower().encode("ascii") + b"\n")

    def touch(self, rel: str) -> None:
        """Record a use (the LRU clock)."""
        with contextlib.suppress(FileNotFoundError):
            os.utime(self.path(rel))

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        with locked(self.root / ".lock"):
            yield

    @contextlib.contextmanager
    def download_lock(self, rel: str) -> Iterator[None]:
        """One downloader per tar, across threads and processes."""
        with locked(self.pins_dir / (rel.replace("/", "_") + ".download.lock")):
            yield

    # --- pins ----------------------------------------------------------------------------------

    @contextlib.contextmanager
    def pinned(self, rel: str, reserve_bytes: int = 0) -> Iterator[Path]:
        """Pin `rel` (not evictable) while inside; `reserve_bytes` counts against the budget
        until the tar is cached (space held for a download in progress)."""
        self.pins_dir.mkdir(parents=True, exist_ok=True)
        pin = self.pins_dir / f"{rel.replace('/', '_')}.{os.getpid()}.{uuid.uuid4().hex}.pin"
        with self.lock():
            write_json(pin, {"pid": os.getpid(), "path": rel, "reserve_bytes": int(reserve_bytes)})
        try:
            yield self.path(rel)
        finally:
            pin.unlink(missing_ok=True)

    def live_pins(self) -> dict[str, int]:
        """rel -> bytes reserved, for pins whose process is alive; stale pins are removed."""
        pins: dict[str, int] = {}
        if not self.pins_dir.is_dir():
            return pins
        for pin in self.pins_dir.glob("*.pin"):
            try:
                data = orjson.loads(pin.read_bytes())
                pid, rel, reserve = int(data["pid"]), str(data["path"]), int(data["reserve_bytes"])
            except (OSError, orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                continue  # being written or unreadable: not trusted, not removed
            if not _pid_alive(pid):
                log.info("tar cache: removing stale pin of dead process %d on %s", pid, rel)
                pin.unlink(missing_ok=True)
                continue
            pins[rel] = max(pins.get(rel, 0), reserve)
        return pins

    # --- budget --------------------------------------------------------------------------------

    def entries(self) -> list[Entry]:
        """Finished tars and partial downloads in the cache, oldest use first."""
        out: list[Entry] = []
        if not self.root.is_dir():
            return out
        for folder in sorted(p for p in self.root.iterdir() if p.is_dir() and p != self.pins_dir):
            for p in folder.iterdir():
                partial = p.name.endswith(".tar.partial")
                if not (p.name.endswith(".tar") or partial) or not p.is_file():
                    continue
                st = p.stat()
                rel = f"{folder.name}/{p.name.removesuffix('.partial')}"
                out.append(Entry(rel, p, st.st_size, st.st_mtime, partial))
        out.sort(key=lambda e: (e.last_used, e.rel))
        return out

    def used_bytes(self) -> int:
        with self.lock():
            return self._used(self.entries(), self.live_pins(), exclude="")

    def _used(self, entries: list[Entry], pins: dict[str, int], exclude: str) -> int:
        finished = {e.rel for e in entries if not e.partial}
        used = sum(e.size for e in entries if e.rel != exclude and not (e.partial and e.rel in pins))
        # Downloads in progress hold their full size, not what has arrived so far.
        used += sum(b for rel, b in pins.items() if rel != exclude and rel not in finished)
        return used

    def make_room(self, rel: str, size: int) -> list[str]:
        """Evict least-recently-used unpinned files until `size` more bytes for `rel` fit.

        Returns the evicted paths; raises CacheFullError when pinned tars leave too little room.
        """
        evicted: list[str] = []
        with self.lock():
            entries = self.entries()
            pins = self.live_pins()
            used = self._used(entries, pins, exclude=rel)
            for e in entries:
                if used + size <= self.budget_bytes:
                    break
                if e.rel == rel or e.rel in pins:
                    continue
                e.path.unlink(missing_ok=True)
                if not e.partial:
                    self.sidecar(e.rel).unlink(missing_ok=True)
                used -= e.size
                evicted.append(str(e.path.relative_to(self.root)))
                log.info("tar cache: evicted %s (%.2f GB, least recently used) to fit %s",
                         e.path.relative_to(self.root), e.size / GB, rel)
            if used + size > self.budget_bytes:
                raise CacheFullError(
                    f"dataset.cache_budget_gb={self.budget_bytes / GB:g} cannot hold {rel} "
                    f"({size / GB:.2f} GB) next to {used / GB:.2f} GB of tars in use; raise the "
                    f"budget or use fewer download workers"
                )
        return evicted
