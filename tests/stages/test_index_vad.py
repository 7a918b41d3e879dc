"""index-vad on small UPS-format files: order invariance, keys, duplicates, bad lines."""

from __future__ import annotations

import json

import pyarrow.parquet as pq

from tests.stages.meta_fixture import write_meta
from ups.atomic import read_json
from ups.config import IndexVadConfig
from ups.stages import index_vad


def test_shuffled_input_gives_the_same_index(tmp_path):
    vad, _ = write_meta(tmp_path / "a", shuffle=False)
    lines = vad.read_text(encoding="utf-8").splitlines()
    shuffled = tmp_path / "b.jsonl"
    shuffled.write_text("\n".join(reversed(lines)) + "\n", encoding="utf-8")
    cfg = IndexVadConfig(block_mb=1)
    index_vad.run(cfg, vad_jsonl=vad, out_dir=tmp_path / "o1")
    index_vad.run(cfg, vad_jsonl=shuffled, out_dir=tmp_path / "o2")
    for name in ("files.parquet", "tars.parquet"):
        assert pq.read_table(tmp_path / "o1" / name).equals(pq.read_table(tmp_path / "o2" / name))
    files = pq.read_table(tmp_path / "o1" / "files.parquet").to_pylist()
    assert len(files) == 400
    keys = {r["key"] for r in files}
    assert "item0/gravaci\u00f3n 1" in keys and "item0/talk 2" in keys  # decoded, URL-decoded
    assert "item0/f0.part.final" in keys  # dots kept


def test_duplicates_bad_lines_and_repairs(tmp_path):
    p = tmp_path / "vad.jsonl"
    rows = [
        {"a/x": {"tar_number": "000001", "duration": 10.0, "timestamps": [{"start": 0, "end": 16000}]}},
        {"a/x": {"tar_number": "000001", "duration": 10.0, "timestamps": [{"start": 0, "end": 32000}]}},
        {"b/x": {"tar_number": "000001", "duration": 10.0, "timestamps": [{"start": 0, "end": 999999}]}},
        {"b/x": {"tar_number": "000002", "duration": 10.0, "timestamps": []}},
        {"c/y": {"tar_number": "000002", "duration": 5.0,
                 "timestamps": [{"start": 16000, "end": 48000}, {"start": 0, "end": 20000}]}},
    ]
    text = "\n".join(json.dumps(r) for r in rows) + "\nnot json\n{\"d/z\": {\"tar_number\": 1}}\n"
    p.write_text(text)
    index_vad.run(IndexVadConfig(), vad_jsonl=p, out_dir=tmp_path / "o")
    files = pq.read_table(tmp_path / "o" / "files.parquet").to_pylist()
    assert [(r["tar"], r["key"]) for r in files] == [(1, "a/x"), (1, "b/x"), (2, "b/x"), (2, "c/y")]
    assert files[0]["speech_s"] == 2.0  # duplicate rule: most speech kept
    assert files[1]["seg_end_s"] == [10.0]  # clipped to the duration
    assert files[2]["seg_start_s"] == []  # empty timestamps: kept, no speech
    assert files[3]["seg_start_s"] == [0.0] and files[3]["seg_end_s"] == [3.0]  # sorted, merged
    rep = read_json(tmp_path / "o" / "report.json")
    assert rep["skipped"]["counts"] == {"bad_duration": 1, "duplicate_key_dropped": 1, "malformed_json": 1}
    assert rep["repairs"]["segment_past_end_clipped"] == 1
    assert rep["repairs"]["segment_overlap_merged"] == 1
    tars = pq.read_table(tmp_path / "o" / "tars.parquet").to_pylist()
    assert tars[0]["n_files"] == 2 and abs(tars[0]["density"] - 12.0 / 20.0) < 1e-12
