"""vad_parse: fast path and orjson fallback agree; repair rules; malformed lines counted."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest

from ups.key_batch import normalize_keys
from ups.keys import normalize_key
from ups.vad_parse_legacy import parse_block, parse_line_slow, repair_segments


def line(key: str, tar: str = "000001", dur: float = 30.0, ts=((0, 16000),)) -> bytes:
    body = {"tar_number": tar, "duration": dur,
            "timestamps": [{"start": s, "end": e} for s, e in ts]}
    return (json.dumps({key: body}) + "\n").encode()


def test_fast_path_reads_keys_numbers_and_escapes():
    block = line("a/x.v1.final", ts=((16000, 32000), (48000, 64000))) + line("b/gravaci\u00f3n", "000002")
    c: Counter = Counter()
    pb = parse_block(block, c, {})
    assert pb.n_fast == 2 and pb.n_lines == 2 and not c
    assert pb.raw_key == ["a/x.v1.final", "b/gravaci\u00f3n"]
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
    pb = parse_block(block, c, {})
    assert c["malformed_json"] == 2 and c["bad_tar_number"] == 1 and c["bad_duration"] == 1
    assert c["bad_schema"] == 2
    assert len(pb.raw_key) == 101  # 100 good + i/v (float timestamps are accepted by the slow path)
    assert "i/v" in pb.raw_key and pb.n_lines == len(good) + len(bad) - 1


def test_fast_and_slow_paths_agree():
    rng = np.random.default_rng(0)
    lines = [line(f"it/f{i}", f"{i % 7:06d}", float(rng.integers(10, 100)),
                  ts=[(int(a), int(a) + int(b)) for a, b in rng.integers(0, 10**6, (5, 2))])
             for i in range(50)]
    fast = parse_block(b"".join(lines), Counter(), {})
    # an extra field forces every line through orjson (Arrow's reader rejects unknown fields)
    slow_lines = [json.dumps({k: {"timestamps": v["timestamps"], "duration": v["duration"],
                                  "tar_number": v["tar_number"], "extra": 1}}).encode() + b"\n"
                  for k, v in (next(iter(json.loads(x).items())) for x in lines)]
    slow = parse_block(b"".join(slow_lines), Counter(), {})
    assert fast.n_fast == 50 and slow.n_fast == 0
    assert fast.raw_key == slow.raw_key
    np.testing.assert_array_equal(fast.seg_start, slow.seg_start)
    np.testing.assert_array_equal(fast.duration_s, slow.duration_s)


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
    assert c["segment_past_end_clipped"] == 1 and c["segment_past_end_dropped"] == 1
    assert c["segment_empty_dropped"] == 1 and c["segment_negative_clipped"] == 1
    assert c["segment_overlap_merged"] == 2 and c["files_unsorted_segments"] == 1


@pytest.mark.parametrize("key", ["a/b", "/data/a/b.mp3", "a/b.MP3", " a/b ", "a/100%20b", "a/100% live",
                                 "a/caf\u0065\u0301", "a/\u65e5\u672c", "a/x.y.z", "a/b\t", "/a"])
def test_batch_normalisation_equals_normalize_key(key):
    assert normalize_keys([key, "x/y"]) == [normalize_key(key), "x/y"]


def test_fast_path_keys_match_the_slow_path_on_odd_keys():
    # whitespace-only keys (ASCII, escaped control separators, Unicode) are bad_key on both
    # paths; escaped, non-ASCII and raw UTF-8 keys decode the same way on both
    keys = ["ok/a", " ", "\u3000", "\x1c", "\t \u00a0", "caf\u00e9/\u00f1", "\u65e5/x", 'q/"x"', "b\\s/y",
            " pad/z "]
    body = {"tar_number": "000001", "duration": 5.0, "timestamps": [{"start": 0, "end": 16000}]}
    fast_block = b"".join(json.dumps({k: body}, ensure_ascii=ea).encode() + b"\n"
                          for k in keys for ea in (True, False))
    slow_block = b"".join(json.dumps({k: {**body, "extra": 1}}, ensure_ascii=ea).encode() + b"\n"
                          for k in keys for ea in (True, False))
    cf, cs = Counter(), Counter()
    fast, slow = parse_block(fast_block, cf, {}), parse_block(slow_block, cs, {})
    assert fast.n_fast > 0 and slow.n_fast == 0
    assert sorted(fast.raw_key) == sorted(slow.raw_key)
    assert cf == cs and cf["bad_key"] == 8
    assert set(fast.raw_key) == {"ok/a", "caf\u00e9/\u00f1", "\u65e5/x", 'q/"x"', "b\\s/y", " pad/z "}


@pytest.mark.parametrize("ts", ["0", "7", "12345678", "123456789", "9999999999999999", "123456789012345",
                                "012", "00", "1.0", "-5", "1e3", " 42 "])
def test_exact_path_numbers_match_orjson(ts):
    # every number form: the RE2 + digit-run path either reads it exactly as orjson does or
    # leaves the line to the other paths (leading zeros are malformed JSON on all of them)
    raw = (f'{{"a/b": {{"tar_number": "000003", "duration": 12.5, "timestamps": '
           f'[{{"start": {ts}, "end": 99999999}}, {{"start": 5, "end": {ts}}}]}}}}\n').encode()
    block = raw + line("c/d", ts=((1, 2),))
    c, cs = Counter(), Counter()
    pb = parse_block(block, c, {})
    ref = [r for r in (parse_line_slow(x.strip(), cs, {}) for x in block.splitlines()) if r]
    assert c == cs
    bounds = np.cumsum(pb.seg_count)[:-1]  # rows come out in path order: compare by key
    got = {k: (s.tolist(), e.tolist()) for k, s, e in zip(
        pb.raw_key, np.split(pb.seg_start, bounds), np.split(pb.seg_end, bounds), strict=True)}
    assert got == {r[0]: (r[3], r[4]) for r in ref}
