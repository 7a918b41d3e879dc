"""index-lang: every bad line counted by reason, duplicates resolved, keys joined like index-vad's,
a stratified LID split, the same bytes whatever the line order."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq

from tests.stages.meta_fixture import write_meta
from ups.atomic import read_json
from ups.config import IndexLangConfig
from ups.keys import normalize_key
from ups.stages import index_lang


def _line(tar, path, pred) -> str:
    return json.dumps({"tar_number": tar, "filepath": path, "prediction": pred})


GOOD = [_line("000001", "/data/item/a.mp3", "en"), _line("000001", "/data/item/talk%20b.mp3", "fr"),
        _line(2, "/data/it\u00e9m/c.part.mp3", "yo"), _line("000002", "/data/item/d.mp3", "nospeech")]
BAD = {
    "malformed_json": ['{"tar_number": "000003", "filepath": "/data/x/y.mp3", "predic'],
    "bad_schema": ['["000003", "/data/x/y.mp3", "en"]'],
    "bad_key": [_line("000003", "", "en"), _line("000003", None, "en"), _line("000003", "/data/", "en")],
    "bad_prediction": [_line("000003", "/data/x/p.mp3", ""), _line("000003", "/data/x/q.mp3", None)],
    "bad_tar_number": [_line("tar7", "/data/x/r.mp3", "en"), _line(None, "/data/x/s.mp3", "en")],
}
DUPLICATES = [_line("000004", "/data/dup/same.mp3", "es"), _line("000004", "/data/dup/same.mp3", "es"),
              _line("000004", "/data/dup/clash.mp3", "es"), _line("000004", "/data/dup/clash.mp3", "pt")]


def _index(tmp_path: Path, lines: list[str], name: str = "out", **cfg) -> tuple[list[dict], dict]:
    src = tmp_path / f"{name}.jsonl"
    src.write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    index_lang.run(IndexLangConfig(**cfg), lid_jsonl=src, out_dir=tmp_path / name)
    return (pq.read_table(tmp_path / name / "lid.parquet").to_pylist(),
            read_json(tmp_path / name / "report.json"))


def test_bad_lines_are_counted_by_reason_and_every_good_line_is_kept(tmp_path):
    rows, rep = _index(tmp_path, GOOD + [x for v in BAD.values() for x in v] + DUPLICATES)
    counts = rep["skipped"]["counts"]
    assert counts == {**{k: len(v) for k, v in BAD.items()},
                      "duplicate_identical": 1, "duplicate_conflict": 2}
    got = {(r["tar"], r["key"]): r["language"] for r in rows}
    assert got == {(1, "item/a"): "en", (1, "item/talk b"): "fr",
                   (2, normalize_key("it\u00e9m/c.part")): "yo", (2, "item/d"): "nospeech",
                   (4, "dup/same"): "es"}
    assert [(r["tar"], r["key"]) for r in rows] == sorted(got)  # sorted by (tar, key)
    assert rep["n_files"] == 5 and rep["files_per_language"]["en"] == 1


def test_line_order_does_not_change_the_index(tmp_path):
    lines = GOOD + DUPLICATES + BAD["bad_key"]
    _, a = _index(tmp_path, lines, "a")
    _, b = _index(tmp_path, lines[::-1], "b")
    assert (tmp_path / "a" / "lid.parquet").read_bytes() == (tmp_path / "b" / "lid.parquet").read_bytes()
    assert a["skipped"]["counts"] == b["skipped"]["counts"]  # the examples quoted follow the file


def test_the_split_is_stratified_by_language_at_the_test_fraction(tmp_path):
    vad, lid = write_meta(tmp_path, n_files=400)
    rows, rep = _index(tmp_path, lid.read_text().splitlines(), "meta")
    assert len(rows) == 392 and rep["n_test"] == sum(r["lid_split"] == "test" for r in rows)
    for lang in {r["language"] for r in rows}:
        own = [r for r in rows if r["language"] == lang]
        assert sum(r["lid_split"] == "test" for r in own) == round(0.2 * len(own))
