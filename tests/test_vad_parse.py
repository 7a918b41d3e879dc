"""vad_parse: line checks, number and key decoding, repair rules, against a per-line reference.

`reference` below restates the module's rules one line and one segment at a time in plain
Python (orjson for the JSON, no numpy); `parse_block` + `repair_segments` must give the same rows
and counters on every fixture, on the fault suite's fuzzed lines and on hypothesis-built lines
that are valid JSON with odd values.
"""

from __future__ import annotations

import json
import math
from collections import Counter

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import SAMPLE
from tests.jsonl_lines import bad_lines, vad_line
from tests.stages.meta_fixture import write_meta
from ups.key_batch import normalize_keys
from ups.keys import normalize_key
from ups.vad_parse import parse_block, repair_segments

SR = 16000
CASES = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))


def line(key: str, tar: str = "000001", dur: float = 30.0, ts=((0, 16000),)) -> bytes:
    body = {"tar_number": tar, "duration": dur,
            "timestamps": [{"start": s, "end": e} for s, e in ts]}
    return (json.dumps({key: body}) + "\n").encode()


def reference(lines: list[bytes]) -> tuple[list[tuple], Counter]:
    """(key, tar, duration, [(start_s, end_s)], speech_s) per kept line and the counters, line by line."""
    counts: Counter = Counter()
    rows = []

    def number(x) -> bool:
        return type(x) in (int, float) and math.isfinite(x)

    def tar_number(x) -> int | None:
        try:
            n = x if type(x) is int else int(x) if type(x) is str and x.strip().isdigit() else -1
        except ValueError:  # a digit that int() does not read ("\u00b2")
            n = -1
        return n if 0 <= n < 2**31 else None

    for raw in lines:
        if not raw.strip(b" \t\r\n"):
            continue
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            counts["malformed_json"] += 1
            continue
        if not (isinstance(obj, dict) and len(obj) == 1 and isinstance(next(iter(obj.values())), dict)):
            counts["bad_schema"] += 1
            continue
        ((key, body),) = obj.items()
        tar, dur, ts = body.get("tar_number"), body.get("duration"), body.get("timestamps", [])
        reason = ("bad_key" if not key.strip() else
                  "bad_tar_number" if tar_number(tar) is None else
                  "bad_duration" if not (number(dur) and dur > 0) else
                  "bad_schema" if not isinstance(ts, list | None) else None)
        if reason:
            counts[reason] += 1
            continue
        dur = float(dur)
        segs = []
        for g in ts or []:
            if not (isinstance(g, dict) and number(g.get("start")) and number(g.get("end"))):
                counts["segment_malformed_dropped"] += 1
                continue
            s, e = float(g["start"]) / SR, float(g["end"]) / SR
            if s < 0 or e < 0:
                counts["segment_negative_clipped"] += 1
                s, e = max(s, 0.0), max(e, 0.0)
            if s >= dur:
                counts["segment_past_end_dropped"] += 1
                continue
            if e > dur:
                counts["segment_past_end_clipped"] += 1
                e = dur
            if e <= s:
                counts["segment_empty_dropped"] += 1
                continue
            segs.append((s, e))
        if sorted(segs, key=lambda x: x[0]) != segs:
            counts["files_unsorted_segments"] += 1
        merged: list[list[float]] = []
        for s, e in sorted(segs):
            if merged and s <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], e)
                counts["segment_overlap_merged"] += 1
            else:
                merged.append([s, e])
        rows.append((key, tar_number(tar), dur, [tuple(m) for m in merged], sum(e - s for s, e in merged)))
    return rows, counts


def parsed(lines: list[bytes], block_lines: int = 1000) -> tuple[list[tuple], Counter]:
    """The module's rows and counters for `lines`, parsed in blocks of `block_lines` lines."""
    counts: Counter = Counter()
    rows = []
    for i in range(0, len(lines), block_lines):
        pb = parse_block(b"\n".join(lines[i:i + block_lines]) + b"\n", counts, {})
        seg = repair_segments(pb.seg_count, pb.seg_start, pb.seg_end, pb.duration_s, SR, counts)
        bounds = np.cumsum(seg.count)[:-1]
        if not len(pb.keys):
            continue
        for k, t, d, s, e, sp in zip(pb.keys.to_pylist(), pb.tar.tolist(), pb.duration_s.tolist(),
                                     np.split(seg.start_s, bounds), np.split(seg.end_s, bounds),
                                     seg.speech_s.tolist(), strict=True):
            rows.append((k, t, d, list(zip(s.tolist(), e.tolist(), strict=True)), sp))
    return rows, counts


def assert_as_reference(lines: list[bytes], block_lines: int = 1000) -> tuple[list[tuple], Counter]:
    rows, counts = parsed(lines, block_lines)
    ref_rows, ref_counts = reference(lines)
    assert counts == ref_counts
    assert rows == ref_rows
    return rows, counts


LINES = [  # edge cases of each check, tests/stages/test_index_vad.py's lines, every number form
    b'{"i/x": {"tar_number": "000001", "duration": 3.0, "timestamps": [', b"not json",
    b'{"i/y": {"tar_number": "abc", "duration": 3.0, "timestamps": []}}',
    b'{"i/z": {"tar_number": "000001", "duration": -1, "timestamps": []}}', b'{"i/w": [1, 2]}',
    b'{"a": {}, "b": {}}', b"", b"   \t", b"\x0b", b"[]", b"1", b'"x"', b"{}", b'{"a": 1}',
    b'{"i/v": {"tar_number": "000001", "duration": 5, "timestamps": [{"start": 1.5, "end": 9}]}}',
    b'{"d/z": {"tar_number": 1}}', b'{"t/1": {"tar_number": " 1 ", "duration": 5.0}}',
    b'{"t/2": {"tar_number": "3000000000", "duration": 5}}', b'{"t/3": {"tar_number": 12, "duration": 5}}',
    b'{"t/4": {"tar_number": null, "duration": 5}}', b'{"t/5": {"tar_number": "", "duration": 5}}',
    b'{"t/6": {"tar_number": "-1", "duration": 5}}', b'{"t/7": {"tar_number": -1, "duration": 5}}',
    b'{"t/8": {"tar_number": 1.0, "duration": 5}}', b'{"t/9": {"tar_number": true, "duration": 5}}',
    b'{"t/a": {"duration": 5}}', b'{"t/b": {"tar_number": 2147483647, "duration": 5}}',
    b'{"t/c": {"tar_number": "2147483648", "duration": 5}}',
    b'{"u/1": {"tar_number": "1", "duration": "5.0"}}',
    b'{"u/2": {"tar_number": "1", "duration": 1e999}}', b'{"u/3": {"tar_number": "1", "duration": true}}',
    b'{"u/4": {"tar_number": "1", "duration": 1e-400}}', b'{"u/5": {"tar_number": "1", "duration": 0}}',
    b'{"u/6": {"tar_number": "1", "duration": 5, "duration": -1}}',
    b'{"u/7": {"tar_number": "1", "duration": -1, "duration": 5}}',
    b'{"v/1": {"tar_number": "1", "duration": 5, "timestamps": [{"start": true, "end": 5}]}}',
    b'{"v/2": {"tar_number": "1", "duration": 5, "timestamps": [{"start": 1, "end": 1e999}]}}',
    b'{"v/3": {"tar_number": "1", "duration": 5, "timestamps": [{"start": 1, "end": 99999999999999999999}]}}',
    b'{"v/4": {"tar_number": "1", "duration": 5, "timestamps": [{"start": 1, "end": 18446744073709551615}]}}',
    b'{"v/5": {"tar_number": "1", "duration": 5, "timestamps": [{"start": -9223372036854775809, "end": 2}]}}',
    b'{"v/6": {"tar_number": "1", "duration": 5, "timestamps": [1, {"start": 1, "end": 2}, "x", null]}}',
    b'{"v/7": {"tar_number": "1", "duration": 5, "timestamps": [{"start": 1}, {"end": 3}]}}',
    b'{"v/8": {"tar_number": "1", "duration": 5, "timestamps": {}}}',
    b'{"v/9": {"tar_number": "1", "duration": 5, "timestamps": null}}',
    b'{"v/a": {"tar_number": "1", "duration": 1e12, "timestamps": [{"start": 0, "end": 9007199254740993}]}}',
    b'{"v/b": {"tar_number": "1", "duration": 5, "timestamps": [{"start": 0, "end": 1e3}, '
    b'{"start": 1, "end": 2}]}}',
    b'{"v/c": {"tar_number": "1", "duration": 5, "timestamps": [{"start": 1, "end": 2, "p": 0.9}]}}',
    b'{"w/1": {"tar_number": "1", "duration": 5, "timestamps": []}, '
    b'"w/1": {"tar_number": "2", "duration": 5}}',
    b'{"\\ud800": {"tar_number": "1", "duration": 5}}', b'{"": {"tar_number": "1", "duration": 5}}',
    b'{"\xff": {"tar_number": "1", "duration": 5}}', b'{" \\u3000": {"tar_number": "1", "duration": 5}}',
    b'{"w/2": {"tar_number": "1", "duration": 5, "timestamps": [], "x": 1}}',
    b'  {"w/3": {"tar_number": "1", "duration": 5, "timestamps": []}}  ',
    b'{"w/4": {"tar_number": "1", "duration": 5, "timestamps": []}}\r',
    b'{"w/5" : { "timestamps" : [ {"end": 32000, "start": 16000} ], "duration":5 ,"tar_number":"2"} }',
    b'{"r/1": {"tar_number": "1", "duration": 10.0, "timestamps": [{"start": 0, "end": 16000}]}}',
    b'{"r/1": {"tar_number": "1", "duration": 10.0, "timestamps": [{"start": 0, "end": 32000}]}}',
    b'{"r/2": {"tar_number": "2", "duration": 5.0, "timestamps": [{"start": 16000, "end": 48000}, '
    b'{"start": 0, "end": 20000}, {"start": -50, "end": 10}, {"start": 200000, "end": 300000}, '
    b'{"start": 7000, "end": 7000}, {"start": 9000, "end": 8000}, {"start": 0, "end": 5}]}}',
] + [f'{{"n/{i}": {{"tar_number": "3", "duration": 12.5, "timestamps": [{{"start": {n}, "end": 99999999}}, '
     f'{{"start": 5, "end": {n}}}]}}}}'.encode()
     for i, n in enumerate(["0", "7", "12345678", "123456789", "9999999999999999", "123456789012345", "012",
                            "00", "1.0", "-5", "1e3", " 42 ", "1E2", "5.000000000000000001"])]


def test_fixtures_parse_as_the_reference(tmp_path):
    rows, counts = assert_as_reference(LINES, block_lines=7)
    dropped = sum(counts[r] for r in ("malformed_json", "bad_schema", "bad_key", "bad_tar_number",
                                      "bad_duration"))
    assert len(rows) + dropped == sum(1 for x in LINES if x.strip(b" \t\r\n"))
    got = {r[0]: r[1:] for r in rows}
    assert got["t/b"][0] == 2**31 - 1 and "t/c" not in got  # tar numbers below 2**31
    assert got["v/a"][2] == [(0.0, float(9007199254740993) / SR)]  # integers beyond 2**53 as float64
    assert got["r/2"][2] == [(0.0, 3.0)] and got["w/5"][:2] == (2, 5.0)
    assert_as_reference((SAMPLE / "vad_results.jsonl").read_bytes().split(b"\n"))
    vad, _ = write_meta(tmp_path)
    assert len(assert_as_reference(vad.read_bytes().split(b"\n"), block_lines=64)[0]) == 400


def test_reads_keys_numbers_and_escapes():
    block = line("a/x.v1.final", ts=((16000, 32000), (48000, 64000))) + line("b/gravaci\u00f3n", "000002")
    c: Counter = Counter()
    pb = parse_block(block, c, {})
    assert pb.n_lines == 2 and not c
    assert pb.keys.to_pylist() == ["a/x.v1.final", "b/gravaci\u00f3n"]
    assert pb.tar.tolist() == [1, 2]
    assert pb.seg_count.tolist() == [2, 1]
    assert pb.seg_start.tolist() == [16000, 48000, 0] and pb.seg_end.tolist() == [32000, 64000, 16000]


def test_malformed_lines_are_counted_and_valid_lines_kept():
    good = [line(f"i/f{i}") for i in range(100)]
    bad = [b'{"i/x": {"tar_number": "000001", "duration": 3.0, "timestamps": [\n',
           b'not json\n',
           b'{"i/y": {"tar_number": "abc", "duration": 3.0, "timestamps": []}}\n',
           b'{"i/z": {"tar_number": "000001", "duration": -1, "timestamps": []}}\n',
           b'{"i/w": [1, 2]}\n', b'{"a": {}, "b": {}}\n', b'\n',
           b'{"i/v": {"tar_number": "000001", "duration": 5, "timestamps": [{"start": 1.5, "end": 9}]}}\n']
    block = b"".join(good[:50] + bad + good[50:])
    c: Counter = Counter()
    ex: dict[str, list[str]] = {}
    pb = parse_block(block, c, ex)
    assert c == {"malformed_json": 2, "bad_tar_number": 1, "bad_duration": 1, "bad_schema": 2}
    assert ex["malformed_json"] == ['{"i/x": {"tar_number": "000001", "duration": 3.0, "timestamps": [',
                                    "not json"]
    assert len(pb.keys) == 101  # 100 good + i/v (float timestamps are accepted)
    assert "i/v" in pb.keys.to_pylist() and pb.n_lines == len(good) + len(bad) - 1


def test_field_order_spacing_and_extra_fields_do_not_matter():
    rng = np.random.default_rng(0)
    lines = [line(f"it/f{i}", f"{i % 7:06d}", float(rng.integers(10, 100)),
                  ts=[(int(a), int(a) + int(b)) for a, b in rng.integers(0, 10**6, (5, 2))])
             for i in range(50)]
    other = [json.dumps({k: {"timestamps": v["timestamps"], "duration": v["duration"],
                             "tar_number": v["tar_number"], "extra": 1}}, separators=(",", ":")).encode()
             + b"\n"
             for k, v in (next(iter(json.loads(x).items())) for x in lines)]
    a, b = parse_block(b"".join(lines), Counter(), {}), parse_block(b"".join(other), Counter(), {})
    assert a.keys.equals(b.keys) and a.tar.tolist() == b.tar.tolist()
    for name in ("duration_s", "seg_count", "seg_start", "seg_end"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


def test_repair_rules():
    c: Counter = Counter()
    # file 0: past end, overlap, unsorted; file 1: empty, negative; file 2: no segments
    count = np.array([4, 2, 0])
    sr = 10
    start = np.array([50, 0, 20, 300, 40, -5]) * 1.0
    end = np.array([150, 30, 60, 400, 40, 10]) * 1.0
    seg = repair_segments(count, start, end, np.array([10.0, 5.0, 3.0]), sr, c)
    assert seg.count.tolist() == [1, 1, 0]
    assert seg.start_s.tolist() == [0.0, 0.0] and seg.end_s.tolist() == [10.0, 1.0]
    assert seg.speech_s.tolist() == [10.0, 1.0, 0.0]
    assert c == {"segment_past_end_clipped": 1, "segment_past_end_dropped": 1, "segment_empty_dropped": 1,
                 "segment_negative_clipped": 1, "segment_overlap_merged": 2, "files_unsorted_segments": 1}


def test_touching_segments_merge_and_gaps_stay():
    c: Counter = Counter()
    seg = repair_segments(np.array([4, 2]), np.array([0.0, 10, 30, 35, 0, 10]),
                          np.array([10.0, 20, 40, 38, 5, 20]), np.array([5.0, 5.0]), 10, c)
    assert seg.count.tolist() == [2, 2]
    assert list(zip(seg.start_s, seg.end_s, strict=True)) == [(0, 2), (3, 4), (0, 0.5), (1, 2)]
    assert c == {"segment_overlap_merged": 2}  # 0-1 touches 1-2; 3.5-3.8 lies inside 3-4


@pytest.mark.parametrize("key", ["a/b", "/data/a/b.mp3", "a/b.MP3", " a/b ", "a/100%20b", "a/100% live",
                                 "a/caf\u0065\u0301", "a/\u65e5\u672c", "a/x.y.z", "a/b\t", "/a"])
def test_batch_normalisation_equals_normalize_key(key):
    assert normalize_keys([key, "x/y"]) == [normalize_key(key), "x/y"]


def test_odd_keys():
    # whitespace-only keys (ASCII, escaped control separators, Unicode) are bad_key; escaped,
    # non-ASCII and raw UTF-8 keys decode to the same string
    keys = ["ok/a", " ", "\u3000", "\x1c", "\t \u00a0", "caf\u00e9/\u00f1", "\u65e5/x", 'q/"x"', "b\\s/y",
            " pad/z "]
    body = {"tar_number": "000001", "duration": 5.0, "timestamps": [{"start": 0, "end": 16000}]}
    block = b"".join(json.dumps({k: body}, ensure_ascii=ea).encode() + b"\n"
                     for k in keys for ea in (True, False))
    c: Counter = Counter()
    pb = parse_block(block, c, {})
    assert c == {"bad_key": 8}
    assert pb.keys.to_pylist() == [k for k in keys if k.strip() for _ in range(2)]


@pytest.mark.parametrize("tar", ["\\t1", "\\u0663", "\\uff11", "1000000000", "0000000001"])
def test_tar_strings_read_as_index_lang_reads_them(tar):
    # the former parser dropped these on one of its paths and kept them on another
    raw = f'{{"t/x": {{"tar_number": "{tar}", "duration": 5.0, "timestamps": []}}}}\n'.encode()
    c: Counter = Counter()
    pb = parse_block(raw, c, {})
    assert not c and pb.tar.tolist() == [int(orjson.loads(f'"{tar}"').strip())]


def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """`good` five times in six, else `bad` (one_of alone does not weigh its branches)."""
    return st.integers(0, 5).flatmap(lambda i: bad if i == 0 else good)


_NUMBER = st.one_of(st.integers(-10**6, 10**7), st.integers(-2**64, 2**64), st.floats(-1e6, 1e7))
_SAMPLE = st.integers(-1, 12).map(lambda n: n * 8000)  # half-seconds: overlaps, touching, past 5 s
_ODD = st.one_of(st.none(), st.booleans(), st.text(max_size=3), st.just([]), st.just({}))
_TAR = _mostly(st.sampled_from(["000001", "000002", " 12 ", 0, 3]),
               st.sampled_from(["", "abc", "-1", "3000000000", -1, 1.0, True, None, [1]]))
_DURATION = _mostly(st.sampled_from([2.5, 5, 5.0]), st.one_of(st.just(0), _NUMBER, _ODD))
_KEY = _mostly(st.sampled_from(["a/x", "b/y.z", "c/gravaci\u00f3n", "d/100%20live", " e/pad "]),
               st.text(max_size=6))
_SEGMENT = _mostly(st.fixed_dictionaries({"start": _SAMPLE, "end": _SAMPLE}), st.one_of(
    st.dictionaries(st.sampled_from(["start", "end", "p"]), st.one_of(_SAMPLE, _NUMBER, _ODD), max_size=3),
    _ODD))


@st.composite
def _odd_line(draw) -> bytes:
    """Valid JSON in the VAD schema with odd values: any field order, fields missing, junk values."""
    body = {"tar_number": draw(_TAR), "duration": draw(_DURATION),
            "timestamps": draw(_mostly(st.lists(_SEGMENT, max_size=8), _ODD))}
    fields = draw(st.permutations(list(body)))
    body = {k: body[k] for k in fields[:draw(_mostly(st.just(3), st.integers(0, 2)))]}
    sep = draw(st.sampled_from([(", ", ": "), (",", ":"), (" , ", " : ")]))
    return json.dumps({draw(_KEY): body}, ensure_ascii=draw(st.booleans()), separators=sep).encode()


@CASES
@given(st.lists(st.one_of(_odd_line(), st.integers(0, 50).map(vad_line), bad_lines(st.just(vad_line(1)))),
                min_size=1, max_size=80), st.integers(1, 30))
def test_hypothesis_lines_parse_as_the_reference(lines, block_lines):
    assert_as_reference(lines, block_lines)
