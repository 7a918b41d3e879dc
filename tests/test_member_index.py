"""The member index equals tarfile's own view of a tar, read through ranged reads of its headers."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ups import member_index
from ups.keys import normalize_key
from ups.tar_reader import unsafe_reason

SAMPLE_TARS = ["audio/000001.tar", "audio/000002.tar", "audio2/005001.tar"]


def tarfile_view(data: bytes) -> list[tuple[str, int, int, str | None]]:
    """What `tarfile` lists (directories left out), up to where it stops or fails."""
    out = []
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tf:
            for m in tf:
                if not m.isdir():
                    out.append((m.name, m.offset_data, m.size if m.isfile() else 0, unsafe_reason(m)))
    except tarfile.ReadError:
        pass
    return out


def index_view(index: member_index.MemberIndex) -> list[tuple[str, int, int, str | None]]:
    return [(e.name, e.offset, e.size, e.skip) for e in index.entries]


class Counting:
    def __init__(self, data: bytes) -> None:
        self.data, self.calls = data, []

    def __call__(self, offset: int, size: int) -> bytes:
        self.calls.append((offset, size))
        return self.data[offset:offset + size]


def walk_bytes(data: bytes, **kw) -> tuple[member_index.MemberIndex, Counting]:
    reader = Counting(data)
    return member_index.walk(7, reader, len(data), **kw), reader


def build(members: list[tuple[str, object]], fmt: int, **kw) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, **kw) as tf:
        for name, what in members:
            info = tarfile.TarInfo(name)
            if what == "dir":
                info.type = tarfile.DIRTYPE
                tf.addfile(info)
            elif isinstance(what, tuple):  # ("sym" | "lnk", target)
                info.type = tarfile.SYMTYPE if what[0] == "sym" else tarfile.LNKTYPE
                info.linkname = what[1]
                tf.addfile(info)
            else:
                assert isinstance(what, bytes)
                info.size = len(what)
                tf.addfile(info, io.BytesIO(what))
    return buf.getvalue()


LONG = "item_" + "x" * 120 + "/" + "very_long_file_name_" * 6 + ".mp3"
MEMBERS = [
    ("itemA", "dir"),
    ("itemA/short.mp3", b"a" * 1000),
    (LONG, b"b" * 70_000),                                   # > 100 chars: GNU 'L' / pax path
    ("canción/café ñandú.mp3", b"c" * 3000),                   # non-ASCII: pax (GNU: raw UTF-8)
    ("radio.show.2011/ep.01.part.2.mp3", b"d" * 512),
    ("empty/zero.mp3", b""),
    ("itemA/link.mp3", ("sym", "/etc/passwd")),
    ("itemA/hard.mp3", ("lnk", "itemA/short.mp3")),
    ("../escape.mp3", b"e" * 10),
    ("notes/readme.txt", b"not audio"),
]


@pytest.mark.parametrize("rel", SAMPLE_TARS)
def test_every_sample_tar(sample_root, rel):
    data = (sample_root / rel).read_bytes()
    index, reader = walk_bytes(data)
    assert index.status == "ok" and index.reason == ""
    assert index_view(index) == tarfile_view(data)
    assert len(index.entries) >= 11
    # one ranged read per member (its header blocks come in one window), plus the end marker
    assert len(reader.calls) <= len(index.entries) + 2
    assert index.bytes_read < 0.02 * len(data)
    assert index.member_bytes() == sum(e.size for e in index.entries)


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_long_names_pax_links_directories(fmt):
    data = build(MEMBERS, fmt)
    index, reader = walk_bytes(data)
    assert index.status == "ok"
    assert index_view(index) == tarfile_view(data)
    names = [e.name for e in index.entries]
    assert LONG in names and "canción/café ñandú.mp3" in names and "itemA" not in names  # dir skipped
    skips = {e.name: e.skip for e in index.entries}
    assert skips["itemA/link.mp3"] == skips["itemA/hard.mp3"] == "tar_link_member"
    assert skips["../escape.mp3"] == "tar_parent_path" and skips["itemA/short.mp3"] is None
    big = next(e for e in index.entries if e.name == LONG)
    assert data[big.offset:big.offset + big.size] == b"b" * 70_000
    assert index.member_bytes({big.key}) == 70_000


def test_global_pax_header_and_ustar_prefix():
    ustar_name = "p" * 90 + "/" + "q" * 90 + ".mp3"  # fits ustar's prefix + name fields
    data = build([(ustar_name, b"u" * 2000), ("g/x.mp3", b"v" * 10)], tarfile.PAX_FORMAT,
                 pax_headers={"comment": "global"})
    index, _ = walk_bytes(data)
    assert index.status == "ok" and index_view(index) == tarfile_view(data)
    assert [e.name for e in index.entries] == [ustar_name, "g/x.mp3"]


def test_small_members_share_one_read(tmp_path):
    data = build([(f"i/{k}.mp3", bytes([k]) * 100) for k in range(20)], tarfile.USTAR_FORMAT)
    index, reader = walk_bytes(data, window=1 << 16)
    assert index.status == "ok" and len(index.entries) == 20
    assert len(reader.calls) == 1  # the whole 21 kB tar fits in one window


def test_truncated_in_member_data_and_in_a_header(sample_root):
    data = (sample_root / SAMPLE_TARS[0]).read_bytes()
    whole, _ = walk_bytes(data)
    third = whole.entries[2]
    cut_data = data[:third.offset + third.size // 2]
    index, _ = walk_bytes(cut_data)
    assert index.status == "truncated" and third.name in index.reason
    assert index_view(index) == tarfile_view(cut_data)  # tarfile too lists the cut member
    cut_header = data[:whole.entries[3].offset - 512 + 200]  # 200 bytes of the 4th header
    index, _ = walk_bytes(cut_header)
    assert index.status == "truncated"
    assert index_view(index) == tarfile_view(cut_header) == index_view(whole)[:3]


def test_a_header_that_does_not_parse(sample_root):
    data = bytearray((sample_root / SAMPLE_TARS[1]).read_bytes())
    whole, _ = walk_bytes(bytes(data))
    at = whole.entries[5].offset - 512
    data[at:at + 512] = b"\x7fgarbage" * 64
    index, _ = walk_bytes(bytes(data))
    assert index.status == "bad_header" and str(at) in index.reason
    assert index_view(index) == tarfile_view(bytes(data)) == index_view(whole)[:5]


def test_not_a_tar_and_an_empty_tar():
    index, _ = walk_bytes(b"\x00garbage" * 100)
    assert index.status == "unreadable" and index.entries == []
    empty = build([], tarfile.PAX_FORMAT)
    index, _ = walk_bytes(empty)
    assert index.status == "ok" and index.entries == []


def test_parquet_round_trip_and_identity(tmp_path, sample_root):
    data = (sample_root / SAMPLE_TARS[0]).read_bytes()
    index, _ = walk_bytes(data)
    index.source = {"size": len(data), "sha256": "ab" * 32}
    path = member_index.write(index, tmp_path)
    assert path == tmp_path / "000007.parquet"
    back = member_index.read(tmp_path, 7)
    assert back is not None
    assert (back.entries, back.status, back.source, back.tar_size, back.requests) == (
        index.entries, "ok", index.source, len(data), index.requests)
    import pyarrow.parquet as pq
    table = pq.read_table(path)
    assert table.column_names == ["tar", "name", "key", "offset", "size", "skip", "header_offset"]
    assert set(table.column("tar").to_pylist()) == {7}
    assert member_index.read(tmp_path, 8) is None
    (tmp_path / "000009.parquet").write_bytes(b"not parquet")
    assert member_index.read(tmp_path, 9) is None


def test_for_tar_reuses_a_stored_index_only_for_the_same_tar(tmp_path, sample_root):
    from ups.config import DatasetConfig
    from ups.dataset import open_dataset

    cfg = DatasetConfig(source="local", local_root=str(tmp_path / "m"), repo_id="a/b", revision="main",
                        tar_cache_dir=str(tmp_path / "c"), cache_budget_gb=1.0, download_workers=1,
                        max_retries=0, retry_backoff_s=0.0, timeout_s=1.0)
    tar = tmp_path / "m" / "audio" / "000001.tar"
    tar.parent.mkdir(parents=True)
    tar.write_bytes((sample_root / SAMPLE_TARS[0]).read_bytes())
    ds = open_dataset(cfg)
    index, walked = member_index.for_tar(ds, 1, tmp_path / "idx", save=True)
    assert walked and index.ok and member_index.path_for(tmp_path / "idx", 1).is_file()
    again, walked = member_index.for_tar(ds, 1, tmp_path / "idx", save=True)
    assert not walked and again.entries == index.entries
    tar.write_bytes(tar.read_bytes()[:-1024])  # the tar changed: the stored index is not used
    third, walked = member_index.for_tar(ds, 1, tmp_path / "idx")
    assert walked and third.source["size"] == tar.stat().st_size


def test_index_file_is_written_atomically(tmp_path, sample_root):
    data = (sample_root / SAMPLE_TARS[0]).read_bytes()
    index, _ = walk_bytes(data)
    member_index.write(index, tmp_path)
    assert sorted(p.name for p in Path(tmp_path).iterdir()) == ["000007.parquet"]


# --- a walk stops after its last wanted member and a larger selection continues it -------------

def _numbered(n: int, fmt: int = tarfile.PAX_FORMAT, **kw) -> bytes:
    return build([(f"item{k:02d}/file {k}.mp3", bytes([k]) * (3000 + 700 * k)) for k in range(n)], fmt, **kw)


def test_a_walk_stops_after_its_last_wanted_member_and_records_where():
    data = _numbered(20)
    full, full_reader = walk_bytes(data)
    wanted = {full.entries[3].key, full.entries[7].key}
    part, reader = walk_bytes(data, wanted=wanted)
    assert part.status == "ok" and not part.complete
    assert index_view(part) == index_view(full)[:8]  # through the last wanted member, no further
    last = full.entries[7]
    assert part.next_offset == last.offset + -(-last.size // 512) * 512  # the 9th member's header
    assert part.members_seen == 8 and full.members_seen == 20 and full.complete
    assert len(reader.calls) == 8 < len(full_reader.calls)
    assert part.covers(wanted) and not part.covers({full.entries[12].key})
    assert full.covers({full.entries[12].key, "not/in/the tar"})  # a complete walk covers any key


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT])
def test_a_larger_selection_continues_the_walk_where_it_stopped(fmt, tmp_path):
    members = [(f"i/{k}.mp3", bytes([k]) * 2500) for k in range(12)]
    members.insert(5, (LONG, b"z" * 9000))  # a long name (GNU 'L' or pax record) after the stop
    glob = {"pax_headers": {"comment": "global"}} if fmt == tarfile.PAX_FORMAT else {}
    data = build(members, fmt, **glob)
    full, _ = walk_bytes(data)
    first, _ = walk_bytes(data, wanted={"i/2"})
    assert first.members_seen == 3
    more = {"i/2", normalize_key(LONG), "i/9"}
    reader = Counting(data)
    second = member_index.walk(7, reader, len(data), wanted=more, resume=first)
    assert index_view(second) == index_view(full)[:11] and second.members_seen == 11
    assert second.pax_globals == full.pax_globals
    # only the headers after the stop are read again: none of the first three
    assert min(off for off, _ in reader.calls) == first.next_offset - 1
    assert second.requests == first.requests + len(reader.calls)
    direct, _ = walk_bytes(data, wanted=more)  # one walk to the same stop: the same stored bytes
    a, b = (member_index.write(x, tmp_path / name) for x, name in ((direct, "a"), (second, "b")))
    assert a.read_bytes() == b.read_bytes()
    rest = member_index.walk(7, Counting(data), len(data), resume=second)  # no selection: to the end
    assert index_view(rest) == index_view(full) and rest.complete and rest.status == "ok"


def test_a_wanted_key_that_is_no_usable_member_walks_the_whole_tar():
    data = build([("a/x.mp3", b"1" * 600), ("a/link.mp3", ("sym", "x.mp3")), ("a/notes.txt", b"t"),
                  ("a/y.mp3", b"2" * 700)], tarfile.PAX_FORMAT)
    index, _ = walk_bytes(data, wanted={"a/link", "a/notes.txt"})  # a link, not audio
    assert index.complete and len(index.entries) == 4


def test_a_partial_index_round_trips_and_for_tar_continues_it(tmp_path):
    from ups.config import DatasetConfig
    from ups.dataset import open_dataset

    data = _numbered(15)
    tar = tmp_path / "m" / "audio" / "000007.tar"
    tar.parent.mkdir(parents=True)
    tar.write_bytes(data)
    cfg = DatasetConfig(source="local", local_root=str(tmp_path / "m"), repo_id="a/b", revision="main",
                        tar_cache_dir=str(tmp_path / "c"), cache_budget_gb=1.0, download_workers=1,
                        max_retries=0, retry_backoff_s=0.0, timeout_s=1.0)
    ds, idx = open_dataset(cfg), tmp_path / "idx"
    full, _ = walk_bytes(data)
    keys = [e.key for e in full.entries]
    first, walked = member_index.for_tar(ds, 7, idx, wanted={keys[2]}, save=True)
    assert walked and first.members_seen == 3
    back = member_index.read(idx, 7)
    assert (back.next_offset, back.members_seen, back.pax_globals, back.entries) == (
        first.next_offset, 3, first.pax_globals, first.entries)
    same, walked = member_index.for_tar(ds, 7, idx, wanted={keys[1]}, save=True)
    assert not walked and same.members_seen == 3  # covered: nothing read
    grown, walked = member_index.for_tar(ds, 7, idx, wanted={keys[10]}, save=True)
    assert walked and index_view(grown) == index_view(full)[:11]
    assert grown.requests == first.requests + 8  # members 3..10, one read each
    assert member_index.read(idx, 7).members_seen == 11


def test_walk_estimate_takes_the_slowest_bound():
    n = member_index.walk_requests(1000)
    assert n == 1001
    # latency-bound: 400 tars of 1,001 reads at 150 ms, 256 at a time
    est = member_index.walk_estimate_s
    assert est(400 * n, n, 0.15, 256, 400, 0.0) == pytest.approx(400 * n * 0.15 / 256)
    # one tar alone: its reads in sequence, however many walks may run
    assert est(n, n, 0.05, 256, 1, 0.0) == pytest.approx(n * 0.05)
    # CPU-bound: 0.35 ms a read beats 50 ms / 256 walks
    assert est(400 * n, n, 0.05, 256, 400, 3.5e-4) == pytest.approx(400 * n * 3.5e-4)
