"""The dataset interface over a local mirror and the (local stand-in) hub; the tar cache budget."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from hub_server import REPO_ID, TOKEN, HubServer, HubState, hub_cfg, payload

from ups.config import DatasetConfig
from ups.dataset import DatasetError, HubDataset, LocalDataset, open_dataset
from ups.tar_cache import CacheFullError


def hub_url_as_localhost() -> str:
    return os.environ["HF_ENDPOINT"].replace("127.0.0.1", "localhost")

TARS = {1: "audio/000001.tar", 5000: "audio/005000.tar", 5001: "audio2/005001.tar",
        7: "audio/000007.tar"}


def local_cfg(root: Path) -> DatasetConfig:
    return DatasetConfig(source="local", local_root=str(root), repo_id=REPO_ID, revision="main",
                         tar_cache_dir=str(root / "unused-cache"), cache_budget_gb=1.0,
                         download_workers=1, max_retries=0, retry_backoff_s=0.0, timeout_s=1.0)


@pytest.fixture
def mirror(tmp_path, tar_factory) -> Path:
    root = tmp_path / "mirror"
    for n, rel in TARS.items():
        tar_factory(f"mirror/{rel}", {f"item{n}/a.mp3": payload(100 + n, n)})
    (root / "vad_results.jsonl").write_bytes(payload(3000, 9))
    return root


def test_local_source_yields_the_mirrors_paths(mirror):
    ds = open_dataset(local_cfg(mirror))
    assert isinstance(ds, LocalDataset)
    for n, rel in TARS.items():
        with ds.tar(n) as p:
            assert p == mirror / rel  # in place, no copy
        assert ds.tar_size(n) == (mirror / rel).stat().st_size
    assert ds.tar_sizes([7, 1]) == {7: (mirror / TARS[7]).stat().st_size,
                                    1: (mirror / TARS[1]).stat().st_size}
    assert ds.describe() == {"source": "local", "local_root": str(mirror)}


def test_local_source_missing_tar_and_root(mirror, tmp_path):
    ds = open_dataset(local_cfg(mirror))
    with pytest.raises(DatasetError, match="audio2/005002.tar is not in the local mirror"):
        with ds.tar(5002):
            pass
    with pytest.raises(DatasetError, match="dataset.local_root"):
        open_dataset(local_cfg(tmp_path / "absent"))


def test_local_fetch_file_resumes_a_partial_copy(mirror, tmp_path):
    ds = open_dataset(local_cfg(mirror))
    dest = tmp_path / "out" / "vad_results.jsonl"
    dest.parent.mkdir()
    src = (mirror / "vad_results.jsonl").read_bytes()
    Path(str(dest) + ".partial").write_bytes(src[:1234])
    meta = ds.fetch_file("vad_results.jsonl", dest)
    assert dest.read_bytes() == src and meta.size == len(src)
    assert not Path(str(dest) + ".partial").exists()


# --- hub tars ----------------------------------------------------------------------------------

@pytest.fixture
def hub(tmp_path, monkeypatch):
    files = {rel: payload(1000, n) for n, rel in TARS.items()}
    state = HubState(REPO_ID, files)
    with HubServer(state) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield state


def hub_ds(tmp_path, **over) -> HubDataset:
    ds = open_dataset(hub_cfg(tmp_path, **over), sleep=lambda s: None)
    assert isinstance(ds, HubDataset)
    return ds


@pytest.mark.parametrize("status", [429, 503])
def test_a_metadata_call_waits_the_hubs_retry_after(hub, tmp_path, status):
    # A metadata call waits as long as the hub asks, not the backoff.
    hub.fault("@paths-info", ("status", status, 7), ("status", status, 0))
    slept: list[float] = []
    ds = open_dataset(hub_cfg(tmp_path, retry_backoff_s=0.5), sleep=slept.append)
    assert ds.tar_sizes([1]) == {1: 1000}
    # Retry-After when the hub names a wait (not a failed attempt), else the first backoff
    assert slept == [7.0, 0.5]
    assert sum("/paths-info/" in r.path for r in hub.requests) == 3


def test_rate_limit_waits_are_not_failed_attempts(hub, tmp_path):
    # A 5-minute rate-limit window answers 429 for minutes: counted as failures, its waits would
    # end a metadata call after max_retries (~62 s with the defaults) while the hub says wait.
    hub.fault("@paths-info", *[("status", 429, 60)] * 6,
              ("status", 429, None, {"RateLimit": '"api";r=0;t=42'}))
    slept: list[float] = []
    ds = open_dataset(hub_cfg(tmp_path, max_retries=3, retry_backoff_s=2.0), sleep=slept.append)
    assert ds.tar_sizes([1, 7]) == {1: 1000, 7: 1000}
    assert slept == [60.0] * 6 + [42.0]  # the hub's RateLimit reset when it sends no Retry-After


def test_a_transfer_waits_the_hubs_retry_after(hub, tmp_path):
    hub.fault(TARS[1], *[("status", 429, 30)] * 5, ("status", 503, 5))
    slept: list[float] = []
    ds = open_dataset(hub_cfg(tmp_path, max_retries=2), sleep=slept.append)
    assert ds.read_tar_range(1, 100, 50) == hub.files[TARS[1]][100:150]
    assert slept == [30.0] * 5 + [5.0]


def test_metadata_and_resolves_keep_to_the_budgets(hub, tmp_path):
    slept: list[float] = []
    ds = open_dataset(hub_cfg(tmp_path, api_calls_per_5min=2, resolves_per_5min=3), sleep=slept.append,
                      clock=lambda: 1000.0)  # time stands still: every wait is the limiter's
    for n in TARS:
        ds.tar_size(n)  # one metadata call per tar (a cached answer makes none)
    ds.tar_size(1)
    assert slept == [300.0, 300.0]  # calls 3 and 4 wait for the next windows
    hub.cdn = hub_url_as_localhost() + "/cdn/"
    slept.clear()
    for n in TARS:
        for k in range(3):
            ds.read_tar_range(n, 10 * k, 10)  # the first read of a tar resolves, the others not
    assert slept == [300.0]  # the 4th tar's resolve
    assert sum("/resolve/" in r.path for r in hub.requests) == 4


def test_the_processes_of_a_stage_share_the_budgets(hub, tmp_path):
    ds = open_dataset(hub_cfg(tmp_path, api_calls_per_5min=500, resolves_per_5min=2500), share=4)
    assert (ds.api_limit.calls, ds.resolve_limit.calls) == (125, 625)


def test_hub_tar_is_downloaded_once_into_the_cache(hub, tmp_path):
    ds = hub_ds(tmp_path)
    for n, rel in TARS.items():
        assert ds.tar_size(n) == 1000
        with ds.tar(n) as p:
            assert p == tmp_path / "cache" / rel
            assert p.read_bytes() == hub.files[rel]
    with ds.tar(5001) as p:
        assert p.read_bytes() == hub.files["audio2/005001.tar"]
    assert len(hub.gets("audio2/005001.tar")) == 1


def test_same_tar_from_two_threads_downloads_once(hub, tmp_path):
    ds = hub_ds(tmp_path)
    ds.tar_sizes([1])
    seen: list[bytes] = []

    def use() -> None:
        with ds.tar(1) as p:
            seen.append(p.read_bytes())

    threads = [threading.Thread(target=use) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [hub.files["audio/000001.tar"]] * 4
    assert len(hub.gets("audio/000001.tar")) == 1


def test_prefetch_with_workers(hub, tmp_path):
    ds = hub_ds(tmp_path, download_workers=3)
    assert ds.tar_sizes([1, 5001, 7]) == {1: 1000, 5001: 1000, 7: 1000}
    paths = ds.prefetch([1, 5001, 7, 1])
    assert sorted(paths) == [1, 7, 5001]
    for n, p in paths.items():
        assert p.read_bytes() == hub.files[TARS[n]]
    assert sum("/paths-info/" in r.path for r in hub.requests) == 1  # one metadata batch


def test_prefetch_reports_failed_tars(hub, tmp_path):
    hub.fault("audio/000007.tar", *[("status", 500)] * 5)
    ds = hub_ds(tmp_path, max_retries=1)
    with pytest.raises(DatasetError, match=r"1 of 2 tar\(s\) failed; tar 7: .*HTTP 500"):
        ds.prefetch([1, 7])
    assert (tmp_path / "cache" / TARS[1]).is_file()
    assert not (tmp_path / "cache" / TARS[7]).exists()


def test_budget_evicts_lru_but_never_a_pinned_tar(hub, tmp_path, caplog):
    # 2500 bytes: two 1000-byte tars fit, a third needs an eviction.
    ds = hub_ds(tmp_path, cache_budget_gb=2500e-9)
    cache = tmp_path / "cache"
    with ds.tar(1):  # pinned throughout, and the least recently used
        with ds.tar(5000):
            pass
        os.utime(cache / TARS[1], (1, 1))  # make tar 1 the oldest use by far
        with caplog.at_level("INFO", logger="ups.tar_cache"):
            with ds.tar(5001) as p:
                assert p.read_bytes() == hub.files[TARS[5001]]
        assert (cache / TARS[1]).is_file()  # pinned: kept although oldest
        assert not (cache / TARS[5000]).exists()  # unpinned LRU: evicted
        assert not (cache / (TARS[5000] + ".sha256")).exists()  # with its recorded hash
        assert any("evicted audio/005000.tar" in r.getMessage() for r in caplog.records)
        with ds.tar(7):  # evicts 5001 (unpinned), still not 1
            pass
        assert (cache / TARS[1]).is_file() and not (cache / TARS[5001]).exists()
    with ds.tar(5000):  # tar 1 is unpinned now and the LRU: it goes
        pass
    assert not (cache / TARS[1]).exists() and (cache / TARS[7]).is_file()


def test_budget_too_small_for_pinned_tars(hub, tmp_path):
    ds = hub_ds(tmp_path, cache_budget_gb=1500e-9)
    with ds.tar(1):
        with pytest.raises(CacheFullError, match="cache_budget_gb"):
            with ds.tar(7):
                pass
    assert (tmp_path / "cache" / TARS[1]).is_file()


def test_hub_config_through_open_dataset(hub, tmp_path):
    ds = open_dataset(hub_cfg(tmp_path))
    assert isinstance(ds, HubDataset) and ds.endpoint == os.environ["HF_ENDPOINT"]


def test_cached_tar_is_reused_only_while_its_content_is_the_sources(hub, tmp_path):
    import hashlib

    ds = hub_ds(tmp_path)
    with ds.tar(1) as p:
        pass
    assert (tmp_path / "cache" / (TARS[1] + ".sha256")).read_text().strip() == \
        hashlib.sha256(hub.files[TARS[1]]).hexdigest()
    # another commit, same content: no transfer
    hub.sha = "c" * 40
    ds = hub_ds(tmp_path, revision=hub.sha)
    with ds.tar(1) as p:
        assert p.read_bytes() == hub.files[TARS[1]]
    assert len(hub.gets(TARS[1])) == 1
    # another commit where the tar changed but kept its size: fetched again
    hub.sha = "d" * 40
    hub.files[TARS[1]] = payload(1000, 99)
    ds = hub_ds(tmp_path, revision=hub.sha)
    with ds.tar(1) as p:
        assert p.read_bytes() == hub.files[TARS[1]]
    assert len(hub.gets(TARS[1])) == 2
