"""The LID index as an Arrow table: lang_id_results.jsonl lines parsed, keyed like the VAD
index, duplicates resolved, and the stratified LID split. Pure functions.

Each line is `{"tar_number": "000123", "filepath": "/data/<item>/<file>.mp3", "prediction": "en"}`.
Keys go through `ups.keys.normalize_key`, the same function index-vad uses, so joins are on
(tar, full key) and never on basenames. Bad lines are counted by reason and dropped:
`malformed_json`, `bad_schema`, `bad_tar_number`, `bad_key`, `bad_prediction` (missing or empty).
Duplicates of one (tar, key): identical predictions collapse into one row
(`duplicate_identical`); conflicting predictions drop every copy (`duplicate_conflict`), since
no label can be trusted. The table is sorted by (tar, key), so line order does not matter.

`stratified_split`: by file, stratified by predicted label: within each label, files in
(tar, key) order are permuted with numpy's PCG64 seeded with `seed`, and the first
round(test_fraction * n) become "test" (a label with one file stays in "train").
"""

from __future__ import annotations

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.compute as pc

from ups.key_batch import normalize_keys
from ups.keys import parse_tar_number
from ups.skips import Skips

LID_SCHEMA = pa.schema([("tar", pa.int32()), ("key", pa.string()), ("raw_path", pa.string()),
                        ("language", pa.string()), ("lid_split", pa.string())])


def parse_lines(lines: list[bytes], skips: Skips) -> tuple[list[int], list[str], list[str]]:
    """(tars, raw paths, predictions) of the valid lines; bad ones counted in `skips`."""
    tars: list[int] = []
    paths: list[str] = []
    preds: list[str] = []
    for line in lines:
        line = line.strip()
        if not line:
            continue
        ex = line[:120].decode("utf-8", "replace")
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError:
            skips.add("malformed_json", ex)
            continue
        if not isinstance(obj, dict):
            skips.add("bad_schema", ex)
            continue
        path, pred, tar = obj.get("filepath"), obj.get("prediction"), obj.get("tar_number")
        if not isinstance(path, str) or not path.strip():
            skips.add("bad_key", ex)
            continue
        if not isinstance(pred, str) or not pred.strip():
            skips.add("bad_prediction", ex)
            continue
        try:
            tar_n = parse_tar_number(tar if isinstance(tar, str | int) else "")
            if tar_n >= 2**31:
                raise ValueError(tar)
        except ValueError:
            skips.add("bad_tar_number", ex)
            continue
        tars.append(tar_n)
        paths.append(path)
        preds.append(pred.strip())
    return tars, paths, preds


def build_index(tars: list[int], paths: list[str], preds: list[str], skips: Skips) -> pa.Table:
    """Normalise keys, sort by (tar, key), resolve duplicates (module rule); no split yet."""
    keys = normalize_keys(paths)
    t = pa.table({"tar": pa.array(tars, pa.int32()), "key": pa.array(keys, pa.string()),
                  "raw_path": pa.array(paths, pa.string()), "language": pa.array(preds, pa.string())})
    empty = pc.equal(t["key"], "")
    if pc.any(empty).as_py():
        skips.add("bad_key", n=int(pc.sum(empty).as_py()))
        t = t.filter(pc.invert(empty))
    idx = pc.sort_indices(t, sort_keys=[("tar", "ascending"), ("key", "ascending"),
                                        ("language", "ascending"), ("raw_path", "ascending")])
    t = t.take(idx)
    if len(t) < 2:
        return t
    tar = t["tar"].to_numpy()
    key = np.asarray(t["key"].to_pylist(), dtype=object)
    lang = np.asarray(t["language"].to_pylist(), dtype=object)
    same = np.zeros(len(t) + 1, dtype=bool)
    same[1:-1] = (tar[1:] == tar[:-1]) & (key[1:] == key[:-1])
    group = np.cumsum(~same[:-1]) - 1  # group id per row
    n_groups = int(group[-1]) + 1
    first = np.flatnonzero(~same[:-1])
    size = np.bincount(group, minlength=n_groups)
    # a group conflicts if its languages are not all equal to its first row's
    differs = np.bincount(group, weights=(lang != lang[first][group]).astype(np.float64),
                          minlength=n_groups) > 0
    keep = np.zeros(len(t), dtype=bool)
    keep[first[~differs]] = True
    n_ident = int((size[~differs] - 1).sum())
    n_conf = int(size[differs].sum())
    if n_ident:
        skips.add("duplicate_identical", n=n_ident)
    if n_conf:
        skips.add("duplicate_conflict", n=n_conf)
    return t.filter(pa.array(keep))


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> np.ndarray:
    """"train"/"test" per row, stratified by label (see the module docstring)."""
    rng = np.random.default_rng(seed)
    out = np.full(len(labels), "train", dtype=object)
    for lab in sorted(set(labels.tolist())):
        rows = np.flatnonzero(labels == lab)
        n_test = int(round(test_fraction * len(rows))) if len(rows) > 1 else 0
        out[rows[rng.permutation(len(rows))[:n_test]]] = "test"
    return out
