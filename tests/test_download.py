"""Downloads against a local stand-in for the hub: resume, retry, verification, token hygiene."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest
from hub_server import REPO_ID, SHA, TOKEN, HubServer, HubState, hub_cfg, payload

from ups.dataset import DatasetError, HubDataset, open_dataset
from ups.download import DownloadError, FileMeta, fetch, local_range

VAD = "vad_results.jsonl"


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A running local hub with a 300 kB VAD file; HF_ENDPOINT and HF_TOKEN point at it."""
    state = HubState(REPO_ID, {VAD: payload(300_000), "lang_id_results.jsonl": payload(5_000, 1)})
    with HubServer(state) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield state


def make(tmp_path, **over):
    sleeps: list[float] = []
    ds = open_dataset(hub_cfg(tmp_path, **over), sleep=sleeps.append)
    assert isinstance(ds, HubDataset)
    return ds, sleeps


def test_resume_after_drop_500_and_429(hub, tmp_path):
    hub.fault(VAD, ("drop", 100_000), ("status", 500), ("status", 429, 1))
    ds, sleeps = make(tmp_path)
    dest = tmp_path / "out" / VAD
    meta = ds.fetch_file(VAD, dest)
    assert dest.read_bytes() == hub.files[VAD]
    assert meta.sha256 == hashlib.sha256(hub.files[VAD]).hexdigest()
    assert not (tmp_path / "out" / (VAD + ".partial")).exists()
    # 1st: whole file, dropped after 100 kB; then three ranged requests from the kept bytes.
    assert [r.range for r in hub.gets(VAD)] == [None] + ["bytes=100000-"] * 3
    # backoff 0.01 doubling; the 429's Retry-After (1 s) wins over 0.04.
    assert sleeps == pytest.approx([0.01, 0.02, 1.0])


def test_corrupted_bytes_never_land_and_fail_after_max_retries(hub, tmp_path):
    hub.fault(VAD, *[("corrupt", k) for k in range(10)])  # another byte each time: in transit
    ds, sleeps = make(tmp_path, max_retries=2)
    dest = tmp_path / "out" / VAD
    with pytest.raises(DownloadError, match=r"giving up after 3 attempt\(s\).*sha256"):
        ds.fetch_file(VAD, dest)
    assert not dest.exists() and not (tmp_path / "out" / (VAD + ".partial")).exists()
    # Each failed check deletes the partial, so every attempt starts from byte 0.
    assert [r.range for r in hub.gets(VAD)] == [None] * 3
    assert len(sleeps) == 2


def test_the_same_wrong_bytes_twice_are_not_fetched_again(hub, tmp_path):
    # A source that holds other bytes than its metadata describes sends them every time: each
    # retry of a whole tar would move 4.5-15 GB for nothing.
    hub.fault(VAD, *[("corrupt", 7)] * 10)
    ds, sleeps = make(tmp_path, max_retries=5)
    with pytest.raises(DownloadError, match=r"same wrong bytes twice \(sha256 [0-9a-f]{64} != expected"):
        ds.fetch_file(VAD, tmp_path / "out" / VAD)
    assert len(hub.gets(VAD)) == 2 and len(sleeps) == 1


def test_a_416_on_a_commit_is_not_retried(hub, tmp_path):
    # The metadata says the file is longer than what the hub serves at this commit: a range past
    # the served end can never be satisfied, however often it is asked for.
    hub.meta[VAD] = hub.files[VAD] + b"more"
    ds, sleeps = make(tmp_path, max_retries=5)
    with pytest.raises(DownloadError, match="HTTP 416.*past the end"):
        ds.read_file_range(VAD, len(hub.files[VAD]), 4)
    assert len(hub.gets(VAD)) == 1 and sleeps == []


def test_a_range_of_a_file_of_another_size_is_an_error(hub, tmp_path):
    hub.meta[VAD] = hub.files[VAD] + b"more"  # stale metadata: another size than is served
    ds, sleeps = make(tmp_path, max_retries=5)
    size = len(hub.meta[VAD])
    with pytest.raises(DownloadError, match=rf"is {size - 4} bytes \(Content-Range\), its metadata says"):
        ds.read_file_range(VAD, 0, 100, file_size=size)
    assert len(hub.gets(VAD)) == 1 and sleeps == []


def test_a_server_that_ignores_range_stops_a_member_read(hub, tmp_path):
    hub.ignore_range = True
    ds, sleeps = make(tmp_path, max_retries=5)
    with pytest.raises(DownloadError, match="ignores Range requests.*dataset.fetch: tars"):
        ds.read_file_range(VAD, 1000, 100)
    assert len(hub.gets(VAD)) == 1 and sleeps == []


def test_one_corrupt_answer_is_retried_from_scratch(hub, tmp_path):
    hub.fault(VAD, ("corrupt",))
    ds, _ = make(tmp_path)
    dest = tmp_path / VAD
    ds.fetch_file(VAD, dest)
    assert dest.read_bytes() == hub.files[VAD]
    assert len(hub.gets(VAD)) == 2


def test_stale_partial_with_wrong_prefix_is_discarded(hub, tmp_path):
    ds, _ = make(tmp_path)
    dest = tmp_path / VAD
    Path(str(dest) + ".partial").write_bytes(b"garbage!" * 100)
    ds.fetch_file(VAD, dest)
    assert dest.read_bytes() == hub.files[VAD]
    assert [r.range for r in hub.gets(VAD)] == ["bytes=800-", None]


def test_existing_good_file_is_verified_not_refetched(hub, tmp_path):
    ds, _ = make(tmp_path)
    dest = tmp_path / VAD
    dest.write_bytes(hub.files[VAD])
    ds.fetch_file(VAD, dest)
    assert hub.gets(VAD) == []
    dest.write_bytes(hub.files[VAD][:-1] + b"x")  # same size, wrong content
    ds.fetch_file(VAD, dest)
    assert dest.read_bytes() == hub.files[VAD] and len(hub.gets(VAD)) == 1


def test_non_lfs_file_checked_by_git_blob_id(hub, tmp_path):
    hub.lfs = False
    hub.fault(VAD, ("corrupt",))
    ds, _ = make(tmp_path, max_retries=0)
    with pytest.raises(DownloadError, match="git blob id"):
        ds.fetch_file(VAD, tmp_path / VAD)
    assert not (tmp_path / VAD).exists()
    ds.fetch_file(VAD, tmp_path / VAD)
    assert (tmp_path / VAD).read_bytes() == hub.files[VAD]


def test_size_and_sha256_mismatch(tmp_path):
    src = tmp_path / "src.bin"
    src.write_bytes(payload(10_000))
    good = hashlib.sha256(src.read_bytes()).hexdigest()
    dest = tmp_path / "dest.bin"
    with pytest.raises(DownloadError, match=r"ended early at byte 10000 of 10001"):
        fetch(FileMeta("src.bin", 10_001, good), dest, local_range(src), max_retries=1,
              backoff_s=0, sleep=lambda s: None)
    assert not dest.exists()
    with pytest.raises(DownloadError, match="more than 9999 bytes"):
        fetch(FileMeta("src.bin", 9_999, good), dest, local_range(src), max_retries=0,
              backoff_s=0)
    with pytest.raises(DownloadError, match="sha256"):
        fetch(FileMeta("src.bin", 10_000, "0" * 64), dest, local_range(src), max_retries=0,
              backoff_s=0)
    assert not dest.exists() and not Path(str(dest) + ".partial").exists()
    fetch(FileMeta("src.bin", 10_000, good), dest, local_range(src), max_retries=0, backoff_s=0)
    assert dest.read_bytes() == src.read_bytes()


def test_permanent_http_error_is_not_retried(hub, tmp_path):
    hub.fault(VAD, ("status", 403))
    ds, sleeps = make(tmp_path)
    with pytest.raises(DownloadError, match="HTTP 403.*HF_TOKEN"):
        ds.fetch_file(VAD, tmp_path / VAD)
    assert len(hub.gets(VAD)) == 1 and sleeps == []


def test_missing_file_is_named(hub, tmp_path):
    ds, _ = make(tmp_path)
    with pytest.raises(DatasetError, match="nope.jsonl not found"):
        ds.fetch_file("nope.jsonl", tmp_path / "nope.jsonl")
    with pytest.raises(DatasetError, match="not a file name"):
        ds.fetch_file("../x", tmp_path / "x")


def test_branch_revision_is_resolved_once_with_a_warning(hub, tmp_path, caplog):
    ds, _ = make(tmp_path, revision="main")
    with caplog.at_level(logging.WARNING, logger="ups"):
        ds.fetch_file(VAD, tmp_path / VAD)
        ds.fetch_file("lang_id_results.jsonl", tmp_path / "lid.jsonl")
    assert ds.describe()["resolved_revision"] == SHA and ds.describe()["pinned"] is False
    assert sum("/revision/main" in r.path for r in hub.requests) == 1
    assert all(SHA in r.path for r in hub.requests if "/resolve/" in r.path)
    assert any("NOT pinned" in r.getMessage() for r in caplog.records)


def test_pinned_revision_makes_no_resolution_request(hub, tmp_path):
    ds, _ = make(tmp_path)
    ds.fetch_file(VAD, tmp_path / VAD)
    assert not any("/revision/" in r.path for r in hub.requests)
    assert ds.describe()["pinned"] is True


def test_token_sent_as_header_only_and_never_leaked(hub, tmp_path, caplog):
    other_host = hub_url_as_localhost()
    hub.fault(VAD, ("drop", 1000), ("status", 500), ("redirect", other_host + "/cdn/"))
    hub.fault("lang_id_results.jsonl", ("status", 401))
    ds, _ = make(tmp_path, revision="main")
    errors: list[str] = []
    with caplog.at_level(logging.DEBUG):
        ds.fetch_file(VAD, tmp_path / VAD)
        try:
            ds.fetch_file("lang_id_results.jsonl", tmp_path / "lid.jsonl")
        except DownloadError as exc:
            errors.append(repr(exc) + str(exc) + repr(exc.__cause__) + repr(exc.__context__))
        try:
            ds.fetch_file("missing.jsonl", tmp_path / "missing.jsonl")
        except DatasetError as exc:
            errors.append(repr(exc) + str(exc))
    assert len(errors) == 2 and "401" in errors[0]
    hub_requests = [r for r in hub.requests if not r.path.startswith("/cdn/")]
    assert hub_requests and all(r.authorization == f"Bearer {TOKEN}" for r in hub_requests)
    cdn = [r for r in hub.requests if r.path.startswith("/cdn/")]
    assert len(cdn) == 1 and cdn[0].authorization is None  # dropped when the host changed
    assert (tmp_path / VAD).read_bytes() == hub.files[VAD]
    assert caplog.records, "expected retry warnings to be logged"
    for rec in caplog.records:
        assert TOKEN not in rec.getMessage() and TOKEN not in str(rec.args)
    assert not any(TOKEN in e for e in errors)
    for p in tmp_path.rglob("*"):
        if p.is_file():
            assert TOKEN.encode() not in p.read_bytes(), p


def hub_url_as_localhost() -> str:
    # The same server under another host name: a redirect there leaves the token's host.
    return os.environ["HF_ENDPOINT"].replace("127.0.0.1", "localhost")


def test_metadata_call_retries_transient_errors(hub, tmp_path):
    hub.fault("@paths-info", ("status", 503), ("status", 500))
    ds, sleeps = make(tmp_path)
    ds.fetch_file(VAD, tmp_path / VAD)
    assert sum("/paths-info/" in r.path for r in hub.requests) == 3
    assert sleeps == pytest.approx([0.01, 0.02])


def test_metadata_call_fails_fast_on_401(hub, tmp_path):
    hub.fault("@paths-info", ("status", 401))
    ds, sleeps = make(tmp_path)
    with pytest.raises(DatasetError, match="HTTP 401.*HF_TOKEN"):
        ds.fetch_file(VAD, tmp_path / VAD)
    assert sleeps == [] and sum("/paths-info/" in r.path for r in hub.requests) == 1


def test_stalled_transfer_times_out_and_resumes(hub, tmp_path):
    hub.fault(VAD, ("stall", 50_000, 2.0))
    ds, sleeps = make(tmp_path, timeout_s=0.3)
    ds.fetch_file(VAD, tmp_path / VAD)
    assert (tmp_path / VAD).read_bytes() == hub.files[VAD]
    assert [r.range for r in hub.gets(VAD)] == [None, "bytes=50000-"]
    assert len(sleeps) == 1


def test_transfers_go_through_the_hub_librarys_http_client(hub, tmp_path):
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils._http import default_client_factory

    seen: list[str] = []

    def factory() -> httpx2.Client:
        client = default_client_factory()
        client.event_hooks["request"].append(
            lambda request: seen.append(f"{request.method} {request.url.path}"))
        return client

    set_client_factory(factory)  # what a user does for a proxy or custom certificates
    try:
        ds, _ = make(tmp_path)
        ds.fetch_file(VAD, tmp_path / VAD)
    finally:
        set_client_factory(default_client_factory)
    assert (tmp_path / VAD).read_bytes() == hub.files[VAD]
    assert [s.split()[0] for s in seen if "/resolve/" in s] == ["GET"]  # the bytes
    assert [s.split()[0] for s in seen if "/paths-info/" in s] == ["POST"]  # and their size, hash
    assert ds.stats.requests == 1 and ds.stats.bytes == len(hub.files[VAD])


def test_offline_mode_is_one_clear_error_and_no_request(hub, tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    ds, sleeps = make(tmp_path)
    with pytest.raises(DatasetError, match="HF_HUB_OFFLINE"):
        ds.fetch_file(VAD, tmp_path / VAD)
    opener = ds._opener(VAD)
    from ups.download import read_range
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):
        read_range(VAD, opener, 0, 10, max_retries=3, backoff_s=0, sleep=sleeps.append)
    assert hub.requests == [] and sleeps == []


def test_member_range_resumes_after_a_drop(hub, tmp_path):
    hub.fault(VAD, ("drop", 1000), ("status", 503))
    ds, sleeps = make(tmp_path)
    from ups.download import read_range
    got = read_range(VAD, ds._opener(VAD), 50_000, 20_000, max_retries=3, backoff_s=0.01,
                     sleep=sleeps.append)
    assert got == hub.files[VAD][50_000:70_000]
    assert [r.range for r in hub.gets(VAD)] == ["bytes=50000-69999", "bytes=51000-69999",
                                                "bytes=51000-69999"]
    assert hub.sent(VAD) == 20_000 and sleeps == pytest.approx([0.01, 0.02])


def test_the_stand_in_answers_huggingface_hubs_own_download_api(hub, tmp_path):
    """hf_hub_download (HEAD + GET) and HfFileSystem (revision, tree, ranged GET) work against
    tests/hub_server.py, so bench/hub_client.py compares both clients on the same server."""
    from huggingface_hub import HfFileSystem, hf_hub_download

    url = os.environ["HF_ENDPOINT"]
    path = hf_hub_download(REPO_ID, VAD, repo_type="dataset", revision=SHA, local_dir=tmp_path / "d",
                           endpoint=url, token=TOKEN)
    assert Path(path).read_bytes() == hub.files[VAD]
    fs = HfFileSystem(endpoint=url, token=TOKEN)
    assert fs.cat_file(f"datasets/{REPO_ID}@{SHA}/{VAD}", start=10, end=20) == hub.files[VAD][10:20]


def test_ranged_reads_resolve_once_then_go_to_the_storage_url(hub, tmp_path):
    """The hub redirects /resolve/ to a signed storage URL; member and header reads reuse it, so
    the rate-limited resolve endpoint sees one request per file, and an expired URL is resolved
    again without counting as a failed attempt."""
    hub.cdn = hub_url_as_localhost() + "/cdn/"  # another host: the token must not follow
    ds, sleeps = make(tmp_path)
    for k in range(5):
        assert ds.read_file_range(VAD, 1000 * k, 500) == hub.files[VAD][1000 * k:1000 * k + 500]
    resolves = [r for r in hub.gets(VAD) if "/resolve/" in r.path]
    storage = [r for r in hub.gets(VAD) if r.path.startswith("/cdn/")]
    assert len(resolves) == 1 and len(storage) == 5
    assert all(r.authorization is None for r in storage)
    hub.fault("@cdn/" + VAD, ("status", 403))  # the signed URL expired
    assert ds.read_file_range(VAD, 0, 10) == hub.files[VAD][:10]
    assert len([r for r in hub.gets(VAD) if "/resolve/" in r.path]) == 2 and sleeps == []
