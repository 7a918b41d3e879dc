"""The project's default DVC remote: where it is, and whether a pull from it can work.

`dvc pull --allow-missing` against a remote directory that does not exist prints "Everything is
up to date" and exits 0, and plain `dvc pull` says the same before failing on the cache, so a
clone that pulled nothing looks fine until `dvc status` lists every stage. `make pull` runs
`ups remote-check` first: no default remote, or a local remote directory that is missing or
empty, stops with one line saying what to do. Other remotes (SSH, S3) are left to `dvc pull`,
which fails with the connection error when they cannot be reached.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse


class RemoteError(RuntimeError):
    """The default remote cannot serve a pull; the message says what to do."""


def local_path(url: str) -> Path | None:
    """The directory of a local remote url (plain path or file://), None for anything else."""
    parsed = urlparse(url)
    if parsed.scheme in ("", "file"):
        return Path(parsed.path if parsed.scheme else url)
    if len(parsed.scheme) == 1:  # a Windows drive letter, not a scheme
        return Path(url)
    return None


def default_remote(root: Path) -> tuple[str | None, str | None]:
    """(name, url) of the project's default remote, (None, None) when none is set. DVC resolves a
    relative local url against the config file that names it."""
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        name = repo.config["core"].get("remote")
        url = repo.config["remote"].get(name, {}).get("url") if name else None
    return name, (str(url) if url else None)


def check(root: Path) -> str:
    """A one-line description of the default remote; RemoteError when a pull cannot work."""
    name, url = default_remote(root)
    if name is None:
        raise RemoteError("no default DVC remote: add one with `dvc remote add -d <name> <url>` "
                          "(README, Sharing artifacts between machines)")
    if url is None:
        raise RemoteError(f"the default DVC remote {name!r} is not defined: set its url with "
                          f"`dvc remote add -f -d {name} <url>`")
    path = local_path(url)
    if path is None:
        return f"remote {name}: {url}"
    fix = (f"run `make push` on the machine that has the data, or point the remote at its copy "
           f"with `dvc remote modify --local {name} url /path/to/ups-dvc-remote`")
    if not path.is_dir():
        raise RemoteError(f"DVC remote {name!r} is {path}, which does not exist: {fix}")
    if not any(p.is_file() for p in path.rglob("*")):
        raise RemoteError(f"DVC remote {name!r} ({path}) holds no data: {fix}")
    return f"remote {name}: {path}"

