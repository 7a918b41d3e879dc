"""Parse blocks of `vad_results.jsonl` into columns, fast, and repair the speech segments.

One line is `{"<item>/<file>": {"tar_number": "000123", "duration": 183.4,
"timestamps": [{"start": 5120, "end": 81920}, ...]}}` (start/end: samples at 16 kHz).

Fast path (vectorised, no Python object per segment): a block of whole lines becomes one Arrow
binary array; RE2 (pyarrow compute) proves each line has exactly the expected shape; the prefix
(key, tar, duration) is extracted with a second regex; the segment numbers are read with numpy as
runs of ASCII digits and converted by Arrow's string->int cast. A line the fast path cannot prove
well-formed (other field order, floats or negatives in timestamps, extra fields, broken JSON) goes
to `orjson.loads`, so malformed lines are still found exactly and counted by reason.

Repair rules (`repair_segments`), applied per file, in this order, each counted:
- a segment whose start/end is not a number is dropped (`segment_malformed_dropped`);
- a negative start or end is raised to 0 (`segment_negative_clipped`);
- an end past the file's duration is lowered to it (`segment_past_end_clipped`); a segment
  starting at or after the end is dropped (`segment_past_end_dropped`);
- a segment with end <= start is dropped (`segment_empty_dropped`);
- segments are sorted by start (`files_unsorted_segments`) and overlapping or touching segments are
  merged into one (`segment_overlap_merged`).
A line is dropped (never repaired) when it is not JSON (`malformed_json`), is not a one-key object
holding a mapping (`bad_schema`), has no valid tar number (`bad_tar_number`), or its duration is
missing, not finite or <= 0 (`bad_duration`), or its key is empty (`bad_key`).
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

_WS = r"[ \t\r]*"
_KEY_BODY = r'(?:[^"\\\x00-\x1f]|\\.)*'
_NUM_DUR = r"[0-9]{1,9}(?:\.[0-9]{1,17})?(?:[eE][-+]?[0-9]{1,3})?"
_SEG = rf'\{{{_WS}"start"{_WS}:{_WS}[0-9]{{1,15}}{_WS},{_WS}"end"{_WS}:{_WS}[0-9]{{1,15}}{_WS}\}}'
_HEAD = (rf'{_WS}\{{{_WS}"@KEY@"{_WS}:{_WS}\{{{_WS}"tar_number"{_WS}:{_WS}"@TAR@"{_WS},'
         rf'{_WS}"duration"{_WS}:{_WS}@DUR@{_WS},{_WS}"timestamps"{_WS}:{_WS}\[')


def _head(key: str, tar: str, dur: str) -> str:
    return _HEAD.replace("@KEY@", key).replace("@TAR@", tar).replace("@DUR@", dur)


# Each line in the Arrow array starts with the previous line's "\n" (except the first one).
FULL_LINE = ("^\n?" + _head(_KEY_BODY, "[0-9]{1,9}", _NUM_DUR)
             + rf"{_WS}(?:{_SEG}(?:{_WS},{_WS}{_SEG})*)?{_WS}\]{_WS}\}}{_WS}\}}{_WS}$")
HEAD = ("^(?P<head>\n?" + _head(f"(?P<key>{_KEY_BODY})", "(?P<tar>[0-9]{1,9})",
                                  f"(?P<dur>{_NUM_DUR})") + ")")
_BLANK = b" \t\r\n"


@dataclass
class ParsedBlock:
    """Lines of one block that passed the line-level checks; segments still raw (samples)."""

    tar: np.ndarray  # int32, one per line
    raw_key: list[str]  # JSON-decoded key as stored
    duration_s: np.ndarray  # float64
    seg_count: np.ndarray  # int64, segments per line
    seg_start: np.ndarray  # float64 samples, concatenated
    seg_end: np.ndarray  # float64 samples
    n_lines: int  # non-blank lines seen
    n_fast: int  # lines that took the vectorised path


def _decode_keys(keys: pa.Array, counts: Counter[str]) -> list[str | None]:
    """JSON string bodies -> str; None where the body is not valid JSON/UTF-8."""
    raw = keys.to_pylist()  # bytes
    out: list[str | None] = []
    for b in raw:
        if b"\\" not in b:
            try:
                out.append(b.decode("utf-8"))
                continue
            except UnicodeDecodeError:
                out.append(None)
                continue
        try:
            out.append(orjson.loads(b'"' + b + b'"'))
        except orjson.JSONDecodeError:
            out.append(None)
    return out


def _digit_runs(buf: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Start offset and integer value of every run of ASCII digits in `buf` (uint8)."""
    pad = np.zeros(len(buf) + 2, dtype=bool)
    np.less(buf - np.uint8(48), 10, out=pad[1:-1])
    edges = np.flatnonzero(pad[1:] != pad[:-1])
    starts, ends = edges[0::2], edges[1::2]
    if len(starts) == 0:
        return starts, np.zeros(0, np.int64)
    digits = buf[pad[1:-1]]
    offsets = np.zeros(len(starts) + 1, dtype=np.int64)
    np.cumsum(ends - starts, out=offsets[1:])
    # Runs longer than 18 digits cannot be int64; they only occur outside the timestamps (a
    # fast-path line allows at most 15 digits there), so they are read as 0 and ignored.
    too_long = (ends - starts) > 18
    strings = pa.Array.from_buffers(pa.large_utf8(), len(starts),
                                    [None, pa.py_buffer(offsets), pa.py_buffer(digits)])
    if too_long.any():
        strings = pc.if_else(pa.array(too_long), pa.scalar("0", pa.large_utf8()), strings)
    values = pc.cast(strings, pa.int64()).to_numpy()
    return starts, values


def parse_block(block: bytes, counts: Counter[str], examples: dict[str, list[str]]) -> ParsedBlock:
    """Parse whole lines (`block` ends with b"\\n"); count dropped lines by reason in `counts`."""
    if block and not block.endswith(b"\n"):
        block += b"\n"
    buf = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(buf == 10)
    offsets = np.zeros(len(nl) + 1, dtype=np.int64)
    offsets[1:] = nl
    lines = pa.Array.from_buffers(pa.large_binary(), len(nl),
                                  [None, pa.py_buffer(offsets), pa.py_buffer(block)])
    ok = pc.match_substring_regex(lines, FULL_LINE).to_numpy(zero_copy_only=False)
    fast_idx = np.flatnonzero(ok)

    tars: list[np.ndarray] = []
    keys: list[str] = []
    durs: list[np.ndarray] = []
    seg_counts: list[np.ndarray] = []
    seg_starts: list[np.ndarray] = []
    seg_ends: list[np.ndarray] = []

    n_fast = 0
    if len(fast_idx):
        fast_lines = lines if len(fast_idx) == len(lines) else lines.take(pa.array(fast_idx))
        head = pc.extract_regex(fast_lines, HEAD)
        head_len = pc.binary_length(head.field("head")).to_numpy().astype(np.int64)
        ts_begin = offsets[fast_idx] + head_len  # first byte of the timestamps list
        line_end = offsets[fast_idx + 1]
        run_pos, run_val = _digit_runs(buf)
        # keep the digit runs inside some fast line's timestamps
        slot = np.searchsorted(ts_begin, run_pos, side="right") - 1
        inside = slot >= 0
        inside[inside] &= run_pos[inside] < line_end[slot[inside]]
        slot, run_val = slot[inside], run_val[inside]
        n_runs = np.bincount(slot, minlength=len(fast_idx))
        key_str = _decode_keys(head.field("key"), counts)
        good = np.array([k is not None and k.strip() != "" for k in key_str], dtype=bool)
        if not good.all():
            for i in np.flatnonzero(~good):
                counts["bad_key"] += 1
                examples.setdefault("bad_key", []).append(
                    bytes(block[offsets[fast_idx[i]]:offsets[fast_idx[i] + 1]]).strip()[:120]
                    .decode("utf-8", "replace"))
            seg_keep = np.repeat(good, n_runs)
            run_val = run_val[seg_keep]
            n_runs = n_runs[good]
        tar = pc.cast(head.field("tar").cast(pa.string()), pa.int64()).to_numpy()[good]
        dur = pc.cast(head.field("dur").cast(pa.string()), pa.float64()).to_numpy()[good]
        tars.append(tar.astype(np.int32))
        keys.extend(k for k in key_str if k is not None and k.strip() != "")
        durs.append(dur)
        seg_counts.append(n_runs // 2)
        vals = run_val.astype(np.float64)
        seg_starts.append(vals[0::2])
        seg_ends.append(vals[1::2])
        n_fast = int(good.sum())

    slow_idx = np.flatnonzero(~ok)
    n_blank = 0
    if len(slow_idx):
        s_tar, s_dur, s_cnt, s_st, s_en = [], [], [], [], []
        for i in slow_idx:
            line = bytes(block[offsets[i]:offsets[i + 1]]).strip(_BLANK)
            if not line:
                n_blank += 1
                continue
            rec = parse_line_slow(line, counts, examples)
            if rec is None:
                continue
            key, tar_n, dur_s, st, en = rec
            keys.append(key)
            s_tar.append(tar_n)
            s_dur.append(dur_s)
            s_cnt.append(len(st))
            s_st.extend(st)
            s_en.extend(en)
        tars.append(np.asarray(s_tar, dtype=np.int32))
        durs.append(np.asarray(s_dur, dtype=np.float64))
        seg_counts.append(np.asarray(s_cnt, dtype=np.int64))
        seg_starts.append(np.asarray(s_st, dtype=np.float64))
        seg_ends.append(np.asarray(s_en, dtype=np.float64))

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    return ParsedBlock(
        tar=cat(tars, np.int32), raw_key=keys, duration_s=cat(durs, np.float64),
        seg_count=cat(seg_counts, np.int64), seg_start=cat(seg_starts, np.float64),
        seg_end=cat(seg_ends, np.float64), n_lines=len(nl) - n_blank, n_fast=n_fast,
    )


def _is_num(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def parse_line_slow(line: bytes, counts: Counter[str], examples: dict[str, list[str]]
                    ) -> tuple[str, int, float, list[float], list[float]] | None:
    """One line through orjson with every check; None (and a counted reason) if it is dropped."""
    def drop(reason: str) -> None:
        counts[reason] += 1
        ex = examples.setdefault(reason, [])
        if len(ex) < 5:
            ex.append(line[:120].decode("utf-8", "replace"))

    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError:
        drop("malformed_json")
        return None
    if not isinstance(obj, dict) or len(obj) != 1:
        drop("bad_schema")
        return None
    ((key, body),) = obj.items()
    if not isinstance(body, dict):
        drop("bad_schema")
        return None
    if not key.strip():
        drop("bad_key")
        return None
    tar_raw = body.get("tar_number")
    try:
        if isinstance(tar_raw, float) or tar_raw is None:
            raise ValueError(tar_raw)
        tar = int(tar_raw.strip()) if isinstance(tar_raw, str) and tar_raw.strip().isdigit() else \
            tar_raw if isinstance(tar_raw, int) and not isinstance(tar_raw, bool) else None
        if tar is None or not 0 <= tar < 2**31:
            raise ValueError(tar_raw)
    except ValueError:
        drop("bad_tar_number")
        return None
    dur = body.get("duration")
    if not _is_num(dur) or dur <= 0:
        drop("bad_duration")
        return None
    ts = body.get("timestamps", [])
    if ts is None:
        ts = []
    if not isinstance(ts, list):
        drop("bad_schema")
        return None
    st: list[float] = []
    en: list[float] = []
    for seg in ts:
        if not isinstance(seg, dict) or not _is_num(seg.get("start")) or not _is_num(seg.get("end")):
            counts["segment_malformed_dropped"] += 1
            continue
        st.append(float(seg["start"]))
        en.append(float(seg["end"]))
    return key, int(tar), float(dur), st, en


@dataclass
class Segments:
    """Repaired segments in seconds: per-file counts plus concatenated starts/ends."""

    count: np.ndarray  # int64 per file
    start_s: np.ndarray  # float64
    end_s: np.ndarray  # float64
    speech_s: np.ndarray  # float64 per file


def repair_segments(count: np.ndarray, start: np.ndarray, end: np.ndarray, duration_s: np.ndarray,
                    sample_rate: int, counts: Counter[str]) -> Segments:
    """Apply the module's repair rules (vectorised); `start`/`end` in samples, grouped by file."""
    n = len(count)
    owner = np.repeat(np.arange(n, dtype=np.int64), count)
    s = start / sample_rate
    e = end / sample_rate
    neg = (s < 0) | (e < 0)
    if neg.any():
        counts["segment_negative_clipped"] += int(neg.sum())
        s = np.maximum(s, 0.0)
        e = np.maximum(e, 0.0)
    dur = duration_s[owner]
    beyond = s >= dur
    past = (e > dur) & ~beyond
    if past.any():
        counts["segment_past_end_clipped"] += int(past.sum())
        e = np.where(past, dur, e)
    empty = (e <= s) & ~beyond
    counts["segment_past_end_dropped"] += int(beyond.sum())
    counts["segment_empty_dropped"] += int(empty.sum())
    keep = ~(beyond | empty)
    if not keep.all():
        s, e, owner = s[keep], e[keep], owner[keep]
    same = owner[1:] == owner[:-1]
    unsorted = same & (s[1:] < s[:-1])
    if unsorted.any():
        counts["files_unsorted_segments"] += len(np.unique(owner[1:][unsorted]))
        order = np.lexsort((e, s, owner))
        s, e, owner = s[order], e[order], owner[order]
        same = owner[1:] == owner[:-1]
    overlap = same & (s[1:] <= e[:-1])
    if overlap.any():
        # merge inside the few files that need it, vectorised per file group
        bad_files = np.unique(owner[1:][overlap])
        mask = np.isin(owner, bad_files)
        ms, me, mo = s[mask], e[mask], owner[mask]
        new_s, new_e, new_o = [], [], []
        bounds = np.flatnonzero(np.diff(mo)) + 1
        for gs, ge, go in zip(np.split(ms, bounds), np.split(me, bounds), np.split(mo, bounds),
                              strict=True):
            cur_s, cur_e = gs[0], ge[0]
            for a, b in zip(gs[1:], ge[1:], strict=True):
                if a <= cur_e:
                    cur_e = max(cur_e, b)
                    counts["segment_overlap_merged"] += 1
                else:
                    new_s.append(cur_s)
                    new_e.append(cur_e)
                    new_o.append(go[0])
                    cur_s, cur_e = a, b
            new_s.append(cur_s)
            new_e.append(cur_e)
            new_o.append(go[0])
        s = np.concatenate([s[~mask], np.asarray(new_s)])
        e = np.concatenate([e[~mask], np.asarray(new_e)])
        owner = np.concatenate([owner[~mask], np.asarray(new_o, dtype=np.int64)])
        order = np.lexsort((s, owner))
        s, e, owner = s[order], e[order], owner[order]
    seg_count = np.bincount(owner, minlength=n).astype(np.int64)
    speech = np.bincount(owner, weights=e - s, minlength=n)
    for k in [k for k, v in counts.items() if v == 0]:
        del counts[k]
    return Segments(count=seg_count, start_s=s, end_s=e, speech_s=speech)
