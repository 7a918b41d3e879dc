"""index-members: each selected tar's headers walked once and kept, a damaged tar marked for a
whole fetch, a larger selection continuing each walk where it stopped."""

from __future__ import annotations

from tests.stages.conftest import NO_META, audio_trees, member_configs, prepare_from_hub, tree_bytes
from ups import member_index
from ups.atomic import read_json
from ups.stages import index_members


def test_index_members_reads_each_tar_once_and_a_damaged_tar_is_fetched_whole(corpus, tmp_path, hub):
    ds = member_configs(corpus, tmp_path, "members")[2]
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
    prepare_from_hub(corpus, tmp_path, "members", members_dir=members)
    assert (tmp_path / "cache" / "audio" / "000003.tar").is_file()
    assert not (tmp_path / "cache" / "audio" / "000001.tar").exists()
    marker = read_json(tmp_path / "audio" / "_done" / "000003.done.json")
    assert marker["skipped"]["counts"]["truncated_tar"] == 1
    whole = tmp_path / "whole"  # same tar cache: the damage report names the tar's path
    prepare_from_hub(corpus, whole, "tars", cache=tmp_path / "cache")
    assert audio_trees(tmp_path) == audio_trees(whole)


def test_a_larger_selection_continues_each_walk_and_ends_where_one_walk_would(corpus, tmp_path, hub):
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    ds = member_configs(corpus, tmp_path, "members")[2]
    table = pq.read_table(corpus / "chunks.parquet")
    small = tmp_path / "small.parquet"
    pq.write_table(table.filter(pc.equal(table["key"], "itemD/three")), small)
    members = tmp_path / "members"
    first = index_members.run(ds, chunks=small, fetch_meta=tmp_path / NO_META, out_dir=members)
    part = member_index.read(members, 2)
    assert first["walked_now"] == 1 and not part.complete and [e.key for e in part.entries] == ["itemD/three"]
    n = len(hub.gets("audio/000002.tar"))
    second = index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META,
                               out_dir=members)
    assert second["walked_now"] == 3
    grown = member_index.read(members, 2)
    assert len(hub.gets("audio/000002.tar")) - n == grown.requests - part.requests == 1
    direct = tmp_path / "direct"
    index_members.run(ds, chunks=corpus / "chunks.parquet", fetch_meta=tmp_path / NO_META, out_dir=direct)
    assert tree_bytes(members) == tree_bytes(direct)  # the same index, however the selection grew


# --- each member is checked against the index: a tar that changed under the same identity --------
