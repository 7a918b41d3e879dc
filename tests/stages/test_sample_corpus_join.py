"""index-vad, index-lang and select on the bundled corpus (`sample/`), checked against MANIFEST.json.

Every planted edge case of the corpus is checked with the exact numbers of its manifest: the
malformed line of each metadata file, the VAD segment past the file's end, the URL-encoded VAD
key, the two same-basename files of one tar, the non-ASCII key, the VAD entry whose file is not in
any tar, the tar member with no VAD entry, the corrupt MP3, and the nospeech files.
"""

from __future__ import annotations

import io
import json

import pyarrow.parquet as pq
import pytest
import soundfile as sf

from tests.conftest import SAMPLE
from ups.atomic import read_json
from ups.config import IndexLangConfig, IndexVadConfig, SelectConfig
from ups.keys import normalize_key, tar_path
from ups.skips import Skips
from ups.stages import index_lang, index_vad, select
from ups.tar_reader import iter_members

VAD_RATE = 16000


@pytest.fixture(scope="module")
def manifest() -> dict:
    return json.loads((SAMPLE / "MANIFEST.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sample_index")
    index_vad.run(IndexVadConfig(), vad_jsonl=SAMPLE / "vad_results.jsonl", out_dir=d / "vad")
    index_lang.run(IndexLangConfig(), lid_jsonl=SAMPLE / "lang_id_results.jsonl", out_dir=d / "lang")
    return d


@pytest.fixture(scope="module")
def files(index_dir) -> dict[tuple[int, str], dict]:
    rows = pq.read_table(index_dir / "vad" / "files.parquet").to_pylist()
    return {(r["tar"], r["key"]): r for r in rows}


@pytest.fixture(scope="module")
def lid(index_dir) -> dict[tuple[int, str], dict]:
    rows = pq.read_table(index_dir / "lang" / "lid.parquet").to_pylist()
    return {(r["tar"], r["key"]): r for r in rows}


@pytest.fixture(scope="module")
def members(manifest) -> dict[tuple[int, str], bytes]:
    """(tar, normalised key) -> MP3 bytes of every member of the sample tars."""
    out = {}
    skips = Skips("test")
    for tar in manifest["totals"]["tars"]:
        for m in iter_members(SAMPLE / tar_path(int(tar)), skips):
            out[(int(tar), m.key)] = m.data
    assert skips.to_dict()["counts"] == {}
    return out


def _k(entry: dict, field: str = "vad_key") -> tuple[int, str]:
    return int(entry["tar"]), normalize_key(entry[field])


def test_malformed_line_of_each_file_counted(manifest, index_dir, files, lid):
    bad = manifest["edge_cases"]["malformed_jsonl_lines"]
    assert set(bad) == {"vad_results.jsonl", "lang_id_results.jsonl"}
    vrep = read_json(index_dir / "vad" / "report.json")
    lrep = read_json(index_dir / "lang" / "report.json")
    assert vrep["skipped"]["counts"] == {"malformed_json": 1}
    assert lrep["skipped"]["counts"] == {"malformed_json": 1}
    n_vad = sum(f["vad_key"] is not None for f in manifest["files"])
    n_lid = sum(f["lid_filepath"] is not None for f in manifest["files"])
    assert vrep["n_lines"] == n_vad + 1 and len(files) == n_vad  # every valid line kept
    assert len(lid) == n_lid
    assert not any("broken_item" in k for _, k in files) and not any("broken_item" in k for _, k in lid)


def test_segment_past_end_clipped(manifest, index_dir, files):
    case = manifest["edge_cases"]["vad_segment_past_end"]
    row = files[_k(case)]
    assert case["last_end_sample"] > case["duration_samples_16k"]
    # the VAD line's last end lies past the file's duration; it is lowered to that duration
    assert row["duration_s"] == pytest.approx(case["duration_samples_16k"] / VAD_RATE, abs=0.01)
    assert row["duration_s"] * VAD_RATE < case["last_end_sample"]
    assert row["seg_end_s"][-1] == row["duration_s"]
    assert read_json(index_dir / "vad" / "report.json")["repairs"]["segment_past_end_clipped"] == 1
    for r in files.values():  # segments sorted, merged, inside [0, duration]
        s, e = r["seg_start_s"], r["seg_end_s"]
        assert all(0 <= a < b <= r["duration_s"] for a, b in zip(s, e, strict=True))
        assert all(b < a for b, a in zip(e, s[1:], strict=False))


def test_url_encoded_and_non_ascii_keys_join_lid_and_tar(manifest, files, lid, members):
    for name in ("url_encoded_vad_key", "non_ascii_key", "dotted_names"):
        case = manifest["edge_cases"][name]
        key = _k(case)
        assert key == _k(case, "lid_filepath") == _k(case, "member")
        assert key in files and key in lid and key in members, name
        assert files[key]["raw_key"] == case["vad_key"]
    url = manifest["edge_cases"]["url_encoded_vad_key"]
    assert "%" in url["vad_key"] and _k(url)[1] == url["member"][:-len(".mp3")]


def test_same_basename_files_stay_distinct(manifest, files, lid, members):
    cases = manifest["edge_cases"]["same_basename_one_tar"]
    keys = [_k(c) for c in cases]
    assert len(set(keys)) == 2 and keys[0][0] == keys[1][0]
    assert keys[0][1].rsplit("/", 1)[1] == keys[1][1].rsplit("/", 1)[1]
    truth = {_k(f): f for f in manifest["files"] if f["vad_key"]}
    for k in keys:
        assert k in files and k in members
        assert lid[k]["language"] == truth[k]["lid_label"]
        assert files[k]["duration_s"] == pytest.approx(truth[k]["duration_s"], abs=0.05)
    assert lid[keys[0]]["language"] != lid[keys[1]]["language"]


def test_join_coverage_reports_missing_file_and_missing_vad(manifest, index_dir, files, lid, members,
                                                            tmp_path):
    gone = manifest["edge_cases"]["vad_entry_not_in_any_tar"]
    gone_key = (int(gone["tar_number_claimed"]), normalize_key(gone["vad_key"]))
    no_vad = manifest["edge_cases"]["in_tar_missing_from_vad"]
    no_vad_key = _k(no_vad, "member")
    # against the tars: exactly these two are unmatched
    assert set(files) - set(members) == {gone_key}
    assert set(members) - set(files) == {no_vad_key}
    # against LID (the stage's report): the lost recording has no LID row, take_3 no VAD row
    assert gone_key not in lid and no_vad_key in lid
    select.run(SelectConfig(hours=0.2, max_tars=0, hours_table="computed"), index_dir=index_dir,
               out_dir=tmp_path / "sel")
    cov = read_json(tmp_path / "sel" / "report.json")["join_coverage"]
    assert cov == {"vad_files": len(files), "lid_files": len(lid), "joined": len(files) - 1,
                   "vad_without_lid": 1, "lid_without_vad": 1,
                   "vad_with_lid_fraction": (len(files) - 1) / len(files),
                   "vad_keys_matching_lid_key_in_another_tar": 0}


def test_only_the_corrupt_mp3_fails_to_decode(manifest, members):
    corrupt = _k(manifest["edge_cases"]["corrupt_mp3"], "member")
    failed = set()
    for key, data in members.items():
        try:
            sf.read(io.BytesIO(data), dtype="float32")
        except (sf.LibsndfileError, RuntimeError):
            failed.add(key)
    assert failed == {corrupt}
    assert len(members) == manifest["totals"]["files_in_tars"]


def test_select_never_picks_nospeech_or_unknown(manifest, index_dir, tmp_path):
    select.run(SelectConfig(hours=0.25, max_tars=0, hours_table="computed", max_file_fraction=0.5,
                            max_tar_fraction=1.0), index_dir=index_dir, out_dir=tmp_path / "sel")
    chunks = pq.read_table(tmp_path / "sel" / "chunks.parquet").to_pylist()
    rep = read_json(tmp_path / "sel" / "report.json")
    nospeech = {_k(f) for f in manifest["files"] if f["lid_label"] == "nospeech"}
    assert len(nospeech) == 3 and rep["skipped"]["counts"]["nospeech"] == 3
    labels = {f["lid_label"] for f in manifest["files"] if f["kind"] == "speech" and f["lid_label"]}
    assert chunks and {c["language"] for c in chunks} <= labels
    assert not {(c["tar"], c["key"]) for c in chunks} & nospeech
    assert rep["target_reached_within_1pct"]


def test_select_with_the_real_table_gives_numbers_checkable_by_hand(index_dir, tmp_path):
    # a local mirror (the sample) balanced on the shipped table: each share is n^alpha / sum
    # over the languages present, each language's hours after are whole chunks, and the splits
    # add up to the selected hours
    from ups.lang_hours import load_shipped

    select.run(SelectConfig(hours=0.3, max_tars=0, max_file_fraction=0.1, max_tar_fraction=1.0,
                            min_speech_ratio=0.5), index_dir=index_dir, out_dir=tmp_path / "s")
    rep = read_json(tmp_path / "s" / "report.json")
    table = load_shipped()
    langs = rep["languages"]
    assert rep["config"]["hours_table"] == "shipped" and rep["unlisted_languages"] == []
    total = sum(table[x] ** 0.5 for x in langs)
    for x, row in langs.items():
        assert row["table_hours"] == table[x]
        assert row["share"] == pytest.approx(table[x] ** 0.5 / total)
        assert round(row["hours_after"] * 360) == pytest.approx(row["hours_after"] * 360)  # 10 s chunks
        assert row["hours_after"] == pytest.approx(sum(row[f"{s}_hours"] for s in ("train", "valid", "eval")))
        assert row["hours_after"] <= row["available_hours"] + 1e-9
    assert sum(r["hours_after"] for r in langs.values()) == pytest.approx(rep["selected_hours"])
    assert rep["target_reached_within_1pct"]
    # en is the largest language in the table: it gets the largest share, not all of the hours
    assert max(langs, key=lambda x: langs[x]["share"]) == "en"
    assert langs["en"]["hours_after"] < 0.5 * rep["selected_hours"]
