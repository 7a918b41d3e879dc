"""prepare-audio fetching only the needed tar members (dataset.fetch: members) against the local hub:
the same bytes as whole-tar fetches, fewer bytes sent, a dropped connection mid-member resumed,
each member checked against the index, the hub's rules kept."""

from __future__ import annotations

import pytest
from hub_server import REPO_ID, SHA, TOKEN, HubServer, HubState

from tests.stages.conftest import NO_META, audio_trees, hub_files, member_configs, prepare_from_hub
from ups import member_index
from ups.dataset import DatasetError, DownloadError
from ups.stages import index_members, prepare_audio

WANTED = {"itemA/one", "itemB/two.v1", "itemC/bad", "itemD/three", "itemE/x", "itemF/f"}


@pytest.fixture(scope="module")
def whole_tar_run(corpus, tmp_path_factory):
    """The reference: prepare-audio on whole tars from the hub."""
    import os

    out = tmp_path_factory.mktemp("whole")
    state = HubState(REPO_ID, hub_files(corpus))
    with HubServer(state) as url:
        old = {k: os.environ.get(k) for k in ("HF_ENDPOINT", "HF_TOKEN")}
        os.environ.update({"HF_ENDPOINT": url, "HF_TOKEN": TOKEN})
        try:
            summary = prepare_from_hub(corpus, out, "tars")
        finally:
            for k, v in old.items():
                os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return out, summary, state.sent()


def test_member_fetches_give_the_whole_tar_bytes(corpus, tmp_path, hub, whole_tar_run):
    ref, ref_summary, ref_sent = whole_tar_run
    members = tmp_path / "members"
    idx = index_members.run(member_configs(corpus, tmp_path, "members")[2], chunks=corpus / "chunks.parquet",
                            fetch_meta=tmp_path / NO_META, out_dir=members)
    walk_sent = hub.sent()
    summary = prepare_from_hub(corpus, tmp_path, "members", members_dir=members)
    # every file of the stage's outputs, markers and report included, is the same
    assert audio_trees(tmp_path) == audio_trees(ref)
    assert summary["download_bytes"] == ref_summary["download_bytes"]
    # only the wanted members were sent (not itemQ/unwanted.mp3), each once, nothing cached on disk
    sent_members = hub.sent() - walk_sent
    heads = sum(e.offset - e.header_offset for t in (1, 2, 3)
                for e in member_index.read(members, t).entries if e.key in WANTED)
    assert 0 < heads < 3 * 512 * len(WANTED)  # each member's header blocks come with it
    assert sent_members - heads == summary["download_bytes"]["members"] == idx["download"]["members"]["bytes"]
    assert sent_members < summary["download_bytes"]["tars"] == ref_sent
    assert not list((tmp_path / "cache").rglob("*.tar"))
    assert idx["header_walk"]["bytes"] == walk_sent and idx["status"] == {"ok": 3}
    # one ranged request per member fetched (the corpus's selection names 6 members in 3 tars)
    ranged = [r for r in hub.requests if r.method == "GET" and r.range and r.range.count("-") == 1
              and not r.range.endswith("-")]
    assert len(ranged) == idx["header_walk"]["requests"] + idx["download"]["members"]["n_members"]


def test_without_a_stored_index_headers_are_walked_on_demand(corpus, tmp_path, hub, whole_tar_run):
    ref, _, _ = whole_tar_run
    prepare_from_hub(corpus, tmp_path, "members", members_dir=tmp_path / "absent")
    assert audio_trees(tmp_path) == audio_trees(ref)
    assert not (tmp_path / "absent").exists()  # prepare-audio never writes another stage's output


def test_a_connection_dropped_mid_member_resumes(corpus, tmp_path, hub, whole_tar_run):
    ref, _, _ = whole_tar_run
    members = tmp_path / "members"
    index_members.run(member_configs(corpus, tmp_path, "members")[2], chunks=corpus / "chunks.parquet",
                      fetch_meta=tmp_path / NO_META, out_dir=members)
    first = next(e for e in member_index.read(members, 2).entries if e.key == "itemD/three")
    n_before = len(hub.requests)
    hub.fault("audio/000002.tar", ("drop", 5000), ("status", 503))
    prepare_from_hub(corpus, tmp_path, "members", members_dir=members, workers=1)  # one member at a time
    assert audio_trees(tmp_path) == audio_trees(ref)
    ranges = [r.range for r in hub.requests[n_before:] if r.path.endswith("000002.tar")]
    end = first.offset + first.size - 1  # fetched with its header blocks
    assert ranges[0] == f"bytes={first.header_offset}-{end}"
    assert f"bytes={first.header_offset + 5000}-{end}" in ranges  # resumed from the bytes received


def _repacked(data: bytes) -> bytes:
    """The same members in another order: a tar of the same size with another layout."""
    import io
    import tarfile

    src = tarfile.open(fileobj=io.BytesIO(data))
    members = [(m, src.extractfile(m).read()) for m in src.getmembers()]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as out:
        for m, body in reversed(members):
            out.addfile(m, io.BytesIO(body))
    return buf.getvalue()[:len(data)] + b"\0" * max(0, len(data) - len(buf.getvalue()))


def test_a_repacked_tar_behind_unchanged_metadata_is_an_error_naming_tar_and_revision(corpus, tmp_path, hub):
    # A mirror of the hub (HF_ENDPOINT) that serves a re-packed tar under the same path, size and
    # sha256: the stored layout does not describe it; decoding what lies there loses chunks unseen.
    ds = member_configs(corpus, tmp_path, "members")[2]
    members = tmp_path / "members"
    index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META, out_dir=members)
    rel = "audio/000001.tar"
    hub.meta[rel] = hub.files[rel]
    hub.files[rel] = _repacked(hub.files[rel])
    assert len(hub.files[rel]) == len(hub.meta[rel]) and hub.files[rel] != hub.meta[rel]
    with pytest.raises(DatasetError, match=rf"tar 000001 \({rel} of {REPO_ID} at revision {SHA}\).*"
                                           r"member index says 'itemA/one.mp3'"):
        prepare_from_hub(corpus, tmp_path, "members", members_dir=members)


def test_a_flipped_header_byte_is_an_error_a_flipped_data_byte_reads_as_the_tar(corpus, tmp_path, hub):
    ds = member_configs(corpus, tmp_path, "members")[2]
    members = tmp_path / "members"
    index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META, out_dir=members)
    rel = "audio/000002.tar"
    e = next(e for e in member_index.read(members, 2).entries if e.key == "itemE/x")
    hub.meta[rel] = original = hub.files[rel]
    flipped = bytearray(original)
    flipped[e.offset - 512 + 3] ^= 0x20  # a letter of the name field of its ustar header
    hub.files[rel] = bytes(flipped)
    where = rf"tar 000002 \(audio/000002.tar of {REPO_ID} at revision {SHA}\)"
    with pytest.raises(DatasetError, match=where + r": no tar header at byte \d+ \(ReadError: .*checksum"):
        prepare_from_hub(corpus, tmp_path / "a", "members", members_dir=members)
    # a flipped byte of member data: no hash covers a member, so the decoder meets it exactly as
    # it meets it in the whole tar (here: the MP3 still decodes)
    flipped = bytearray(original)
    flipped[e.offset + e.size // 2] ^= 0x01
    hub.files[rel] = hub.meta[rel] = bytes(flipped)
    got = prepare_from_hub(corpus, tmp_path / "b", "members", members_dir=members)
    ref = prepare_from_hub(corpus, tmp_path / "c", "tars")
    assert audio_trees(tmp_path / "b") == audio_trees(tmp_path / "c")
    assert got["n_chunks_written"] == ref["n_chunks_written"]


def test_a_mirror_tar_rewritten_with_its_old_mtime_is_walked_again(corpus, tmp_path):
    # A local mirror's tar re-packed in place with size and mtime kept: trusting the stored index
    # loses the tar's chunks without a word.
    import os
    import shutil

    mirror = tmp_path / "mirror"
    shutil.copytree(corpus / "sample", mirror)
    cfg, mfcc, ds = member_configs(corpus, tmp_path, "members")
    import dataclasses
    ds = dataclasses.replace(ds, source="local", local_root=str(mirror))
    members = tmp_path / "members"
    index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META, out_dir=members)
    tar = mirror / "audio" / "000001.tar"
    st = tar.stat()
    tar.write_bytes(_repacked(tar.read_bytes()))
    os.utime(tar, ns=(st.st_atime_ns, st.st_mtime_ns))
    out = {}
    for fetch in ("members", "tars"):
        o = tmp_path / fetch
        out[fetch] = prepare_audio.run(
            cfg, mfcc, dataclasses.replace(ds, fetch=fetch), chunks=corpus / "chunks.parquet",
            audio_dir=o / "audio", features_dir=o / "features", report=o / "audio" / "report.json",
            fetch_meta=o / NO_META, members_dir=members if fetch == "members" else None)
    assert audio_trees(tmp_path / "members") == audio_trees(tmp_path / "tars")
    assert out["members"]["n_chunks_written"] == out["tars"]["n_chunks_written"] == 7


def test_a_server_that_ignores_range_stops_member_fetches(corpus, tmp_path, hub):
    ds = member_configs(corpus, tmp_path, "members")[2]
    members = tmp_path / "members"
    index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META, out_dir=members)
    hub.ignore_range = True
    with pytest.raises(DownloadError, match="ignores Range requests.*dataset.fetch: tars"):
        prepare_from_hub(corpus, tmp_path, "members", members_dir=members)


@pytest.mark.parametrize("fetch", ["members", "tars"])
def test_one_metadata_request_and_one_resolve_per_tar_in_a_run(corpus, tmp_path, hub, fetch):
    # A dataset object per tar would ask the hub for the tar's metadata and resolve its URL in
    # every job (and whole tars once more in the prefetch): ~4,000 API calls for 100 h, against a
    # budget of 1,000 per 5 minutes.
    import os

    hub.cdn = os.environ["HF_ENDPOINT"].replace("127.0.0.1", "localhost") + "/cdn/"
    members = None
    if fetch == "members":
        members = tmp_path / "members"
        index_members.run(member_configs(corpus, tmp_path, fetch)[2], chunks=corpus / "chunks.parquet",
                          fetch_meta=tmp_path / NO_META, out_dir=members)
    n = len(hub.requests)
    prepare_from_hub(corpus, tmp_path, fetch, members_dir=members)
    run = hub.requests[n:]
    assert sum("/paths-info/" in r.path for r in run) == 1  # the three tars in one batch
    for t in (1, 2, 3):
        assert sum(r.path.endswith(f"/resolve/{SHA}/audio/00000{t}.tar") for r in run) == 1
