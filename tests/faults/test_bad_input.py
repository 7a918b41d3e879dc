"""Hostile input: fuzzed JSONL metadata lines, truncated and garbled tars and MP3s.

The property everywhere: no crash; every bad item is counted (by reason, in the stage's report);
every valid item is still processed, with the same result as in a clean run. The sample corpus's
planted cases (malformed lines, a corrupt MP3, missing VAD entries) are checked in the reference
run; hypothesis adds random lines and random damage.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.harness import SAMPLE
from tests.jsonl_lines import bad_lines, lid_line, vad_line
from ups.atomic import read_json
from ups.config import (
    DatasetConfig,
    FeaturesConfig,
    IndexLangConfig,
    IndexVadConfig,
    PrepareAudioConfig,
    load_section,
)
from ups.shards import iter_shard
from ups.stages import index_lang, index_vad, prepare_audio

FAST = settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
STRESS = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


# --- the sample corpus's planted cases, in the reference run ----------------------------------

def test_sample_corpus_awkward_cases_are_counted(reference, figures):
    root = reference.root
    vad = read_json(root / "data/index/vad/report.json")
    lid = read_json(root / "data/index/lang/report.json")
    audio = read_json(root / "data/audio/report.json")
    assert vad["skipped"]["counts"] == {"malformed_json": 1}        # line 18, half written
    assert lid["skipped"]["counts"] == {"malformed_json": 1}
    counts = audio["skipped"]["counts"]
    assert counts["corrupt_mp3"] == 1                                 # old_tapes/tape_04_side_b
    assert audio["n_chunks_written"] + sum(
        n for r, n in counts.items() if r.startswith("chunk_")) == audio["n_chunks_selected"]
    keys = set(pq.read_table(root / "data/index/vad/files.parquet")["key"].to_pylist())
    assert {"canción/café ñandú", "podcast ep/Ölçü 2", "radio.show.2011/ep.01.part.2",
            "community_radio_a/track01", "lecture_series_b/track01"} <= keys
    figures.bad_input("sample_planted_cases", 3)


# --- fuzzed JSONL lines ------------------------------------------------------------------------

def _fuzz_jsonl(make, bad_lines, order, tmp: Path) -> tuple[Path, set[int], int]:
    lines, valid = [], set()
    bad_iter = iter(bad_lines)
    for i, is_bad in enumerate(order):
        if is_bad:
            lines.append(next(bad_iter))
        else:
            lines.append(make(i))
            valid.add(i)
    path = tmp / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path, valid, len(bad_lines)


def _case(make):
    return st.integers(0, 30).flatmap(lambda n_bad: st.tuples(
        st.lists(bad_lines(st.integers(0, 99).map(make)), min_size=n_bad, max_size=n_bad),
        st.permutations([True] * n_bad + [False] * 40)))


def check_vad(figures, case) -> None:
    bad, order = case
    with tempfile.TemporaryDirectory() as d:
        path, valid, n_bad = _fuzz_jsonl(vad_line, bad, order, Path(d))
        index_vad.run(IndexVadConfig(), vad_jsonl=path, out_dir=Path(d) / "out")
        report = read_json(Path(d) / "out/report.json")
        keys = pq.read_table(Path(d) / "out/files.parquet")["key"].to_pylist()
    figures.bad_input("vad_jsonl_line", n_bad)
    assert sorted(keys) == sorted(f"item{i}/f{i}.x" for i in valid)  # every valid line indexed
    assert sum(report["skipped"]["counts"].values()) == n_bad, report["skipped"]


def check_lid(figures, case) -> None:
    bad, order = case
    with tempfile.TemporaryDirectory() as d:
        path, valid, n_bad = _fuzz_jsonl(lid_line, bad, order, Path(d))
        index_lang.run(IndexLangConfig(), lid_jsonl=path, out_dir=Path(d) / "out")
        report = read_json(Path(d) / "out/report.json")
        keys = pq.read_table(Path(d) / "out/lid.parquet")["key"].to_pylist()
    figures.bad_input("lid_jsonl_line", n_bad)
    assert sorted(keys) == sorted(f"item{i}/f{i}.x" for i in valid)
    assert sum(report["skipped"]["counts"].values()) == n_bad, report["skipped"]


@FAST
@given(_case(vad_line))
def test_fuzzedvad_lines_ci(figures, case):
    check_vad(figures, case)


@FAST
@given(_case(lid_line))
def test_fuzzedlid_lines_ci(figures, case):
    check_lid(figures, case)


@pytest.mark.stress
@STRESS
@given(_case(vad_line))
def test_fuzzedvad_lines(figures, case):
    check_vad(figures, case)


@pytest.mark.stress
@STRESS
@given(_case(lid_line))
def test_fuzzedlid_lines(figures, case):
    check_lid(figures, case)


# --- truncated and garbled tars and MP3s through prepare-audio ---------------------------------

TARS = {1: "audio/000001.tar", 2: "audio/000002.tar", 5001: "audio2/005001.tar"}


def _members(tar: Path) -> dict[str, tuple[int, int, int]]:
    """member key -> (header offset, data offset, data end) in the tar's bytes, in tar order."""
    with tarfile.open(tar) as tf:
        return {m.name[:-4]: (m.offset, m.offset_data, m.offset_data + m.size) for m in tf if m.isfile()}


def _touched(members: dict[str, tuple[int, int, int]], lo: int, hi: int) -> set[str]:
    """Keys a write over bytes [lo, hi) can cost: members whose data it overlaps, and, when it
    hits a header, that member and every later one (a tar is read in sequence: past a bad
    header there is no way to find the next member)."""
    out = set()
    keys = list(members)
    for i, k in enumerate(keys):
        h, a, b = members[k]
        if lo < a and h < hi:  # header touched
            return out | set(keys[i:])
        if lo < b and a < hi:
            out.add(k)
    return out


def _pcm_by_chunk(audio_dir: Path) -> dict[int, tuple[dict, np.ndarray]]:
    return {meta["chunk_id"]: (meta, pcm) for shard in sorted(audio_dir.glob("*/*.tar"))
            for _, pcm, meta in iter_shard(shard)}


def check_damage(reference, figures, cut_frac: float, garble_frac: float, n_garble: int) -> None:
    """Cut tar 000002 at `cut_frac` of its size; overwrite `n_garble` bytes of 005001 at
    `garble_frac`; 000001 stays intact. Run prepare-audio on that mirror."""
    ref = reference.root
    ref_pcm = _pcm_by_chunk(ref / "data/audio")
    with tempfile.TemporaryDirectory() as d:
        mirror = Path(d) / "mirror"
        shutil.copytree(SAMPLE, mirror, ignore=shutil.ignore_patterns("*.md", "*.json"))
        damaged: set[str] = set()  # keys whose bytes were touched
        t2 = mirror / TARS[2]
        data = t2.read_bytes()
        cut = int(len(data) * cut_frac)
        t2.write_bytes(data[:cut])
        damaged |= _touched(_members(SAMPLE / TARS[2]), cut, 1 << 40)
        t5 = mirror / TARS[5001]
        data = bytearray(t5.read_bytes())
        at = int(len(data) * garble_frac)
        data[at:at + n_garble] = bytes((x * 37 + 11) % 256 for x in range(n_garble))
        t5.write_bytes(bytes(data))
        damaged |= _touched(_members(SAMPLE / TARS[5001]), at, at + n_garble)
        params = ref / "params.yaml"
        ds = load_section(DatasetConfig, "dataset", params)
        import dataclasses
        ds = dataclasses.replace(ds, local_root=str(mirror), tar_cache_dir=str(Path(d) / "cache"))
        out = Path(d) / "out"
        prepare_audio.run(load_section(PrepareAudioConfig, "prepare_audio", params),
                          load_section(FeaturesConfig, "features", params).mfcc, ds,
                          chunks=ref / "data/select/chunks.parquet", audio_dir=out / "audio",
                          features_dir=out / "features", report=out / "audio/report.json")
        report = read_json(out / "audio/report.json")
        got = _pcm_by_chunk(out / "audio")
    figures.bad_input("damaged_tar_or_mp3", 2)
    counts = report["skipped"]["counts"]
    chunk_skips = sum(n for r, n in counts.items() if r.startswith("chunk_"))
    assert report["n_chunks_written"] + chunk_skips == report["n_chunks_selected"], counts
    assert report["n_chunks_written"] == len(got)
    for cid, (meta, pcm) in ref_pcm.items():
        tag = f"{meta['tar']}:{meta['key']}"
        intact = not (meta["tar"] in (2, 5001) and meta["key"] in damaged)
        if intact:  # every valid item still processed, bit for bit as in the clean run
            assert cid in got, tag
            np.testing.assert_array_equal(got[cid][1], pcm, err_msg=tag)
    chunks = pq.read_table(ref / "data/select/chunks.parquet", columns=["tar", "key"])
    wanted2 = {k for t, k in zip(chunks["tar"].to_pylist(), chunks["key"].to_pylist(), strict=True) if t == 2}
    if damaged & wanted2:  # a tar is read up to its last wanted member: damage there is counted
        assert counts.get("truncated_tar", 0) + counts.get("unreadable_tar", 0) >= 1, counts


def test_truncated_and_garbled_tars_ci(reference, figures):
    check_damage(reference, figures, 0.5, 0.6, 4096)


@pytest.mark.stress
@settings(max_examples=8, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.integers(1, 65536))
def test_truncated_and_garbled_tars(reference, figures, cut_frac, garble_frac, n_garble):
    check_damage(reference, figures, cut_frac, garble_frac, n_garble)
