"""`ups du`: the disk space taken by each stage's outputs, the tar cache, the DVC cache and remote.

Sizes are given twice: apparent (the sum of file sizes, what a copy would need) and on disk
(allocated blocks). A file with several hard links is counted once per row, and once in the total:
with `cache.type` hardlink a stage output and its DVC cache object are the same inode, so the
total is what deleting everything listed would free, not the sum of the rows. A symlink to a file
(`cache.type` symlink) counts as the file it points to, so it too is counted once with its cache
object. The DVC cache row says how much of it the outputs share. A remote is measured only when
it is a local directory; for SSH, S3 and others the row says "unknown".
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ups.remote import local_path

log = logging.getLogger(__name__)

Inode = tuple[int, int]


@dataclass
class Usage:
    """One row: a named group of paths and what they take."""

    name: str
    kind: str  # stage | tar_cache | dvc_cache | remote | total
    paths: list[str]
    files: int | None = 0
    apparent_bytes: int | None = 0
    disk_bytes: int | None = 0
    note: str = ""
    # (st_dev, st_ino) -> (apparent, on disk): the total merges these, so a link counts once.
    inodes: dict[Inode, tuple[int, int]] = field(default_factory=dict, repr=False)

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        del d["inodes"]
        return d


def _stat(path: str) -> os.stat_result:
    """A symlink to a regular file is measured as that file (a DVC cache object, usually)."""
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.stat(path)
        except OSError:
            return st  # dangling
        if stat.S_ISREG(target.st_mode):
            return target
    return st


def _walk(path: Path) -> list[os.stat_result]:
    """stat of every non-directory entry under `path` (the path itself if it is a file)."""
    try:
        st = _stat(str(path))
    except FileNotFoundError:
        return []
    if not path.is_dir() or path.is_symlink():
        return [st]
    out: list[os.stat_result] = []
    for dirpath, dirnames, filenames in os.walk(path):
        for name in filenames + [d for d in dirnames if (Path(dirpath) / d).is_symlink()]:
            try:
                out.append(_stat(os.path.join(dirpath, name)))
            except FileNotFoundError:
                continue  # removed while we walked
    return out


def measure(usage: Usage, paths: list[Path]) -> Usage:
    """Fill `usage` with the files under `paths`, each inode counted once."""
    files = apparent = disk = 0
    missing = []
    for p in paths:
        if not os.path.lexists(p):
            missing.append(p)
            continue
        for st in _walk(p):
            ino = (st.st_dev, st.st_ino)
            if ino in usage.inodes:
                continue
            usage.inodes[ino] = (st.st_size, st.st_blocks * 512)
            files += 1
            apparent += st.st_size
            disk += st.st_blocks * 512
    usage.files, usage.apparent_bytes, usage.disk_bytes = files, apparent, disk
    if missing and len(missing) == len(paths):
        usage.note = "absent"
    elif missing:
        usage.note = f"{len(missing)} of {len(paths)} absent"
    return usage


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.relative_to(root))
    except ValueError:
        return str(path)


def _stage_name(stage: Any, root: Path) -> str:
    """`select` for a stage of the root dvc.yaml, `sub/dvc.yaml:name`, or `data.dvc`."""
    dvcfile = _rel(Path(stage.path), root)
    name = getattr(stage, "name", None)
    if not name:
        return dvcfile
    return name if dvcfile == "dvc.yaml" else f"{dvcfile}:{name}"


def collect(root: Path, params: Path) -> list[Usage]:
    """Measure every row for the DVC project at `root`; the last row is the deduplicated total."""
    from dvc.repo import Repo

    from ups.config import DatasetConfig, load_section

    root = root.resolve()
    rows: list[Usage] = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            outs = [Path(out.fs_path) for out in stage.outs]
            if outs:
                rows.append(measure(Usage(_stage_name(stage, root), "stage",
                                          [_rel(p, root) for p in outs]), outs))
        cache_dir = Path(repo.cache.local_cache_dir) if repo.cache.local_cache_dir else None
        remote_name = repo.config["core"].get("remote")
        remote_url = repo.config["remote"].get(remote_name, {}).get("url") if remote_name else None

    ds = load_section(DatasetConfig, "dataset", params)
    tar_cache = Path(ds.tar_cache_dir)
    tar_cache = tar_cache if tar_cache.is_absolute() else root / tar_cache
    tar_row = measure(Usage("tar cache", "tar_cache", [_rel(tar_cache, root)]), [tar_cache])
    if not tar_row.note:
        tar_row.note = f"budget {ds.cache_budget_gb:g} GB"
    rows.append(tar_row)

    if cache_dir is not None:
        cache_row = measure(Usage("dvc cache", "dvc_cache", [_rel(cache_dir, root)]), [cache_dir])
        outputs = {ino for r in rows if r.kind == "stage" for ino in r.inodes}
        shared = sum(a for ino, (a, _) in cache_row.inodes.items() if ino in outputs)
        if shared and not cache_row.note:
            cache_row.note = f"{human(shared)} of it linked from the outputs"
        rows.append(cache_row)

    if remote_name is None:
        rows.append(Usage("remote", "remote", [], None, None, None, "no default remote"))
    else:
        local = local_path(str(remote_url)) if remote_url else None
        name = f"remote {remote_name}"
        if local is None:
            rows.append(Usage(name, "remote", [str(remote_url)], None, None, None,
                              "unknown (not a local directory)"))
        else:
            rows.append(measure(Usage(name, "remote", [str(local)]), [local]))

    rows.append(total(rows))
    return rows


def total(rows: list[Usage]) -> Usage:
    """Every measured row together, each inode once: what deleting all of it would free."""
    merged: dict[Inode, tuple[int, int]] = {}
    for row in rows:
        merged.update(row.inodes)
    return Usage("total (links once)", "total", [], len(merged),
                 sum(a for a, _ in merged.values()), sum(d for _, d in merged.values()))


def human(n: int | None) -> str:
    """1536 -> '1.5 KiB'; None -> '?'."""
    if n is None:
        return "?"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_table(rows: list[Usage]) -> str:
    header = ("what", "files", "apparent", "on disk", "path / note")
    lines = [header]
    for r in rows:
        where = ", ".join(r.paths)
        if r.note:
            where = f"{where}  ({r.note})" if where else r.note
        lines.append((r.name, "?" if r.files is None else str(r.files), human(r.apparent_bytes),
                      human(r.disk_bytes), where))
    widths = [max(len(line[i]) for line in lines) for i in range(4)]
    out = []
    for line in lines:
        cells = [line[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(line[1:4], widths[1:], strict=True)]
        out.append("  ".join(cells + [line[4]]).rstrip())
    return "\n".join(out)


def to_json(rows: list[Usage]) -> list[dict[str, Any]]:
    return [r.to_json() for r in rows]
