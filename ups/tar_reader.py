"""Stream the MP3 members of a UPS tar by their full member name, never extracting to disk.

WebDataset's default key split at the first dot mangles names like `radio.show/ep.01.mp3`, so
members are read with `tarfile` in streaming mode and keyed by `normalize_key(member.name)`.
Unsafe members (absolute paths, `..`, links, devices) are refused and counted; a truncated or
garbled tar yields every member before the damage and reports the rest as `truncated_tar`.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from ups.keys import normalize_key
from ups.skips import Skips

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One audio file read from a tar: its member name, normalised key and raw bytes."""

    name: str
    key: str
    data: bytes


def unsafe_reason(info: tarfile.TarInfo) -> str | None:
    """Why a member must not be read, or None. Checked before any byte is used."""
    name = info.name
    if info.issym() or info.islnk():
        return "tar_link_member"
    if not info.isfile():
        return None if info.isdir() else "tar_special_member"
    if name.startswith("/") or PurePosixPath(name).is_absolute():
        return "tar_absolute_path"
    if ".." in PurePosixPath(name).parts:
        return "tar_parent_path"
    return None


def iter_members(
    source: str | Path | IO[bytes],
    skips: Skips,
    *,
    wanted: set[str] | None = None,
    suffix: str = ".mp3",
) -> Iterator[Member]:
    """Yield the audio members of one tar, in tar order.

    `wanted` (normalised keys) limits what is read into memory: other members are skipped
    without reading their bytes, and the read ends after the first occurrence of the last wanted
    key (what a member index walked for them covers: `ups.member_index.needed_entries`).
    Directories are ignored; unsafe members counted in `skips`.
    """
    label = str(source) if isinstance(source, str | Path) else getattr(source, "name", "<stream>")
    left = None if wanted is None else set(wanted)
    try:
        tf = (
            tarfile.open(source, mode="r|*")
            if isinstance(source, str | Path)
            else tarfile.open(fileobj=source, mode="r|*")
        )
    except (tarfile.TarError, OSError, EOFError) as exc:
        skips.add("unreadable_tar", f"{label}: {exc}")
        return
    try:
        with tf:
            while True:
                try:
                    info = tf.next()
                except (tarfile.TarError, OSError, EOFError) as exc:
                    skips.add("truncated_tar", f"{label}: {exc}")
                    return
                if info is None:
                    return
                reason = unsafe_reason(info)
                if reason:
                    skips.add(reason, f"{label}: {info.name}")
                    continue
                if not info.isfile() or not info.name.lower().endswith(suffix):
                    continue
                key = normalize_key(info.name)
                if wanted is not None and key not in wanted:
                    continue
                fh = tf.extractfile(info)
                if fh is None:
                    continue
                try:
                    data = fh.read()
                except (tarfile.TarError, OSError, EOFError) as exc:
                    skips.add("truncated_tar", f"{label}: {info.name}: {exc}")
                    return
                if len(data) != info.size:
                    skips.add("truncated_tar", f"{label}: {info.name}: short member")
                    return
                yield Member(name=info.name, key=key, data=data)
                if left is not None:
                    left.discard(key)
                    if not left:
                        return
    except (tarfile.TarError, OSError, EOFError) as exc:
        skips.add("truncated_tar", f"{label}: {exc}")
