"""Parse blocks of `vad_results.jsonl` into columns, fast, and repair the speech segments.

One line is `{"<item>/<file>": {"tar_number": "000123", "duration": 183.4,
"timestamps": [{"start": 5120, "end": 81920}, ...]}}` (start/end: samples at 16 kHz).

Fast paths (vectorised, no Python object per segment), for a block of whole lines held as one
Arrow binary array:
1. a line that FULL_LINE (RE2) proves to have exactly the expected shape (fields in the usual
   order, strict JSON numbers, integer samples) is read without a JSON parser: key, tar and
   duration from FULL_HEAD, the segment numbers as the digit runs inside its timestamps list,
   converted with SWAR arithmetic on unaligned 8-byte loads (`_run_values`);
2. any other line whose key RE2 finds is given to Arrow's JSON reader after its key is rewritten
   to a constant name (any field order or spacing).
A line neither path accepts (extra fields, floats or negatives in timestamps, broken JSON, keys
that are not valid JSON strings) goes to `orjson.loads`, so malformed lines are still found
exactly and counted by reason.

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
from typing import Any, TypeGuard

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pajson

_KEY_BODY = r'(?:[^"\\\x00-\x1f]|\\.)*'
_WS = r"[ \t\r]*"
# JSON numbers only (no leading zeros): anything else is left to Arrow's reader or orjson
_NUM_DUR = r"(?:0|[1-9][0-9]{0,8})(?:\.[0-9]{1,17})?(?:[eE][-+]?[0-9]{1,2})?"
_INT = r"(?:0|[1-9][0-9]{0,14})"
_SEG = rf'\{{{_WS}"start"{_WS}:{_WS}{_INT}{_WS},{_WS}"end"{_WS}:{_WS}{_INT}{_WS}\}}'
_HEAD_T = (rf'{_WS}\{{{_WS}"@KEY@"{_WS}:{_WS}\{{{_WS}"tar_number"{_WS}:{_WS}"@TAR@"{_WS},'
           rf'{_WS}"duration"{_WS}:{_WS}@DUR@{_WS},{_WS}"timestamps"{_WS}:{_WS}\[')


def _head(key: str, tar: str, dur: str) -> str:
    return _HEAD_T.replace("@KEY@", key).replace("@TAR@", tar).replace("@DUR@", dur)


# A line of exactly the expected shape: one key, fields in the usual order, integer samples.
FULL_LINE = ("^\n?" + _head(_KEY_BODY, "[0-9]{1,9}", _NUM_DUR)
             + rf"{_WS}(?:{_SEG}(?:{_WS},{_WS}{_SEG})*)?{_WS}\]{_WS}\}}{_WS}\}}{_WS}$")
FULL_HEAD = ("^(?P<head>\n?" + _head(f"(?P<key>{_KEY_BODY})", "(?P<tar>[0-9]{1,9})",
                                     f"(?P<dur>{_NUM_DUR})") + ")")
# Each line in the Arrow array starts with the previous line's "\n" (except the first one).
HEAD = r'^(?P<pre>\n?[ \t\r]*\{[ \t\r]*")(?P<key>' + _KEY_BODY + r')"[ \t\r]*:'
_BLANK = b" \t\r\n"
_SPACE, _K, _QUOTE = ord(" "), ord("k"), ord('"')
ARROW_SCHEMA = pa.schema([("k", pa.struct([
    ("tar_number", pa.string()), ("duration", pa.float64()),
    ("timestamps", pa.list_(pa.struct([("start", pa.int64()), ("end", pa.int64())]))),
]))])
_ARROW_PARSE = pajson.ParseOptions(explicit_schema=ARROW_SCHEMA, unexpected_field_behavior="error",
                                   newlines_in_values=False)
_MIN_GROUP = 64  # below this many lines a failing group is parsed line by line


@dataclass
class ParsedBlock:
    """Lines of one block that passed the line-level checks; segments still raw (samples)."""

    tar: np.ndarray  # int32, one per line
    keys: pa.Array  # string: JSON-decoded key as stored
    duration_s: np.ndarray  # float64
    seg_count: np.ndarray  # int64, segments per line
    seg_start: np.ndarray  # float64 samples, concatenated
    seg_end: np.ndarray  # float64 samples
    n_lines: int  # non-blank lines seen
    n_fast: int  # lines that took the vectorised path

    @property
    def raw_key(self) -> list[str]:
        return self.keys.to_pylist()


def _decode_keys(keys: list[bytes]) -> list[str | None]:
    """JSON string bodies -> str; None where the body is not valid JSON/UTF-8."""
    out: list[str | None] = []
    for b in keys:
        if b"\\" not in b:
            try:
                out.append(b.decode("utf-8"))
            except UnicodeDecodeError:
                out.append(None)
            continue
        try:
            out.append(orjson.loads(b'"' + b + b'"'))
        except orjson.JSONDecodeError:
            out.append(None)
    return out


_NOT_ASCII_SPACE = r"[^\t\n\x0b\x0c\r\x1c-\x1f ]"  # a char that Python's str.strip() keeps


def _decode_keys_arrow(key_bytes: pa.Array) -> tuple[pa.Array, np.ndarray]:
    """JSON string bodies (binary) -> (string array, null where not valid JSON/UTF-8; key_ok mask:
    valid and not empty after str.strip()). Escaped keys go through orjson one by one."""
    esc = pc.match_substring(key_bytes, "\\").to_numpy(zero_copy_only=False)
    try:
        out = key_bytes.cast(pa.string())  # validates UTF-8
    except pa.ArrowInvalid:
        out = pa.array(_decode_keys(key_bytes.to_pylist()), pa.string())
        esc = np.zeros(len(out), dtype=bool)
    if esc.any():
        fixed = _decode_keys(key_bytes.filter(pa.array(esc)).to_pylist())
        out = pc.replace_with_mask(out, pa.array(esc), pa.array(fixed, pa.string()))
    ok = pc.fill_null(pc.match_substring_regex(out, _NOT_ASCII_SPACE), False)
    ok = ok.to_numpy(zero_copy_only=False).copy()
    recheck = np.flatnonzero(ok & ~pc.fill_null(pc.string_is_ascii(out), True).to_numpy(
        zero_copy_only=False))
    if len(recheck):  # non-ASCII: Python decides what is whitespace
        vals = out.take(pa.array(recheck)).to_pylist()
        ok[recheck] = [x.strip() != "" for x in vals]
    return out, ok


def _ranges(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenation of arange(s, s + n) for each (s, n), vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.cumsum(lengths)
    idx = np.ones(total, dtype=np.int64)
    nz = lengths > 0
    s, e, n = starts[nz], ends[nz], lengths[nz]
    idx[0] = s[0]
    idx[e[:-1]] = s[1:] - (s[:-1] + n[:-1] - 1)
    return np.cumsum(idx)


def _arrow_parse(buf: np.ndarray, line_off: np.ndarray, line_end: np.ndarray) -> pa.Table | None:
    """Parse the rewritten lines [line_off, line_end) with Arrow's JSON reader; None on error."""
    pieces = buf[_ranges(line_off, line_end - line_off)] if len(line_off) else buf[:0]
    try:
        return pajson.read_json(pa.BufferReader(pa.py_buffer(pieces.tobytes() + b"\n")),
                                read_options=pajson.ReadOptions(use_threads=False,
                                                                block_size=max(len(pieces) + 16, 1 << 20)),
                                parse_options=_ARROW_PARSE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _arrow_parse_all(buf: np.ndarray, line_off: np.ndarray, line_end: np.ndarray,
                     whole: bool) -> tuple[list[pa.Table], list[np.ndarray], np.ndarray]:
    """Parse groups of lines with Arrow, halving any group that fails; return parsed tables, the
    line numbers they hold, and the line numbers left for the slow path."""
    done: list[pa.Table] = []
    done_idx: list[np.ndarray] = []
    slow: list[np.ndarray] = []
    stack = [np.arange(len(line_off))]
    while stack:
        grp = stack.pop()
        if len(grp) == 0:
            continue
        if whole and len(grp) == len(line_off):
            # one contiguous region: no gather needed
            table = _arrow_parse_region(buf, int(line_off[0]), int(line_end[-1]), len(grp))
        else:
            table = _arrow_parse(buf, line_off[grp], line_end[grp])
        if table is not None and table.num_rows == len(grp):
            done.append(table)
            done_idx.append(grp)
        elif len(grp) <= _MIN_GROUP:
            slow.append(grp)
        else:
            half = len(grp) // 2
            stack.extend([grp[half:], grp[:half]])
    return done, done_idx, (np.concatenate(slow) if slow else np.zeros(0, np.int64))


def _arrow_parse_region(buf: np.ndarray, a: int, b: int, n: int) -> pa.Table | None:
    try:
        return pajson.read_json(pa.BufferReader(pa.py_buffer(buf[a:b + 1])),  # with its "\n"
                                read_options=pajson.ReadOptions(use_threads=False,
                                                                block_size=max(b - a + 16, 1 << 20)),
                                parse_options=_ARROW_PARSE)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


_LO4 = np.uint64(0x0F0F0F0F0F0F0F0F)
_M8, _M16 = np.uint64(0x00FF00FF00FF00FF), np.uint64(0x0000FFFF0000FFFF)
_P1, _P2, _P3 = np.uint64(10 * 256 + 1), np.uint64(100 * 65536 + 1), np.uint64(10000 * 2**32 + 1)


_X30, _X7F, _X76, _X80 = (np.uint64(0x3030303030303030), np.uint64(0x7F7F7F7F7F7F7F7F),
                          np.uint64(0x7676767676767676), np.uint64(0x8080808080808080))
_XFF = np.uint64(0xFF)
_S7, _S8, _S16, _S32 = np.uint64(7), np.uint64(8), np.uint64(16), np.uint64(32)


def _digit_run_ends(view: np.ndarray) -> np.ndarray:
    """End (exclusive) of every run of ASCII digits in `view` (uint8 ending with a non-digit)."""
    isd = np.less(view - np.uint8(48), np.uint8(10))
    return np.flatnonzero(isd[:-1] > isd[1:]) + 1  # a digit followed by a non-digit


def _swar8(words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Value of the ASCII digits that end each little-endian 8-byte word (its top bytes, 0..8 of
    them), and whether all eight bytes are digits. `words` is overwritten."""
    x = np.bitwise_xor(words, _X30, out=words)  # a digit byte becomes 0..9, any other byte not
    nd = (x & _X7F) + _X76
    nd |= x
    nd &= _X80  # 0x80 in each byte that is not a digit
    full = nd == 0
    nd |= nd >> _S8  # smear down: 0x80 in every byte at or below the highest non-digit byte
    nd |= nd >> _S16
    nd |= nd >> _S32
    nd >>= _S7
    nd *= _XFF
    np.invert(nd, out=nd)
    v = np.bitwise_and(x, _LO4, out=x)
    v &= nd  # only the trailing digits' values remain (little-endian: the top bytes)
    v *= _P1
    v >>= _S8
    v &= _M8
    v *= _P2
    v >>= _S16
    v &= _M16
    v *= _P3
    v >>= _S32
    return v, full


def _run_values(view: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Value (float64) of the digit runs ending at `ends` (1..16 digits, each run preceded by at
    least 16 bytes), eight digits at a time with SWAR arithmetic on unaligned 8-byte loads."""
    words = np.ndarray((len(view) - 7,), dtype="<u8", buffer=view, strides=(1,))
    vals, full = _swar8(words[ends - 8])
    long = np.flatnonzero(full)
    if len(long):
        hi, _ = _swar8(words[ends[long] - 16])
        vals[long] += hi * np.uint64(10**8)
    return vals.astype(np.float64)  # < 10**15 < 2**53: exact


def _parse_exact(view: np.ndarray, lines: pa.Array, offsets: np.ndarray, idx: np.ndarray,
                 counts: Counter[str], examples: dict[str, list[str]]):
    """Lines `idx`, each proven by FULL_LINE to be well-formed: prefix fields by regex, segment
    numbers as digit runs read with numpy. Returns the columns and the lines to re-parse
    (keys that are not valid JSON strings: orjson decides)."""
    sub = lines if len(idx) == len(lines) else lines.take(pa.array(idx))
    head = pc.extract_regex(sub, FULL_HEAD)
    head_len = pc.binary_length(head.field("head")).to_numpy().astype(np.int64)
    key_arr, key_good = _decode_keys_arrow(head.field("key"))
    valid = key_arr.is_valid().to_numpy(zero_copy_only=False)
    redo = idx[~valid]
    bad_key = valid & ~key_good
    for i in np.flatnonzero(bad_key):
        _drop(counts, examples, "bad_key", bytes(view[offsets[idx[i]]:offsets[idx[i] + 1]]))
    good = valid & key_good
    ts_begin = offsets[idx] + head_len  # first byte after "["
    line_end = offsets[idx + 1]
    ends = _digit_run_ends(view)
    first = np.searchsorted(ends, ts_begin, side="right")  # the runs of line i: first[i]:last[i]
    n_runs = np.searchsorted(ends, line_end, side="right") - first
    vals = _run_values(view, ends[_ranges(first, n_runs)])
    if not good.all():
        keep = np.repeat(good, n_runs)
        vals, n_runs = vals[keep], n_runs[good]
        gp = pa.array(good)
        key_arr, tar_s, dur_s = key_arr.filter(gp), head.field("tar").filter(gp), \
            head.field("dur").filter(gp)
    else:
        tar_s, dur_s = head.field("tar"), head.field("dur")
    tar = pc.cast(tar_s.cast(pa.string()), pa.int32()).to_numpy()
    dur = pc.cast(dur_s.cast(pa.string()), pa.float64()).to_numpy()
    dur_ok = np.isfinite(dur) & (dur > 0)
    if not dur_ok.all():
        gi = idx[good]
        for i in np.flatnonzero(~dur_ok):
            _drop(counts, examples, "bad_duration", bytes(view[offsets[gi[i]]:offsets[gi[i] + 1]]))
        vals = vals[np.repeat(dur_ok, n_runs)]
        n_runs, tar, dur = n_runs[dur_ok], tar[dur_ok], dur[dur_ok]
        key_arr = key_arr.filter(pa.array(dur_ok))
    return key_arr, tar, dur, n_runs // 2, vals[0::2], vals[1::2], redo


def parse_block(block: bytes | memoryview, counts: Counter[str],
                examples: dict[str, list[str]]) -> ParsedBlock:
    """Parse whole lines (`block` ends with b"\\n"); count dropped lines by reason in `counts`."""
    if len(block) and block[-1] != 10:  # bytes or a memoryview of bytes
        block = bytes(block) + b"\n"
    view = np.frombuffer(block, dtype=np.uint8)
    nl = np.flatnonzero(view == 10)
    offsets = np.zeros(len(nl) + 1, dtype=np.int64)
    offsets[1:] = nl
    lines = pa.Array.from_buffers(pa.large_binary(), len(nl),
                                  [None, pa.py_buffer(offsets), pa.py_buffer(block)])
    keys: list[pa.Array] = []
    tars: list[np.ndarray] = []
    durs: list[np.ndarray] = []
    seg_counts: list[np.ndarray] = []
    seg_starts: list[np.ndarray] = []
    seg_ends: list[np.ndarray] = []
    n_fast = 0
    exact = pc.match_substring_regex(lines, FULL_LINE).to_numpy(zero_copy_only=False)
    exact_idx = np.flatnonzero(exact)
    slow_lines: list[int] = []
    if len(exact_idx):
        k, t, d, c, st, en, redo = _parse_exact(view, lines, offsets, exact_idx, counts, examples)
        keys.append(k)
        tars.append(t)
        durs.append(d)
        seg_counts.append(c)
        seg_starts.append(st)
        seg_ends.append(en)
        n_fast += len(t)
        slow_lines.extend(redo.tolist())
    # Other lines: Arrow's JSON reader (any field order or spacing), then orjson.
    rest = np.flatnonzero(~exact)
    if len(rest):
        sub = lines if len(rest) == len(lines) else lines.take(pa.array(rest))
        head = pc.extract_regex(sub, HEAD)
        has_head = head.is_valid().to_numpy(zero_copy_only=False)
        fast_idx = rest[has_head]
        slow_lines.extend(rest[~has_head].tolist())
    else:
        fast_idx = rest
    if len(fast_idx):
        fh = head.filter(pa.array(has_head)) if len(fast_idx) < len(rest) else head
        pre_len = pc.binary_length(fh.field("pre")).to_numpy().astype(np.int64)
        key_bytes = fh.field("key")
        key_len = pc.binary_length(key_bytes).to_numpy().astype(np.int64)
        key_arr, key_good = _decode_keys_arrow(key_bytes)
        # Rewrite `"<key>"` as `"k"` plus spaces, so that every line has one schema for Arrow.
        # An empty key is left alone: Arrow rejects it and the line takes the slow path.
        buf = view.copy()
        q = (offsets[fast_idx] + pre_len)[key_len >= 1]  # first byte of each key body
        ql = key_len[key_len >= 1]
        buf[q] = _K
        buf[q + 1] = _QUOTE
        buf[_ranges(q + 2, ql - 1)] = _SPACE
        line_off = offsets[fast_idx]
        line_end = offsets[fast_idx + 1]
        whole = len(fast_idx) == len(nl)
        parts, part_idx, failed = _arrow_parse_all(buf, line_off, line_end, whole)
        slow_lines.extend(fast_idx[failed].tolist())
        for table, gi in zip(parts, part_idx, strict=True):
            k = table.column("k").combine_chunks()
            tar_s = k.field("tar_number")
            dur = k.field("duration").to_numpy(zero_copy_only=False)
            ts = k.field("timestamps")
            tar_ok = pc.fill_null(pc.match_substring_regex(tar_s, r"^[ ]*[0-9]{1,9}[ ]*$"), False)
            tar_ok = tar_ok.to_numpy(zero_copy_only=False)
            key_ok = key_good[gi]
            dur_ok = np.isfinite(dur) & (dur > 0)
            good = tar_ok & key_ok & dur_ok
            for reason, bad in (("bad_key", ~key_ok), ("bad_tar_number", key_ok & ~tar_ok),
                                ("bad_duration", key_ok & tar_ok & ~dur_ok)):
                for i in np.flatnonzero(bad):
                    _drop(counts, examples, reason, bytes(view[line_off[gi[i]]:line_end[gi[i]]]))
            ts = pc.if_else(ts.is_null(), pa.scalar([], ts.type), ts)
            n_seg = pc.list_value_length(ts).to_numpy(zero_copy_only=False).astype(np.int64)
            flat = ts.flatten()  # list offsets respected
            st = flat.field("start").to_numpy(zero_copy_only=False)
            en = flat.field("end").to_numpy(zero_copy_only=False)
            st_ok = ~np.isnan(st.astype(np.float64)) if st.dtype.kind == "f" else np.ones(len(st), bool)
            en_ok = ~np.isnan(en.astype(np.float64)) if en.dtype.kind == "f" else np.ones(len(en), bool)
            seg_line = np.repeat(np.arange(len(n_seg)), n_seg)
            seg_ok = st_ok & en_ok & np.repeat(good, n_seg)
            bad_seg = ~(st_ok & en_ok)
            if bad_seg.any():
                counts["segment_malformed_dropped"] += int((bad_seg & np.repeat(good, n_seg)).sum())
            tars.append(pc.cast(pc.utf8_trim_whitespace(tar_s.filter(pa.array(good))),
                                pa.int64()).to_numpy().astype(np.int32))
            keys.append(key_arr.take(pa.array(gi[good])))
            durs.append(dur[good])
            seg_counts.append(np.bincount(seg_line[seg_ok], minlength=len(n_seg))[good])
            seg_starts.append(st[seg_ok].astype(np.float64))
            seg_ends.append(en[seg_ok].astype(np.float64))
            n_fast += int(good.sum())

    n_blank = 0
    if slow_lines:
        s_key, s_tar, s_dur, s_cnt, s_st, s_en = [], [], [], [], [], []
        for i in np.array(sorted(slow_lines), dtype=np.int64):
            line = bytes(view[offsets[i]:offsets[i + 1]]).strip(_BLANK)
            if not line:
                n_blank += 1
                continue
            rec = parse_line_slow(line, counts, examples)
            if rec is None:
                continue
            key, tar_n, dur_s, st_l, en_l = rec
            s_key.append(key)
            s_tar.append(tar_n)
            s_dur.append(dur_s)
            s_cnt.append(len(st_l))
            s_st.extend(st_l)
            s_en.extend(en_l)
        keys.append(pa.array(s_key, pa.string()))
        tars.append(np.asarray(s_tar, dtype=np.int32))
        durs.append(np.asarray(s_dur, dtype=np.float64))
        seg_counts.append(np.asarray(s_cnt, dtype=np.int64))
        seg_starts.append(np.asarray(s_st, dtype=np.float64))
        seg_ends.append(np.asarray(s_en, dtype=np.float64))

    def cat(parts: list[np.ndarray], dtype: type) -> np.ndarray:
        if not parts:
            return np.zeros(0, dtype)
        return (parts[0] if len(parts) == 1 else np.concatenate(parts)).astype(dtype, copy=False)

    return ParsedBlock(
        tar=cat(tars, np.int32), keys=pa.concat_arrays(keys) if keys else pa.array([], pa.string()),
        duration_s=cat(durs, np.float64),
        seg_count=cat(seg_counts, np.int64), seg_start=cat(seg_starts, np.float64),
        seg_end=cat(seg_ends, np.float64), n_lines=len(nl) - n_blank, n_fast=n_fast,
    )


def _drop(counts: Counter[str], examples: dict[str, list[str]], reason: str, line: bytes) -> None:
    counts[reason] += 1
    ex = examples.setdefault(reason, [])
    if len(ex) < 5:
        ex.append(line.strip()[:120].decode("utf-8", "replace"))


def _is_num(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def parse_line_slow(line: bytes, counts: Counter[str], examples: dict[str, list[str]]
                    ) -> tuple[str, int, float, list[float], list[float]] | None:
    """One line through orjson with every check; None (and a counted reason) if it is dropped."""
    def drop(reason: str) -> None:
        _drop(counts, examples, reason, line)

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
    if len(s) and (s.min() < 0 or e.min() < 0):
        neg = (s < 0) | (e < 0)
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
