from __future__ import annotations

import pytest

from ups.keys import normalize_key, parse_tar_number, tar_path


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        ("/data/item/file.mp3", "item/file"),
        ("item/file.mp3", "item/file"),
        ("item/file", "item/file"),
        ("radio.show.2011/ep.01.part.2.mp3", "radio.show.2011/ep.01.part.2"),
        ("podcast%20ep/%C3%96l%C3%A7%C3%BC%202", "podcast ep/Ölçü 2"),
        ("/data/podcast ep/Ölçü 2.mp3", "podcast ep/Ölçü 2"),
        ("live/100% live", "live/100% live"),  # a literal % is not an escape
        ("x/bad%FFescape", "x/bad%FFescape"),  # not UTF-8 once decoded: kept as is
        ("cafe\u0301/x.MP3", "caf\u00e9/x"),  # NFD -> NFC, extension case-insensitive
    ],
)
def test_normalize_key(raw, key):
    assert normalize_key(raw) == key


def test_vad_lid_member_forms_agree():
    vad = "podcast%20ep/%C3%96l%C3%A7%C3%BC%202"
    lid = "/data/podcast ep/Ölçü 2.mp3"
    member = "podcast ep/Ölçü 2.mp3"
    assert normalize_key(vad) == normalize_key(lid) == normalize_key(member)


@pytest.mark.parametrize(
    ("n", "path"),
    [(0, "audio/000000.tar"), (1, "audio/000001.tar"), (5000, "audio/005000.tar"),
     (5001, "audio2/005001.tar"), ("010234", "audio2/010234.tar")],
)
def test_tar_path(n, path):
    assert tar_path(n) == path


@pytest.mark.parametrize("bad", ["-1", "12a", "", "1.5", -3, True, 1.0])
def test_parse_tar_number_rejects(bad):
    with pytest.raises(ValueError):
        parse_tar_number(bad)
