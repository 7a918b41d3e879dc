"""The VAD index's tables: a block of lines made rows, the duplicate rule, per-tar totals."""

from __future__ import annotations

from collections import Counter

import pyarrow as pa

from ups.vad_table import FILES_SCHEMA, block_table, sort_and_dedupe, tar_stats


def _rows(*rows: tuple) -> pa.Table:
    """(tar, key, raw_key, duration_s, speech_s, starts) rows; ends one second after each start."""
    cols = list(zip(*rows, strict=True))
    return pa.table({"tar": pa.array(cols[0], pa.int32()), "key": cols[1], "raw_key": cols[2],
                     "duration_s": cols[3], "speech_s": cols[4], "seg_start_s": [list(s) for s in cols[5]],
                     "seg_end_s": [[x + 1 for x in s] for s in cols[5]]}, schema=FILES_SCHEMA)


def test_a_block_of_lines_becomes_rows_with_normalised_keys():
    # the key URL-decoded, its audio extension dropped (ups.keys.normalize_key); the raw key kept
    block = (b'{"a/talk%202.mp3": {"tar_number": "000007", "duration": 4.0, '
             b'"timestamps": [{"start": 0, "end": 16000}]}}\n'
             b'not json\n'
             b'{"b/x": {"tar_number": 7, "duration": 2.0, "timestamps": []}}\n')
    counts: Counter[str] = Counter()
    table, n_lines = block_table(block, 16000, counts, {})
    assert n_lines == 3 and counts["malformed_json"] == 1
    rows = table.to_pylist()
    assert [(r["tar"], r["key"], r["raw_key"]) for r in rows] == [(7, "a/talk 2", "a/talk%202.mp3"),
                                                                  (7, "b/x", "b/x")]
    assert rows[0]["speech_s"] == 1.0 and rows[0]["seg_end_s"] == [1.0] and rows[1]["seg_start_s"] == []


def test_duplicates_keep_most_speech_then_longest_then_smallest_raw_key():
    t = _rows((2, "k", "k%2", 9.0, 1.0, [0.0]),
              (1, "z", "z", 5.0, 1.0, [0.0]),
              (2, "k", "k", 9.0, 1.0, [0.0]),   # ties with the first on speech and duration: smaller raw key
              (2, "k", "k0", 8.0, 1.0, [2.0]),  # shorter
              (1, "a", "a", 5.0, 0.5, [0.0]),
              (1, "a", "a2", 5.0, 2.0, [3.0]))  # most speech
    counts: Counter[str] = Counter()
    out = sort_and_dedupe(t, counts).to_pylist()
    assert [(r["tar"], r["key"], r["raw_key"]) for r in out] == [(1, "a", "a2"), (1, "z", "z"), (2, "k", "k")]
    assert counts["duplicate_key_dropped"] == 3
    unique = _rows((3, "b", "b", 1.0, 0.0, []), (3, "a", "a", 1.0, 0.0, []))
    assert [r["key"] for r in sort_and_dedupe(unique, counts).to_pylist()] == ["a", "b"]
    assert counts["duplicate_key_dropped"] == 3


def test_tar_totals_and_speech_density():
    t = _rows((1, "a", "a", 10.0, 5.0, [0.0]), (1, "b", "b", 30.0, 5.0, [0.0]),
              (4, "c", "c", 2.0, 2.0, [0.0]))
    assert tar_stats(t).to_pylist() == [
        {"tar": 1, "n_files": 2, "duration_s": 40.0, "speech_s": 10.0, "density": 0.25},
        {"tar": 4, "n_files": 1, "duration_s": 2.0, "speech_s": 2.0, "density": 1.0},
    ]
