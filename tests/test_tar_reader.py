from __future__ import annotations

from ups.skips import Skips
from ups.tar_reader import iter_members


def test_full_member_names_and_keys(tar_factory):
    tar = tar_factory("t.tar", {
        "radio.show/ep.01.part.2.mp3": b"a",
        "itemA/track01.mp3": b"b",
        "itemB/track01.mp3": b"c",
        "item/readme.txt": b"not audio",
    })
    skips = Skips("test")
    got = {m.name: (m.key, m.data) for m in iter_members(tar, skips)}
    assert got == {
        "radio.show/ep.01.part.2.mp3": ("radio.show/ep.01.part.2", b"a"),
        "itemA/track01.mp3": ("itemA/track01", b"b"),
        "itemB/track01.mp3": ("itemB/track01", b"c"),
    }
    assert skips.total == 0


def test_unsafe_members_refused(tar_factory):
    tar = tar_factory(
        "t.tar",
        {"/abs/x.mp3": b"1", "../up/x.mp3": b"2", "ok/x.mp3": b"3", "a/../../b.mp3": b"4"},
        links={"ok/link.mp3": "/etc/passwd"},
    )
    skips = Skips("test")
    names = [m.name for m in iter_members(tar, skips)]
    assert names == ["ok/x.mp3"]
    assert skips.counts["tar_absolute_path"] == 1
    assert skips.counts["tar_parent_path"] == 2
    assert skips.counts["tar_link_member"] == 1


def test_wanted_filter(tar_factory):
    tar = tar_factory("t.tar", {"a/x.mp3": b"1", "b/y.mp3": b"2"})
    assert [m.key for m in iter_members(tar, Skips("t"), wanted={"b/y"})] == ["b/y"]


def test_truncated_tar_keeps_members_before_damage(tar_factory, tmp_path):
    tar = tar_factory("t.tar", {"a/x.mp3": b"1" * 2000, "b/y.mp3": b"2" * 5000})
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[:4096])  # header+data of a/x, header of b/y, part of its data
    skips = Skips("t")
    got = [m.name for m in iter_members(cut, skips)]
    assert got == ["a/x.mp3"]
    assert skips.counts["truncated_tar"] == 1


def test_garbage_is_unreadable(tmp_path):
    bad = tmp_path / "bad.tar"
    bad.write_bytes(b"\x00garbage" * 10)
    skips = Skips("t")
    assert list(iter_members(bad, skips)) == []
    assert skips.total == 1
