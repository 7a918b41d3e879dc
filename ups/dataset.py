"""Dataset access: one interface over a local mirror and the Hugging Face hub.

    ds = open_dataset(cfg)                    # cfg: DatasetConfig (params.yaml `dataset`)
    ds.fetch_file("vad_results.jsonl", dest)  # resumable, verified, atomic
    with ds.tar(123) as path:                 # a local path; pinned in the cache while inside
        ...
    ds.prefetch([1, 2, 3])                    # download several tars at once (hub)
    ds.tar_size(123)                          # bytes, without downloading

`source: local` reads a directory in the dataset's layout (`audio/NNNNNN.tar`, `audio2/...`,
the JSONL files at the root); tars are used in place. `source: hub` reads `cfg.repo_id` at
`cfg.revision` (a branch or tag is resolved once to its commit sha, with a warning that the run is
not pinned); tars are downloaded into `cfg.tar_cache_dir` under `cfg.cache_budget_gb`.

One revision per run: fetch-meta resolves the revision and records the sha in
`data/meta/fetch_meta.json`; every later stage calls `pinned_config(cfg, that file)`, which
returns the configuration with `revision` set to that sha, so no later process resolves (or warns)
again and metadata and tars come from one commit.

The hub token comes from `HF_TOKEN` or the user's `hf auth login` (`huggingface_hub.get_token`),
read at the point of use and sent only as the Authorization header.
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import orjson

from ups.config import DatasetConfig
from ups.download import (
    DownloadError,
    FileMeta,
    TransferStats,
    fetch,
    file_sha256,
    http_range,
    local_range,
    read_range,
)
from ups.keys import tar_path
from ups.progress import bar
from ups.rate_limit import RateLimiter
from ups.tar_cache import GB, CacheFullError, TarCache

log = logging.getLogger(__name__)

__all__ = ["CacheFullError", "Dataset", "DatasetError", "DownloadError", "FileMeta", "HubDataset",
           "LocalDataset", "open_dataset", "is_commit_sha", "pinned_config", "shared_dataset"]

_SHA = re.compile(r"[0-9a-f]{40}")
PATHS_INFO_BATCH = 50  # the hub answers at most 50 expanded paths per request


class DatasetError(RuntimeError):
    """The dataset (or a file in it) cannot be reached or is not what the configuration says."""


def is_commit_sha(revision: str) -> bool:
    return bool(_SHA.fullmatch(revision))


def _root_name(name: str) -> str:
    if not name or "/" in name or "\\" in name or name in (".", ".."):
        raise DatasetError(f"{name!r} is not a file name at the dataset root")
    return name


class Dataset(abc.ABC):
    """The interface every source implements."""

    def __init__(self, cfg: DatasetConfig, *, sleep: Callable[[float], None] = time.sleep) -> None:
        self.cfg = cfg
        self._sleep = sleep
        self.stats = TransferStats()  # requests and bytes of this instance (hub only)

    @abc.abstractmethod
    def describe(self) -> dict[str, Any]:
        """Where the data comes from, for stage reports (never a secret)."""

    @abc.abstractmethod
    def file_meta(self, name: str) -> FileMeta:
        """Size and sha256 of a file at the dataset root (e.g. `vad_results.jsonl`)."""

    @abc.abstractmethod
    def _opener(self, path: str, size: int | None = None) -> Any:
        """A range opener for a repo path (see `ups.download.RangeOpener`); with `size`, it fails
        when the file has another size."""

    @abc.abstractmethod
    def tar_size(self, tar_number: int) -> int:
        """Size in bytes of tar `tar_number` (no download)."""

    def tar_sizes(self, tar_numbers: Iterable[int]) -> dict[int, int]:
        """Sizes in bytes of many tars (the hub answers them in batches of 50)."""
        return {n: self.tar_size(n) for n in dict.fromkeys(tar_numbers)}

    @abc.abstractmethod
    def tar(self, tar_number: int) -> contextlib.AbstractContextManager[Path]:
        """Context manager yielding a local path of the tar, valid (not evicted) while inside."""

    @abc.abstractmethod
    def tar_identity(self, tar_number: int) -> dict[str, Any]:
        """What tells this tar's content apart, without reading it (for the member index)."""

    @abc.abstractmethod
    def local_tar_path(self, tar_number: int) -> Path:
        """Where `tar()` puts (or finds) the tar; names it in reports whichever way it is read."""

    def tar_identities(self, tar_numbers: Iterable[int]) -> dict[int, dict[str, Any]]:
        """`tar_identity` of many tars (the hub answers them in batches of 50)."""
        return {n: self.tar_identity(n) for n in dict.fromkeys(tar_numbers)}

    def tar_metas(self, tar_numbers: Iterable[int]) -> dict[int, tuple[FileMeta, ...]]:
        """The metadata of many tars to hand to other processes (`remember`); none for a mirror."""
        return {}

    def remember(self, metas: Iterable[FileMeta]) -> None:  # noqa: B027 (a mirror needs none)
        """Take file metadata another process already read (the hub: no request for them)."""

    @abc.abstractmethod
    def describe_tar(self, tar_number: int) -> str:
        """The tar and the revision (or mirror) it is read at, for error messages."""

    def read_tar_range(self, tar_number: int, offset: int, size: int) -> bytes:
        """Bytes [offset, offset + size) of tar `tar_number` without fetching the tar: one ranged
        request (a seek on a local mirror), resumed after a dropped connection, checked by length
        and by the tar's size (a source whose tar has another size fails)."""
        return self.read_file_range(tar_path(tar_number), offset, size,
                                    file_size=int(self.tar_identity(tar_number)["size"]))

    def read_file_range(self, path: str, offset: int, size: int, *, file_size: int | None = None) -> bytes:
        """Bytes [offset, offset + size) of any file of the dataset (a repo path), as above."""
        return read_range(f"{path} [{offset}, {offset + size})", self._opener(path, file_size),
                          offset, size, max_retries=self.cfg.max_retries,
                          backoff_s=self.cfg.retry_backoff_s, sleep=self._sleep)

    def fetch_file(self, name: str, dest: str | os.PathLike[str]) -> FileMeta:
        """Fetch root file `name` to `dest`: resumes `dest.partial`, verifies size and sha256,
        renames into place. Returns the verified FileMeta (sha256 filled in)."""
        meta = self.file_meta(_root_name(name))
        return fetch(meta, Path(dest), self._opener(meta.path, meta.size), max_retries=self.cfg.max_retries,
                     backoff_s=self.cfg.retry_backoff_s, sleep=self._sleep)

    def prefetch(self, tar_numbers: Iterable[int]) -> dict[int, Path]:
        """Make each tar available locally (`cfg.download_workers` at a time); tar -> path."""
        numbers = list(dict.fromkeys(tar_numbers))
        out: dict[int, Path] = {}
        errors: dict[int, str] = {}

        def one(n: int) -> Path:
            with self.tar(n) as p:
                return p

        with ThreadPoolExecutor(max_workers=self.cfg.download_workers) as pool:
            futures = {pool.submit(one, n): n for n in numbers}
            for fut in bar(as_completed(futures), desc="prefetch", unit="tar", total=len(futures)):
                n = futures[fut]
                try:
                    out[n] = fut.result()
                except (DatasetError, DownloadError, CacheFullError, OSError) as exc:
                    errors[n] = str(exc)
        if errors:
            first = min(errors)
            raise DatasetError(f"{len(errors)} of {len(numbers)} tar(s) failed; tar {first}: "
                               f"{errors[first]}")
        return out


class LocalDataset(Dataset):
    """A directory in the dataset's layout; tars are used where they lie (no copy)."""

    def __init__(self, cfg: DatasetConfig, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        self.root = Path(cfg.local_root)
        if not self.root.is_dir():
            raise DatasetError(f"dataset.local_root {str(self.root)!r} is not a directory")

    def describe(self) -> dict[str, Any]:
        return {"source": "local", "local_root": str(self.root)}

    def _local(self, path: str) -> Path:
        p = self.root / path
        if not p.is_file():
            raise DatasetError(f"{path} is not in the local mirror {self.root} ({p} missing)")
        return p

    def file_meta(self, name: str) -> FileMeta:
        p = self._local(_root_name(name))
        return FileMeta(name, p.stat().st_size, file_sha256(p))

    def _opener(self, path: str, size: int | None = None) -> Any:
        return local_range(self._local(path), size)

    def tar_size(self, tar_number: int) -> int:
        return self._local(tar_path(tar_number)).stat().st_size

    @contextlib.contextmanager
    def tar(self, tar_number: int) -> Iterator[Path]:
        yield self._local(tar_path(tar_number))

    def tar_identity(self, tar_number: int) -> dict[str, Any]:
        # ctime: any write to the file, even one that puts its mtime back, moves it
        st = self._local(tar_path(tar_number)).stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ctime_ns": st.st_ctime_ns}

    def local_tar_path(self, tar_number: int) -> Path:
        return self.root / tar_path(tar_number)

    def describe_tar(self, tar_number: int) -> str:
        return f"tar {tar_number:06d} ({tar_path(tar_number)} in the local mirror {self.root})"


class HubDataset(Dataset):
    """`cfg.repo_id` (repo_type dataset) on the hub at `cfg.revision`, tars cached on disk.

    `endpoint` defaults to `HF_ENDPOINT` (read now), else huggingface_hub's default.
    """

    def __init__(self, cfg: DatasetConfig, *, endpoint: str | None = None, share: int = 1,
                 clock: Callable[[], float] = time.monotonic, **kw: Any) -> None:
        super().__init__(cfg, **kw)
        from huggingface_hub import constants

        self.endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
        self.cache = TarCache(cfg.tar_cache_dir, int(cfg.cache_budget_gb * GB))
        self._revision: str | None = None
        self._meta: dict[str, FileMeta] = {}
        self._locations: dict[str, str] = {}  # resolve URL -> storage URL it redirected to
        # the hub's budgets, this process's `share` of them (the processes of a stage split them)
        self.api_limit = RateLimiter(cfg.api_calls_per_5min, share=share, clock=clock, sleep=self._sleep)
        self.resolve_limit = RateLimiter(cfg.resolves_per_5min, share=share, clock=clock,
                                         sleep=self._sleep)

    # --- hub metadata --------------------------------------------------------------------------

    @staticmethod
    def _token() -> str | None:
        from huggingface_hub import get_token

        return os.environ.get("HF_TOKEN") or get_token()

    def _api(self) -> Any:
        from huggingface_hub import HfApi

        return HfApi(endpoint=self.endpoint, token=self._token() or False)

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        """A hub API call within the API budget (`api_limit`), retried as downloads are
        (`ups.download.Attempts`: a 429/503 that says how long to wait is waited out and not
        counted); errors name `what` only."""
        from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

        from ups.download import Attempts, server_wait_s

        policy = Attempts(what, self.cfg.max_retries, self.cfg.retry_backoff_s)
        while True:
            wait = 0.0
            self.api_limit.acquire()
            try:
                return fn()
            except OfflineModeIsEnabled:
                raise DatasetError(f"{what}: HF_HUB_OFFLINE is set, so the hub cannot be asked "
                                   "(unset it to run this stage)") from None
            except HfHubHTTPError as exc:
                status = exc.response.status_code if exc.response is not None else None
                transient = status is None or status == 429 or status >= 500
                reason = f"HTTP {status}" if status else type(exc).__name__
                if exc.response is not None and status in (429, 503):
                    wait = server_wait_s(exc.response.headers)
            except OSError as exc:  # connection refused, timeouts
                transient, reason = True, type(exc).__name__
            except Exception as exc:  # httpx2 transport errors are not OSErrors
                if type(exc).__module__.split(".")[0] not in ("httpx2", "httpx", "httpcore2"):
                    raise
                transient, reason = True, type(exc).__name__
            delay = policy.delay(reason, wait, transient=transient)
            if delay is None:
                hint = (" (check HF_TOKEN or `hf auth login`, and that you accepted the dataset's "
                        "terms)") if reason in ("HTTP 401", "HTTP 403") else ""
                raise DatasetError(f"{what} failed after {policy.failures} attempt(s): {reason}{hint}") \
                    from None
            self._sleep(delay)

    @property
    def revision(self) -> str:
        """The commit sha every request uses (resolved once from a branch or tag)."""
        if self._revision is None:
            rev = self.cfg.revision
            if is_commit_sha(rev):
                self._revision = rev
            else:
                info = self._call(f"resolving revision {rev!r} of {self.cfg.repo_id}",
                                  lambda: self._api().dataset_info(self.cfg.repo_id, revision=rev))
                if not info.sha or not is_commit_sha(info.sha):
                    raise DatasetError(f"the hub returned no commit sha for revision {rev!r}")
                self._revision = info.sha
                log.warning("dataset.revision %r is not a commit sha: this run is NOT pinned; it "
                            "uses commit %s (set dataset.revision to it to reproduce)", rev,
                            info.sha)
        return self._revision

    def describe(self) -> dict[str, Any]:
        return {"source": "hub", "repo_id": self.cfg.repo_id, "revision": self.cfg.revision,
                "resolved_revision": self.revision, "pinned": is_commit_sha(self.cfg.revision),
                "endpoint": self.endpoint}

    def files_meta(self, paths: Iterable[str]) -> dict[str, FileMeta]:
        """Size and hashes of repo paths, from the hub's paths-info (cached per instance)."""
        paths = list(dict.fromkeys(paths))
        wanted = [p for p in paths if p not in self._meta]
        for i in range(0, len(wanted), PATHS_INFO_BATCH):
            infos = self._call(f"reading file metadata of {self.cfg.repo_id}",
                               functools.partial(self._paths_info, wanted[i:i + PATHS_INFO_BATCH]))
            for info in infos:
                if not hasattr(info, "size"):
                    continue  # a folder
                lfs = getattr(info, "lfs", None)
                self._meta[info.path] = FileMeta(
                    info.path, int(info.size), lfs.sha256 if lfs is not None else None,
                    None if lfs is not None else info.blob_id)
        missing = [p for p in paths if p not in self._meta]
        if missing:
            raise DatasetError(f"{missing[0]} not found in {self.cfg.repo_id} at revision "
                               f"{self.revision}" + (f" (and {len(missing) - 1} more)"
                                                     if len(missing) > 1 else ""))
        return {p: self._meta[p] for p in paths}

    def _paths_info(self, batch: list[str]) -> Any:
        return self._api().get_paths_info(self.cfg.repo_id, batch, expand=True,
                                          revision=self.revision, repo_type="dataset")

    def file_meta(self, name: str) -> FileMeta:
        return self.files_meta([_root_name(name)])[name]

    def file_url(self, path: str) -> str:
        """The `/resolve/` URL of a repo path at the run's commit."""
        from huggingface_hub import hf_hub_url

        return hf_hub_url(self.cfg.repo_id, path, repo_type="dataset", revision=self.revision,
                          endpoint=self.endpoint)

    def _opener(self, path: str, size: int | None = None) -> Any:
        return http_range(self.file_url(path), self._token, self.cfg.timeout_s, self.stats,
                          self._locations, size=size, before_resolve=self.resolve_limit.acquire)

    # --- tars ----------------------------------------------------------------------------------

    def tar_size(self, tar_number: int) -> int:
        return self.file_meta_tar(tar_number).size

    def file_meta_tar(self, tar_number: int) -> FileMeta:
        rel = tar_path(tar_number)
        return self.files_meta([rel])[rel]

    def tar_sizes(self, tar_numbers: Iterable[int]) -> dict[int, int]:
        rels = {n: tar_path(n) for n in tar_numbers}
        meta = self.files_meta(rels.values())
        return {n: meta[rel].size for n, rel in rels.items()}

    def tar_identity(self, tar_number: int) -> dict[str, Any]:
        meta = self.file_meta_tar(tar_number)
        return {"size": meta.size, "sha256": meta.sha256}

    def tar_identities(self, tar_numbers: Iterable[int]) -> dict[int, dict[str, Any]]:
        numbers = list(dict.fromkeys(tar_numbers))
        self.files_meta(tar_path(n) for n in numbers)  # 50 per request
        return {n: self.tar_identity(n) for n in numbers}

    def tar_metas(self, tar_numbers: Iterable[int]) -> dict[int, tuple[FileMeta, ...]]:
        rels = {n: tar_path(n) for n in tar_numbers}
        meta = self.files_meta(rels.values())  # 50 per request
        return {n: (meta[rel],) for n, rel in rels.items()}

    def remember(self, metas: Iterable[FileMeta]) -> None:
        self._meta.update((m.path, m) for m in metas)

    def describe_tar(self, tar_number: int) -> str:
        return (f"tar {tar_number:06d} ({tar_path(tar_number)} of {self.cfg.repo_id} at revision "
                f"{self.revision})")

    def local_tar_path(self, tar_number: int) -> Path:
        return self.cache.path(tar_path(tar_number))

    @contextlib.contextmanager
    def tar(self, tar_number: int) -> Iterator[Path]:
        meta = self.file_meta_tar(tar_number)
        rel = meta.path
        with self.cache.pinned(rel, reserve_bytes=meta.size) as path:
            if not self.cache.is_cached(rel, meta.size, meta.sha256):
                with self.cache.download_lock(rel):
                    if not self.cache.is_cached(rel, meta.size, meta.sha256):
                        recorded = self.cache.recorded_sha256(rel)
                        if recorded and meta.sha256 and recorded != meta.sha256.lower():
                            log.info("%s changed at commit %s: fetching it again", rel,
                                     self.revision)
                            path.unlink(missing_ok=True)  # another commit's content
                        self.cache.make_room(rel, meta.size)
                        got = fetch(meta, path, self._opener(rel, meta.size),
                                    max_retries=self.cfg.max_retries,
                                    backoff_s=self.cfg.retry_backoff_s, sleep=self._sleep)
                        self.cache.record(rel, got.sha256)
            self.cache.touch(rel)
            yield path

    def prefetch(self, tar_numbers: Iterable[int]) -> dict[int, Path]:
        numbers = list(dict.fromkeys(tar_numbers))
        self.tar_sizes(numbers)  # one metadata request per 50 tars instead of one per tar
        return super().prefetch(numbers)


def pinned_config(cfg: DatasetConfig, fetch_meta_json: str | os.PathLike[str]) -> DatasetConfig:
    """`cfg` with `revision` replaced by the commit sha fetch-meta resolved and recorded.

    Stages after fetch-meta call this once, in their main process, and hand the result to their
    threads and workers, so a branch name is resolved (and warned about) once per run, by
    fetch-meta. A local mirror has no revision: `cfg` is returned as it is. The recorded file must
    describe the same repo and requested revision as `cfg` (else fetch-meta is stale).
    """
    if cfg.source != "hub":
        return cfg
    path = Path(fetch_meta_json)
    if not path.is_file():
        if is_commit_sha(cfg.revision):
            return cfg
        raise DatasetError(f"{path} not found: run fetch-meta first (it resolves dataset.revision "
                           f"{cfg.revision!r} to a commit once for the whole run)")
    try:
        recorded = orjson.loads(path.read_bytes())["dataset"]
        source, repo, requested = recorded["source"], recorded["repo_id"], recorded["revision"]
        sha = recorded["resolved_revision"]
    except (OSError, orjson.JSONDecodeError, KeyError, TypeError) as exc:
        raise DatasetError(f"{path} is not a fetch-meta record ({type(exc).__name__}: {exc}); "
                           "run fetch-meta again") from None
    if (source, repo, requested) != ("hub", cfg.repo_id, cfg.revision):
        raise DatasetError(
            f"{path} was made for {source} {repo!r} at dataset.revision {requested!r}, but the "
            f"parameters say hub {cfg.repo_id!r} at dataset.revision {cfg.revision!r}: run "
            "fetch-meta again (dvc repro does)")
    if not isinstance(sha, str) or not is_commit_sha(sha):
        raise DatasetError(f"{path} records no commit sha ({sha!r}); run fetch-meta again")
    if sha != cfg.revision:
        log.info("dataset.revision %r: using commit %s, resolved by fetch-meta (%s)", cfg.revision,
                 sha, path)
    return dataclasses.replace(cfg, revision=sha)


def open_dataset(cfg: DatasetConfig, **kw: Any) -> Dataset:
    """The dataset `cfg` describes: a LocalDataset or a HubDataset (same interface)."""
    if cfg.source == "local":
        return LocalDataset(cfg, **kw)
    return HubDataset(cfg, **kw)


_SHARED: dict[tuple[DatasetConfig, int, str | None], Dataset] = {}
_SHARED_LOCK = threading.Lock()


def shared_dataset(cfg: DatasetConfig, *, share: int = 1, fresh: bool = False) -> Dataset:
    """One dataset object per configuration in this process, for all the tar jobs it runs: the
    metadata it read, the storage URLs the hub redirected to and the rate limits (this process's
    `share` of the hub's budgets) serve them all, so each tar costs at most one metadata lookup
    and one `/resolve/` request per process. `fresh`: a new one (a stage's run starts with one)."""
    key = (cfg, share, os.environ.get("HF_ENDPOINT"))
    with _SHARED_LOCK:
        ds = None if fresh else _SHARED.get(key)
        if ds is None:
            ds = _SHARED[key] = open_dataset(cfg, **({"share": share} if cfg.source == "hub" else {}))
        return ds
