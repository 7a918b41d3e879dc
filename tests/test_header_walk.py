"""Many header walks at once over the async client, against the local hub stand-in: the same
indices as a blocking walk, one /resolve/ per tar, the hub's waits honoured, a failed walk kept
where it stopped and continued by the next run."""

from __future__ import annotations

import asyncio
import io
import tarfile

import pytest
from hub_server import REPO_ID, TOKEN, HubServer, HubState, hub_cfg

from ups import member_index
from ups.dataset import DownloadError, open_dataset
from ups.header_walk import AsyncRanges, WalkJob, walk_tars
from ups.keys import tar_path

TARS = (1, 2, 5001)


def build(n: int, salt: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
        for k in range(n):
            info = tarfile.TarInfo(f"item{salt}/{'long_' * (k % 3) * 30}file {k}.mp3")
            data = bytes([k % 256]) * (1500 + 900 * k)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@pytest.fixture
def hub(monkeypatch):
    state = HubState(REPO_ID, {tar_path(t): build(12 + t % 7, t) for t in TARS})
    with HubServer(state) as url:
        state.cdn = url.replace("127.0.0.1", "localhost") + "/cdn/"  # storage on another host
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield state


def blocking(state: HubState, tar: int, **kw) -> member_index.MemberIndex:
    data = state.files[tar_path(tar)]
    return member_index.walk(tar, lambda off, n: data[off:off + n], len(data), **kw)


def jobs(ds, wanted=None, resume=None) -> list[WalkJob]:
    idents = ds.tar_identities(TARS)
    return [WalkJob(t, idents[t], None if wanted is None else frozenset(wanted[t]),
                    None if resume is None else resume.get(t)) for t in TARS]


def test_walks_at_once_give_the_blocking_walks_index_with_one_resolve_per_tar(hub, tmp_path):
    ds = open_dataset(hub_cfg(tmp_path))
    saved: list[member_index.MemberIndex] = []
    got, errors = walk_tars(ds, jobs(ds), walks=2, save=saved.append)
    assert errors == {} and sorted(got) == list(TARS)
    for t in TARS:
        ref = blocking(hub, t, source=got[t].source)
        assert got[t] == ref and got[t].complete and got[t].ok
    assert sorted(i.tar for i in saved) == list(TARS)
    gets = [r for r in hub.requests if r.method == "GET" and r.path.endswith(".tar")]
    resolves = [r for r in gets if "/resolve/" in r.path]
    assert len(resolves) == len(TARS)  # then every read goes to the storage URL
    assert len(gets) - len(resolves) == sum(got[t].requests for t in TARS)
    assert all(r.authorization is None for r in gets if r.path.startswith("/cdn/"))
    assert all(r.authorization == f"Bearer {TOKEN}" for r in resolves)


def test_a_walk_stops_at_its_last_wanted_member(hub, tmp_path):
    ds = open_dataset(hub_cfg(tmp_path))
    full = {t: blocking(hub, t) for t in TARS}
    wanted = {t: {full[t].entries[3].key} for t in TARS}
    got, _ = walk_tars(ds, jobs(ds, wanted), walks=8, save=lambda i: None)
    for t in TARS:
        assert got[t].entries == full[t].entries[:4] and got[t].members_seen == 4
        assert got[t].next_offset == full[t].entries[4].header_offset


def test_the_hubs_waits_are_honoured_and_a_lost_storage_url_resolved_again(hub, tmp_path):
    rel = tar_path(2)
    hub.fault("@cdn/" + rel, ("pass",), ("status", 429, 3), ("status", 503, None,
                                                             {"RateLimit": '"resolvers";r=0;t=2'}),
              ("pass",), ("status", 403))  # the signed URL expired
    ds = open_dataset(hub_cfg(tmp_path, max_retries=0))  # no failure allowed: waits are none
    slept: list[float] = []

    async def asleep(s: float) -> None:
        slept.append(s)

    async def main() -> member_index.MemberIndex:
        job = jobs(ds)[1]
        async with AsyncRanges(ds, connections=2, asleep=asleep) as ranges:
            from ups.header_walk import walk_async
            return await walk_async(job, ranges.reader(job), lambda i: None)

    index = asyncio.run(main())
    assert index == blocking(hub, 2, source=index.source)
    assert slept == [3.0, 2.0]
    assert sum("/resolve/" in r.path for r in hub.gets(rel)) == 2  # first, and after the 403


def test_a_failed_walk_keeps_its_progress_and_the_next_run_continues_it(hub, tmp_path):
    ds = open_dataset(hub_cfg(tmp_path, max_retries=1))
    rel = tar_path(5001)
    hub.fault("@cdn/" + rel, *[("pass",)] * 6, *[("status", 500)] * 2)  # the 7th read fails
    stored: dict[int, member_index.MemberIndex] = {}
    got, errors = walk_tars(ds, jobs(ds), walks=4, checkpoint_s=0.0,
                            save=lambda i: stored.__setitem__(i.tar, i))
    assert list(errors) == [5001] and "giving up after 2 attempt(s): RetryableError: HTTP 500" in errors[5001]
    part = stored[5001]
    assert part.ok and not part.complete and part.members_seen == 6 and 5001 not in got
    n = len(hub.gets(rel))
    again, errors = walk_tars(ds, [j for j in jobs(ds, resume=stored) if j.tar == 5001], walks=4,
                              save=lambda i: None)
    full = blocking(hub, 5001, source=part.source)
    assert errors == {} and again[5001] == full
    assert len(hub.gets(rel)) - n == full.requests - part.requests  # none of the first six again


def test_a_server_that_ignores_range_stops_the_walk(hub, tmp_path):
    hub.ignore_range = True
    ds = open_dataset(hub_cfg(tmp_path))
    got, errors = walk_tars(ds, jobs(ds)[:1], walks=1, save=lambda i: None)
    assert got == {} and "ignores Range requests" in errors[1]
    assert ds.stats.bytes == 0  # the whole tar was not read for it


def test_a_tar_of_another_size_than_its_metadata_stops_the_walk(hub, tmp_path):
    rel = tar_path(1)
    hub.meta[rel] = hub.files[rel] + b"\0" * 512
    ds = open_dataset(hub_cfg(tmp_path))
    got, errors = walk_tars(ds, jobs(ds)[:1], walks=1, save=lambda i: None)
    assert got == {} and "its metadata says" in errors[1]
    with pytest.raises(DownloadError, match="its metadata says"):
        ds.read_tar_range(1, 0, 10)


def test_a_mirror_is_walked_with_blocking_reads(tmp_path):
    root = tmp_path / "mirror"
    for t in TARS:
        p = root / tar_path(t)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(build(5, t))
    cfg = hub_cfg(tmp_path, source="local", local_root=str(root))
    ds = open_dataset(cfg)
    got, errors = walk_tars(ds, jobs(ds), walks=2, save=lambda i: None)
    assert errors == {}
    for t in TARS:
        data = build(5, t)
        assert got[t] == member_index.walk(t, lambda off, n, d=data: d[off:off + n], len(data),
                                           source=got[t].source)
        assert got[t].source["size"] == len(data) and "ctime_ns" in got[t].source
