"""prepare-audio fetching only the needed tar members (dataset.fetch: members) against the local hub:
the same bytes as whole-tar fetches, fewer bytes sent, a dropped connection mid-member resumed,
index-members read once, a damaged tar fetched whole."""

from __future__ import annotations

import pytest
from hub_server import REPO_ID, SHA, TOKEN, HubServer, HubState

from tests.stages.conftest import tree_bytes, write_params
from ups import member_index
from ups.atomic import read_json
from ups.config import DatasetConfig, FeaturesConfig, PrepareAudioConfig, load_section
from ups.stages import index_members, prepare_audio

NO_META = "no-fetch-meta.json"  # the revision is a pinned sha: no fetch-meta record is needed


def _files(corpus) -> dict[str, bytes]:
    return {p.relative_to(corpus / "sample").as_posix(): p.read_bytes()
            for p in sorted((corpus / "sample").rglob("*.tar"))}


def _configs(corpus, out, fetch, cache=None, workers=2):
    out.mkdir(parents=True, exist_ok=True)
    params = write_params(out / "params.yaml", corpus / "sample")
    ds = load_section(DatasetConfig, "dataset", params)
    import dataclasses
    ds = dataclasses.replace(ds, source="hub", repo_id=REPO_ID, revision=SHA, fetch=fetch,
                             tar_cache_dir=str(cache or out / "cache"), retry_backoff_s=0.0, max_retries=3,
                             download_workers=workers)
    return (load_section(PrepareAudioConfig, "prepare_audio", params),
            load_section(FeaturesConfig, "features", params).mfcc, ds)


def _prepare(corpus, out, fetch, members_dir=None, cache=None, workers=2):
    cfg, mfcc, ds = _configs(corpus, out, fetch, cache, workers)
    return prepare_audio.run(cfg, mfcc, ds, chunks=corpus / "chunks.parquet", audio_dir=out / "audio",
                             features_dir=out / "features", report=out / "audio" / "report.json",
                             fetch_meta=out / NO_META, members_dir=members_dir)


@pytest.fixture
def hub(corpus, monkeypatch):
    state = HubState(REPO_ID, _files(corpus))
    with HubServer(state) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield state


@pytest.fixture(scope="module")
def whole_tar_run(corpus, tmp_path_factory):
    """The reference: prepare-audio on whole tars from the hub."""
    import os

    out = tmp_path_factory.mktemp("whole")
    state = HubState(REPO_ID, _files(corpus))
    with HubServer(state) as url:
        old = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN")}
        os.environ.update({"HF_ENDPOINT": url, "HF_TOKEN": TOKEN})
        try:
            summary = _prepare(corpus, out, "tars")
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out, summary, state.sent()


def _trees(out) -> dict[str, bytes]:
    return tree_bytes(out / "audio") | {"features/" + k: v for k, v in tree_bytes(out / "features").items()}


def test_member_fetches_give_the_whole_tar_bytes(corpus, tmp_path, hub, whole_tar_run):
    ref, ref_summary, ref_sent = whole_tar_run
    members = tmp_path / "members"
    idx = index_members.run(_configs(corpus, tmp_path, "members")[2], chunks=corpus / "chunks.parquet",
                            fetch_meta=tmp_path / NO_META, out_dir=members)
    walk_sent = hub.sent()
    summary = _prepare(corpus, tmp_path, "members", members_dir=members)
    # every file of the stage's outputs, markers and report included, is the same
    assert _trees(tmp_path) == _trees(ref)
    assert summary["download_bytes"] == ref_summary["download_bytes"]
    # only the wanted members were sent (not itemQ/unwanted.mp3), each once, nothing cached on disk
    sent_members = hub.sent() - walk_sent
    assert sent_members == summary["download_bytes"]["members"] == idx["download"]["members"]["bytes"]
    assert sent_members < summary["download_bytes"]["tars"] == ref_sent
    assert not list((tmp_path / "cache").rglob("*.tar"))
    assert idx["header_walk"]["bytes"] == walk_sent and idx["status"] == {"ok": 3}
    # one ranged request per member fetched (the corpus's selection names 6 members in 3 tars)
    ranged = [r for r in hub.requests if r.method == "GET" and r.range and r.range.count("-") == 1
              and not r.range.endswith("-")]
    assert len(ranged) == idx["header_walk"]["requests"] + idx["download"]["members"]["n_members"]


def test_without_a_stored_index_headers_are_walked_on_demand(corpus, tmp_path, hub, whole_tar_run):
    ref, _, _ = whole_tar_run
    _prepare(corpus, tmp_path, "members", members_dir=tmp_path / "absent")
    assert _trees(tmp_path) == _trees(ref)
    assert not (tmp_path / "absent").exists()  # prepare-audio never writes another stage's output


def test_a_connection_dropped_mid_member_resumes(corpus, tmp_path, hub, whole_tar_run):
    ref, _, _ = whole_tar_run
    members = tmp_path / "members"
    index_members.run(_configs(corpus, tmp_path, "members")[2], chunks=corpus / "chunks.parquet",
                      fetch_meta=tmp_path / NO_META, out_dir=members)
    first = next(e for e in member_index.read(members, 2).entries if e.key == "itemD/three")
    n_before = len(hub.requests)
    hub.fault("audio/000002.tar", ("drop", 5000), ("status", 503))
    _prepare(corpus, tmp_path, "members", members_dir=members, workers=1)  # one member at a time
    assert _trees(tmp_path) == _trees(ref)
    ranges = [r.range for r in hub.requests[n_before:] if r.path.endswith("000002.tar")]
    end = first.offset + first.size - 1
    assert ranges[0] == f"bytes={first.offset}-{end}"
    assert f"bytes={first.offset + 5000}-{end}" in ranges  # resumed from the bytes received


def test_index_members_reads_each_tar_once_and_a_damaged_tar_is_fetched_whole(corpus, tmp_path, hub):
    ds = _configs(corpus, tmp_path, "members")[2]
    members = tmp_path / "members"
    index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META,
                      out_dir=members)
    n = len(hub.requests)
    again = index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META,
                              out_dir=members)
    assert again["walked_now"] == 0
    assert not [r for r in hub.requests[n:] if r.method == "GET"]  # only the metadata batch
    # tar 3 is truncated on the hub (a new commit): its stored index no longer describes it
    cut = hub.files["audio/000003.tar"][:30_000]  # in the middle of its one member
    hub.files["audio/000003.tar"] = cut
    rep = index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META,
                            out_dir=members)
    assert rep["walked_now"] == 1 and rep["status"] == {"ok": 2, "truncated": 1}
    assert read_json(members / "report.json")["skipped"]["counts"] == {"tar_truncated": 1}
    # prepare-audio fetches that tar whole and counts the damage as a whole-tar run does
    _prepare(corpus, tmp_path, "members", members_dir=members)
    assert (tmp_path / "cache" / "audio" / "000003.tar").is_file()
    assert not (tmp_path / "cache" / "audio" / "000001.tar").exists()
    marker = read_json(tmp_path / "audio" / "_done" / "000003.done.json")
    assert marker["skipped"]["counts"]["truncated_tar"] == 1
    whole = tmp_path / "whole"  # same tar cache: the damage report names the tar's path
    _prepare(corpus, whole, "tars", cache=tmp_path / "cache")
    assert _trees(tmp_path) == _trees(whole)
