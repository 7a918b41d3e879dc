"""The LID index's table: lines parsed with bad ones counted, duplicates resolved, the split."""

from __future__ import annotations

import numpy as np

from ups.lid_table import build_index, parse_lines, stratified_split
from ups.skips import Skips


def _line(tar, path, pred) -> bytes:
    import json

    return json.dumps({"tar_number": tar, "filepath": path, "prediction": pred}).encode()


def test_valid_lines_are_kept_and_bad_ones_counted_by_reason():
    skips = Skips("test")
    lines = [_line("000007", "/data/a/x.mp3", " en "), b"\n", b"not json", b"[1]", _line("1", "", "en"),
             _line("1", "/data/a/y.mp3", ""), _line("x1", "/data/a/z.mp3", "de"),
             _line(2**31, "/d/w.mp3", "de")]
    tars, paths, preds = parse_lines(lines, skips)
    assert (tars, paths, preds) == ([7], ["/data/a/x.mp3"], ["en"])
    assert skips.to_dict()["counts"] == {"malformed_json": 1, "bad_schema": 1, "bad_key": 1,
                                         "bad_prediction": 1, "bad_tar_number": 2}


def test_identical_duplicates_collapse_and_conflicting_ones_are_all_dropped():
    skips = Skips("test")
    tars = [2, 1, 1, 1, 1, 1]
    paths = ["/data/a/k.mp3", "/data/b/q.mp3", "/data/a/k.mp3", "/data/a/k.mp3", "/data/b/r.mp3",
             "/data/b/r.mp3"]
    preds = ["fr", "en", "de", "de", "en", "es"]
    t = build_index(tars, paths, preds, skips).to_pylist()
    assert [(r["tar"], r["key"], r["language"]) for r in t] == [(1, "a/k", "de"), (1, "b/q", "en"),
                                                                (2, "a/k", "fr")]
    assert skips.to_dict()["counts"] == {"duplicate_identical": 1, "duplicate_conflict": 2}


def test_the_split_is_stratified_seeded_and_leaves_single_files_in_train():
    labels = np.array(["en"] * 10 + ["de"] * 5 + ["fr"], dtype=object)
    a = stratified_split(labels, 0.2, seed=42)
    assert (a == stratified_split(labels, 0.2, seed=42)).all()
    assert not (a == stratified_split(labels, 0.2, seed=1)).all()
    assert [(labels[a == "test"] == lang).sum() for lang in ("en", "de", "fr")] == [2, 1, 0]
