"""Parse blocks of `vad_results.jsonl` into columns and repair the speech segments.

One line is `{"<item>/<file>": {"tar_number": "000123", "duration": 183.4,
"timestamps": [{"start": 5120, "end": 81920}, ...]}}` (start/end: samples at 16 kHz).

Every line is decoded by `orjson.loads`, then checked in this order; a line that fails a check
is dropped and counted under its reason (`check_line`):
- `malformed_json`: not JSON;
- `bad_schema`: not a one-key object holding an object, or `timestamps` is not a list
  (missing or null `timestamps` is a file without segments);
- `bad_key`: the key is empty or whitespace;
- `bad_tar_number`: `tar_number` is not what `ups.keys.parse_tar_number` reads (a string of
  digits or a non-negative integer, as in index-lang), or is >= 2**31;
- `bad_duration`: `duration` is missing, not a number, not finite or <= 0.
A segment whose start or end is missing or is not a finite number (a string, a bool, null) is
dropped and counted (`segment_malformed_dropped`); its line is kept.

Repair rules (`repair_segments`), applied per file, in this order, each counted:
- a negative start or end is raised to 0 (`segment_negative_clipped`);
- an end past the file's duration is lowered to it (`segment_past_end_clipped`); a segment
  starting at or after the end is dropped (`segment_past_end_dropped`);
- a segment with end <= start is dropped (`segment_empty_dropped`);
- segments are sorted by start (`files_unsorted_segments`) and overlapping or touching segments are
  merged into one (`segment_overlap_merged`).
Lines are checked one by one in Python; the segment numbers of a whole block are converted,
checked and repaired as numpy arrays, so that Python does little per segment (speed and memory:
bench/results/index_vad.json).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass
from operator import itemgetter
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from ups.keys import parse_tar_number

_BLANK = b" \t\r\n"
_NUMBER = (int, float)  # orjson returns these exact types; a bool is neither
_START, _END = itemgetter("start"), itemgetter("end")


@dataclass
class ParsedBlock:
    """Lines of one block that passed the line-level checks; segments still raw (samples)."""

    keys: pa.Array  # string: the key as decoded from JSON
    tar: np.ndarray  # int32, one per line
    duration_s: np.ndarray  # float64
    seg_count: np.ndarray  # int64, segments per line
    seg_start: np.ndarray  # float64 samples, concatenated
    seg_end: np.ndarray  # float64 samples
    n_lines: int  # non-blank lines seen


def check_line(line: bytes) -> tuple[str, int, float, list[Any], list[Any]] | str:
    """(key, tar, duration, starts, ends) of one line, or the reason it is dropped; starts and ends
    are as decoded (None where a segment lacks one), checked later for a whole block at once."""
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "malformed_json"
    if type(obj) is not dict or len(obj) != 1:
        return "bad_schema"
    ((key, body),) = obj.items()
    if type(body) is not dict:
        return "bad_schema"
    if not key.strip():
        return "bad_key"
    tar_number: Any = body.get("tar_number")
    try:
        tar = parse_tar_number(tar_number)  # ValueError for null, floats, bools, lists ...
    except ValueError:
        return "bad_tar_number"
    if tar >= 2**31:
        return "bad_tar_number"
    dur: Any = body.get("duration")
    if type(dur) not in _NUMBER or not 0 < dur < math.inf:
        return "bad_duration"
    timestamps: Any = body.get("timestamps")
    if timestamps is None:
        timestamps = []
    if type(timestamps) is not list:
        return "bad_schema"
    try:
        return key, tar, float(dur), list(map(_START, timestamps)), list(map(_END, timestamps))
    except (KeyError, TypeError):  # a segment that is not an object or lacks start/end
        return (key, tar, float(dur), [g.get("start") if type(g) is dict else None for g in timestamps],
                [g.get("end") if type(g) is dict else None for g in timestamps])


def _floats(values: list[Any]) -> np.ndarray:
    """float64 array of `values`; NaN where a value is not a number (null, a bool, a string)."""
    if not set(map(type, values)) <= set(_NUMBER):
        values = [v if type(v) in _NUMBER else math.nan for v in values]
    return np.fromiter(values, dtype=np.float64, count=len(values))


def parse_block(block: bytes | memoryview, counts: Counter[str],
                examples: dict[str, list[str]]) -> ParsedBlock:
    """Parse the lines of `block`; count dropped lines and segments by reason in `counts`."""
    keys: list[str] = []
    tars: list[int] = []
    durations: list[float] = []
    n_segments: list[int] = []
    starts: list[Any] = []
    ends: list[Any] = []
    n_lines = 0
    for line in bytes(block).split(b"\n"):
        line = line.strip(_BLANK)
        if not line:
            continue
        n_lines += 1
        rec = check_line(line)
        if isinstance(rec, str):
            counts[rec] += 1
            ex = examples.setdefault(rec, [])
            if len(ex) < 5:
                ex.append(line.strip()[:120].decode("utf-8", "replace"))
            continue
        keys.append(rec[0])
        tars.append(rec[1])
        durations.append(rec[2])
        n_segments.append(len(rec[3]))
        starts.extend(rec[3])
        ends.extend(rec[4])
    start, end = _floats(starts), _floats(ends)
    seg_count = np.array(n_segments, dtype=np.int64)
    ok = np.isfinite(start) & np.isfinite(end)
    if not ok.all():
        counts["segment_malformed_dropped"] += int((~ok).sum())
        owner = np.repeat(np.arange(len(seg_count)), seg_count)
        seg_count = np.bincount(owner[ok], minlength=len(seg_count)).astype(np.int64)
        start, end = start[ok], end[ok]
    return ParsedBlock(keys=pa.array(keys, pa.string()), tar=np.array(tars, dtype=np.int32),
                       duration_s=np.array(durations, dtype=np.float64), seg_count=seg_count,
                       seg_start=start, seg_end=end, n_lines=n_lines)


@dataclass
class Segments:
    """Repaired segments in seconds: per-file counts plus concatenated starts/ends."""

    count: np.ndarray  # int64 per file
    start_s: np.ndarray  # float64
    end_s: np.ndarray  # float64
    speech_s: np.ndarray  # float64 per file


def _add(counts: Counter[str], reason: str, mask: np.ndarray) -> None:
    if n := int(mask.sum()):
        counts[reason] += n


def repair_segments(count: np.ndarray, start: np.ndarray, end: np.ndarray, duration_s: np.ndarray,
                    sample_rate: int, counts: Counter[str]) -> Segments:
    """Apply the module's repair rules (vectorised); `start`/`end` in samples, grouped by file."""
    n = len(count)
    owner = np.repeat(np.arange(n, dtype=np.int64), count)
    s, e = start / sample_rate, end / sample_rate
    _add(counts, "segment_negative_clipped", (s < 0) | (e < 0))
    s, e = np.where(s < 0, 0.0, s), np.where(e < 0, 0.0, e)
    dur = duration_s[owner]
    beyond = s >= dur
    past = (e > dur) & ~beyond
    e = np.where(past, dur, e)
    empty = (e <= s) & ~beyond
    _add(counts, "segment_past_end_clipped", past)
    _add(counts, "segment_past_end_dropped", beyond)
    _add(counts, "segment_empty_dropped", empty)
    keep = ~(beyond | empty)
    s, e, owner = s[keep], e[keep], owner[keep]
    unsorted = (owner[1:] == owner[:-1]) & (s[1:] < s[:-1])
    if unsorted.any():
        counts["files_unsorted_segments"] += len(np.unique(owner[1:][unsorted]))
        order = np.lexsort((e, s, owner))
        s, e, owner = s[order], e[order], owner[order]
    same_file = owner[1:] == owner[:-1]
    touching = same_file & (s[1:] <= e[:-1])
    if touching.any():
        # `reach`: the furthest end so far within the file; a segment starting at or before the
        # reach of the ones before it joins them. Files with no touching segments keep reach = end.
        reach = e.copy()
        for f in np.unique(owner[1:][touching]):
            lo, hi = np.searchsorted(owner, [f, f + 1])
            reach[lo:hi] = np.maximum.accumulate(e[lo:hi])
        first = np.flatnonzero(np.r_[True, ~same_file | (s[1:] > reach[:-1])])
        counts["segment_overlap_merged"] += len(s) - len(first)
        s, e, owner = s[first], np.maximum.reduceat(e, first), owner[first]
    return Segments(count=np.bincount(owner, minlength=n).astype(np.int64), start_s=s, end_s=e,
                    speech_s=np.bincount(owner, weights=e - s, minlength=n))
