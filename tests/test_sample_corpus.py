"""Check the committed sample corpus (``sample/``) against its ground truth, MANIFEST.json.

These tests guard the corpus that other tests and tutorials rely on: layout like the real
UPS dataset, exact tar member names, hashes, decodability, and every planted edge case.
Only stdlib, numpy and soundfile are needed. Set UPS_SAMPLE_DIR to check another copy
(for example a fresh regeneration).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
import tarfile
import urllib.parse
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = Path(os.environ.get("UPS_SAMPLE_DIR", ROOT / "sample"))
VAD_RATE = 16000


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((SAMPLE / "MANIFEST.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def in_tar(manifest) -> list[dict]:
    return [f for f in manifest["files"] if f["in_tar"]]


def tar_file(tar: str) -> Path:
    return SAMPLE / ("audio" if int(tar) <= 5000 else "audio2") / f"{tar}.tar"


@pytest.fixture(scope="module")
def members(in_tar) -> dict[tuple[str, str], bytes]:
    """(tar number, member name) -> bytes, read from the tars on disk."""
    out = {}
    for tar in sorted({f["tar"] for f in in_tar}):
        with tarfile.open(tar_file(tar)) as tf:
            for info in tf.getmembers():
                out[(tar, info.name)] = tf.extractfile(info).read()
    return out


def split_jsonl(name: str) -> tuple[list[dict], list[tuple[int, str]]]:
    """Parse a jsonl file; return parsed objects and (line number, text) of bad lines."""
    good, bad = [], []
    for n, line in enumerate((SAMPLE / name).read_text(encoding="ascii").splitlines(), 1):
        try:
            good.append(json.loads(line))
        except json.JSONDecodeError:
            bad.append((n, line))
    return good, bad


@pytest.fixture(scope="module")
def vad() -> dict[str, dict]:
    good, _ = split_jsonl("vad_results.jsonl")
    assert all(len(obj) == 1 for obj in good)
    return {k: v for obj in good for k, v in obj.items()}


@pytest.fixture(scope="module")
def lid() -> dict[str, dict]:
    good, _ = split_jsonl("lang_id_results.jsonl")
    return {obj["filepath"]: obj for obj in good}


def test_layout_matches_real_dataset(manifest):
    tars = sorted(SAMPLE.glob("audio*/*.tar"))
    assert len(tars) >= 3
    for p in tars:
        assert re.fullmatch(r"\d{6}\.tar", p.name), p
        assert p.parent.name == ("audio" if int(p.stem) <= 5000 else "audio2"), p
    assert {p.parent.name for p in tars} == {"audio", "audio2"}
    for name in ["vad_results.jsonl", "lang_id_results.jsonl", "MANIFEST.json", "README.md"]:
        assert (SAMPLE / name).is_file(), name
    assert sorted(tar_file(t) for t in manifest["totals"]["tars"]) == tars


def test_output_hashes_match_manifest(manifest):
    on_disk = {p.relative_to(SAMPLE).as_posix() for p in SAMPLE.rglob("*") if p.is_file()}
    assert on_disk - {"MANIFEST.json"} == set(manifest["output_sha256"])
    for rel, digest in manifest["output_sha256"].items():
        assert hashlib.sha256((SAMPLE / rel).read_bytes()).hexdigest() == digest, rel


def test_tar_members_are_exactly_the_manifest(in_tar, members):
    assert set(members) == {(f["tar"], f["member"]) for f in in_tar}
    for f in in_tar:
        data = members[(f["tar"], f["member"])]
        assert hashlib.sha256(data).hexdigest() == f["member_sha256"], f["member"]


def test_tars_are_deterministic_archives(manifest):
    for tar in manifest["totals"]["tars"]:
        with tarfile.open(tar_file(tar)) as tf:
            infos = tf.getmembers()
        names = [i.name for i in infos]
        assert names == sorted(names)
        for i in infos:
            assert i.isreg() and i.name.endswith(".mp3") and i.name.count("/") == 1, i.name
            assert (i.mtime, i.uid, i.gid, i.uname, i.gname) == (0, 0, 0, "", ""), i.name


def test_enough_audio_and_languages(manifest, in_tar):
    total = sum(f["duration_s"] for f in in_tar)
    assert total >= 30 * 60, total
    speech_langs = {f["true_language"] for f in in_tar if f["kind"] == "speech"}
    assert len(speech_langs) >= 10, speech_langs
    assert "nospeech" not in speech_langs
    assert {f["sample_rate"] for f in in_tar} >= {16000, 24000, 44100, 48000}
    assert {f["channels"] for f in in_tar} == {1, 2}
    rates = [f["sample_rate"] for f in in_tar]
    assert rates.count(44100) > len(rates) / 2
    assert all(20 <= f["duration_s"] <= 121 for f in manifest["files"])


def test_every_member_decodes_as_listed_except_the_corrupt_one(manifest, in_tar, members):
    corrupt = manifest["edge_cases"]["corrupt_mp3"]["member"]
    decoded_total = 0.0
    for f in in_tar:
        data = members[(f["tar"], f["member"])]
        if f["member"] == corrupt:
            assert not f["decodable"]
            with pytest.raises(sf.LibsndfileError):
                sf.read(io.BytesIO(data))
            continue
        assert f["decodable"]
        audio, sr = sf.read(io.BytesIO(data), always_2d=True, dtype="float32")
        assert sr == f["sample_rate"], f["member"]
        assert audio.shape[1] == f["channels"], f["member"]
        assert abs(len(audio) / sr - f["duration_s"]) <= 0.1, f["member"]
        assert np.abs(audio).max() > 0.05, f["member"]  # not silence
        decoded_total += len(audio) / sr
    assert decoded_total >= 30 * 60


def test_one_malformed_line_in_the_middle_of_each_jsonl(manifest):
    planted = manifest["edge_cases"]["malformed_jsonl_lines"]
    for name in ["vad_results.jsonl", "lang_id_results.jsonl"]:
        good, bad = split_jsonl(name)
        n_lines = len(good) + len(bad)
        assert bad == [(planted[name]["line_number"], planted[name]["text"])], name
        assert 1 < bad[0][0] < n_lines, name


def test_vad_entries_match_manifest(manifest, vad):
    expected = {f["vad_key"]: f for f in manifest["files"] if f["vad_key"] is not None}
    assert set(vad) == set(expected)
    for key, entry in vad.items():
        f = expected[key]
        assert entry["tar_number"] == f["tar"]
        assert abs(entry["duration"] - f["duration_s"]) <= 0.1, key
        stamps = entry["timestamps"]
        assert all(0 <= s["start"] < s["end"] for s in stamps), key
        assert all(a["end"] <= b["start"] for a, b in zip(stamps, stamps[1:], strict=False)), key
        assert (len(stamps) > 0) == (f["kind"] == "speech"), key
    # lines are not grouped by tar
    good, _ = split_jsonl("vad_results.jsonl")
    tars = [next(iter(o.values()))["tar_number"] for o in good]
    assert tars != sorted(tars)


def test_vad_speech_fraction_is_plausible(manifest, vad):
    for f in manifest["files"]:
        if f["kind"] != "speech" or f["vad_key"] is None:
            continue
        speech = sum(s["end"] - s["start"] for s in vad[f["vad_key"]]["timestamps"]) / VAD_RATE
        assert 0.3 * f["duration_s"] < speech < 0.97 * f["duration_s"], f["member"]
    sparse = [f for f in manifest["files"] if f["kind"] == "speech" and not f["dense"]]
    assert sparse and all(f["min_speech_fraction_10s"] < 0.8 for f in sparse)
    dense = [f for f in manifest["files"] if f["kind"] == "speech" and f["dense"]]
    assert dense and all(f["vad_speech_s"] >= 0.7 * f["duration_s"] for f in dense)


def test_lid_entries_match_manifest(manifest, lid):
    expected = {f["lid_filepath"]: f for f in manifest["files"] if f["lid_filepath"]}
    assert set(lid) == set(expected)
    for path, entry in lid.items():
        f = expected[path]
        assert path == "/data/" + f["member"]
        assert entry["tar_number"] == f["tar"]
        assert entry["prediction"] == f["lid_label"]
    errors = [f for f in expected.values() if f["lid_label"] != f["true_language"]]
    assert 2 <= len(errors) <= 4
    assert errors == [f for f in manifest["files"]
                      if any(e["member"] == f["member"]
                             for e in manifest["edge_cases"]["lid_label_errors"])]


def test_edge_cases(manifest, in_tar, vad, lid):
    e = manifest["edge_cases"]
    by_member = {f["member"]: f for f in manifest["files"]}
    tar_members = {f["member"] for f in in_tar}

    dotted = e["dotted_names"]["member"]
    item, name = dotted.split("/")
    assert item.count(".") >= 1 and name.count(".") >= 3 and dotted in tar_members

    a, b = e["same_basename_one_tar"]
    assert a["tar"] == b["tar"] and a["member"] != b["member"]
    assert a["member"].split("/")[1] == b["member"].split("/")[1]
    assert by_member[a["member"]]["true_language"] != by_member[b["member"]]["true_language"]

    raw_vad = (SAMPLE / "vad_results.jsonl").read_text(encoding="ascii")
    non_ascii = e["non_ascii_key"]
    assert not non_ascii["vad_key"].isascii() and non_ascii["vad_key"] in vad
    assert json.dumps(non_ascii["vad_key"], ensure_ascii=True) in raw_vad
    assert "\\u00f3" in raw_vad

    enc = e["url_encoded_vad_key"]
    assert enc["vad_key"] == urllib.parse.quote(enc["member"][:-4], safe="/")
    assert enc["vad_key"] != enc["member"][:-4] and enc["vad_key"] in vad
    assert enc["member"] in tar_members and enc["lid_filepath"] == "/data/" + enc["member"]
    assert enc["lid_filepath"] in lid

    corrupt = e["corrupt_mp3"]
    assert corrupt["vad_key"] in vad and corrupt["lid_filepath"] in lid

    missing = e["in_tar_missing_from_vad"]
    assert missing["member"] in tar_members and missing["member"][:-4] not in vad
    assert missing["lid_filepath"] in lid

    ghost = e["vad_entry_not_in_any_tar"]["vad_key"]
    assert ghost in vad and ghost + ".mp3" not in tar_members

    past = e["vad_segment_past_end"]
    last_end = vad[past["vad_key"]]["timestamps"][-1]["end"]
    assert last_end == past["last_end_sample"]
    assert last_end > by_member[past["member"]]["duration_s"] * VAD_RATE
    # ... and it is the only entry that runs past its file
    for key, entry in vad.items():
        if key != past["vad_key"]:
            assert entry["timestamps"] == [] or \
                entry["timestamps"][-1]["end"] <= entry["duration"] * VAD_RATE + 160, key

    assert e["empty_vad_timestamps"]
    for ref in e["empty_vad_timestamps"]:
        assert vad[ref["vad_key"]]["timestamps"] == []
        assert by_member[ref["member"]]["kind"] == "nospeech"

    tone = e["nospeech_tone"]
    assert by_member[tone["member"]]["signal"] == "tone"
    assert lid[tone["lid_filepath"]]["prediction"] == "nospeech"


def test_sample_dir_is_small():
    size = sum(p.stat().st_size for p in SAMPLE.rglob("*") if p.is_file())
    assert size <= 15 * 1024 * 1024, size
