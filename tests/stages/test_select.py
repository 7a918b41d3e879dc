"""select on a small UPS-format fixture (indexed by index-vad and index-lang): every selection
property the stage promises."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq
import pytest

from ups.atomic import read_json
from ups.config import SelectConfig
from ups.stages import select

BASE = SelectConfig(hours=1.0, max_tars=0, max_file_fraction=0.2, max_tar_fraction=1.0,
                    valid_fraction=0.2, hours_table="computed")


def _select(index_dir, tmp_path, name="s", **kw):
    cfg = dataclasses.replace(BASE, **kw)
    select.run(cfg, index_dir=index_dir, out_dir=tmp_path / name)
    return (pq.read_table(tmp_path / name / "chunks.parquet").to_pylist(),
            read_json(tmp_path / name / "report.json"))


def test_selection_properties(index_dir, tmp_path):
    chunks, rep = _select(index_dir, tmp_path)
    assert abs(rep["selected_hours"] - 1.0) <= 0.01 and rep["target_reached_within_1pct"]
    langs = {c["language"] for c in chunks}
    assert "nospeech" not in langs and "xx" not in langs and langs <= {"en", "es", "fr", "yo"}
    assert rep["skipped"]["counts"]["no_language_label"] == 8  # 1 in 50 files has no LID line
    assert rep["join_coverage"]["vad_without_lid"] == 8
    assert all(c["speech_ratio"] >= 0.8 and c["end_s"] - c["start_s"] == 10.0 for c in chunks)
    files = pq.read_table(index_dir / "vad" / "files.parquet").to_pylist()
    dur = {(f["tar"], f["key"]): f["duration_s"] for f in files}
    assert all(c["end_s"] <= dur[(c["tar"], c["key"])] for c in chunks)
    splits = {}
    for c in chunks:
        splits.setdefault((c["tar"], c["key"]), set()).add(c["split"])
    assert all(len(s) == 1 for s in splits.values())  # no file in both splits
    assert any(c["split"] == "valid" for c in chunks)
    assert [c["chunk_id"] for c in chunks] == list(range(len(chunks)))
    assert chunks == sorted(chunks, key=lambda c: (c["tar"], c["key"], c["start_s"]))
    per_file = max(sum(1 for c in chunks if (c["tar"], c["key"]) == k) for k in splits)
    assert per_file <= rep["max_chunks_per_file"]
    assert (tmp_path / "s" / "hours_per_language.png").stat().st_size > 1000


def test_deterministic_for_a_seed(index_dir, tmp_path):
    a, _ = _select(index_dir, tmp_path, "a")
    b, _ = _select(index_dir, tmp_path, "b")
    assert a == b


def test_temperature_raises_scarce_language_share(index_dir, tmp_path):
    _, r1 = _select(index_dir, tmp_path, "t1", alpha=1.0, hours=0.5)
    _, r0 = _select(index_dir, tmp_path, "t0", alpha=0.2, hours=0.5)
    assert r0["hours_after"]["yo"] > 1.5 * r1["hours_after"]["yo"]
    assert r0["hours_after"]["en"] < r1["hours_after"]["en"]


def test_unlisted_language_rule_and_shortfall(index_dir, tmp_path):
    # the shipped (estimated) table lists en/es/fr/yo; a huge target takes all that is eligible
    _, rep = _select(index_dir, tmp_path, "u", hours_table="shipped", hours=500.0)
    assert not rep["target_reached_within_1pct"] and rep["shortfall_reason"]
    assert rep["selected_hours"] < 500.0
    _, rep = _select(index_dir, tmp_path, "x", hours_table="shipped", unlisted_language="exclude")
    assert rep["unlisted_languages"] == []


def test_max_tars_limits_downloads(index_dir, tmp_path):
    _, few = _select(index_dir, tmp_path, "m1", max_tars=2, hours=0.5)
    _, many = _select(index_dir, tmp_path, "m0", max_tars=0, hours=0.5)
    assert few["n_tars"] <= 2 < many["n_tars"] or many["n_tars"] <= 2
    assert few["download_bytes_estimate"] <= many["download_bytes_estimate"]


def test_segment_reader_reads_rows_across_row_groups(tmp_path):
    import numpy as np
    import pyarrow as pa

    n = 100
    starts = [[float(i), float(i) + 0.5] for i in range(n)]
    t = pa.table({"seg_start_s": starts, "seg_end_s": [[a + 0.1 for a in s] for s in starts]})
    pq.write_table(t, tmp_path / "f.parquet", row_group_size=7)
    reader = select._SegmentReader(tmp_path / "f.parquet")
    ids = np.array([0, 3, 6, 7, 20, 21, 55, 99])
    s, e = reader.read(ids)
    assert s.to_pylist() == [starts[i] for i in ids]
    assert e.to_pylist() == [[a + 0.1 for a in starts[i]] for i in ids]


# --- the shipped table on indices whose languages follow it --------------------------------

SCALE = 200  # the indices hold 1/200 of every language's hours in the table (2,390 h of audio)


@pytest.fixture(scope="module")
def table_index(tmp_path_factory):
    from tests.stages.table_fixture import write_indices
    from ups.lang_hours import load_shipped

    hours = {k: v / SCALE for k, v in load_shipped().items()}
    hours["uz"] = hours["de"]  # a Whisper code the table lacks, as big as German here
    return write_indices(tmp_path_factory.mktemp("table"), hours)


def test_shipped_table_down_weights_en_and_vi_and_up_weights_the_tail(table_index, tmp_path):
    from ups.lang_hours import load_shipped

    table = load_shipped()
    cfg = SelectConfig(hours=10.0, hours_table="shipped", max_tars=0)
    select.run(cfg, index_dir=table_index, out_dir=tmp_path / "s")
    rep = read_json(tmp_path / "s" / "report.json")
    assert rep["target_reached_within_1pct"]
    after, before = rep["hours_after"], rep["hours_before"]
    total_before = sum(before.values())
    share = {k: v / rep["selected_hours"] for k, v in after.items()}
    for lang in ("en", "vi"):
        assert before[lang] / total_before > 1.5 * share[lang]  # down-weighted
    assert before["en"] == pytest.approx(table["en"] / SCALE, rel=1e-3)
    assert 0 < after["mk"] <= before["mk"] and share["mk"] > 20 * before["mk"] / total_before
    # the per-language table a reader checks by hand: table hours, share, before, after
    row = rep["languages"]["mk"]
    assert row["table_hours"] == table["mk"] and row["hours_before"] == before["mk"]
    assert row["hours_after"] == after["mk"] and row["share"] == pytest.approx(rep["language_shares"]["mk"])
    # `uz` (not in the table) is scaled by the table/indices ratio of the listed languages
    assert rep["unlisted_languages"] == ["uz"] and rep["unlisted_scale"] == pytest.approx(SCALE, rel=0.01)
    assert rep["languages"]["uz"]["table_hours"] == pytest.approx(table["de"], rel=0.01)
    assert abs(after["uz"] - after["de"]) <= 2 * 10 / 3600


# --- language choice, shortfall reasons, splits, reproducible report ------------------------

def test_language_choice_and_exclusion(index_dir, tmp_path):
    chunks, rep = _select(index_dir, tmp_path, "l1", languages=["en", "fr"], hours=0.3)
    assert {c["language"] for c in chunks} == {"en", "fr"}
    assert rep["languages_chosen"] == ["en", "fr"]
    assert rep["skipped"]["counts"]["language_not_chosen"] > 0
    chunks, rep = _select(index_dir, tmp_path, "l2", exclude_languages=["en"], hours=0.3)
    assert {c["language"] for c in chunks} == {"es", "fr", "yo"}
    assert rep["config"]["exclude_languages"] == ["en"]


@pytest.mark.parametrize("kw, message", [
    ({"languages": ["xx"]}, r"select.languages\[0\] must be a Whisper language code"),
    ({"exclude_languages": ["en", "nospeech"]}, r"select.exclude_languages\[1\] must be a Whisper"),
    ({"languages": []}, "select.languages must be all or a non-empty list"),
    ({"languages": ["en"], "exclude_languages": ["en"]}, "select.exclude_languages must not repeat"),
])
def test_bad_language_choice_fails_naming_the_parameter(kw, message):
    from ups.config import ConfigError, from_dict

    with pytest.raises(ConfigError, match=message):
        from_dict(SelectConfig, kw, "select")


@pytest.mark.parametrize("kw, binding, names", [
    ({"hours": 500.0}, "eligible_files", "whole 10 s chunks"),
    ({"hours": 10.0, "min_speech_ratio": 1.0}, "min_speech_ratio", "min_speech_ratio 1"),
    ({"hours": 2.0, "max_file_fraction": 0.001}, "caps", "max_file_fraction"),
    ({"hours": 2.0, "max_tars": 1}, "max_tars", "max_tars 1"),
    ({"hours": 1.0, "languages": ["yo"]}, "languages", "select.languages"),
])
def test_shortfall_names_the_binding_constraint(index_dir, tmp_path, kw, binding, names):
    _, rep = _select(index_dir, tmp_path, "sf", **kw)
    s = rep["shortfall"]
    assert not rep["target_reached_within_1pct"] and s["binding"] == binding
    assert names in rep["shortfall_reason"]
    # the hours after each limit, in order; the binding one is the first below the target
    order = ["eligible_hours", "candidate_hours", "after_caps_hours", "within_download_limit_hours"]
    h = [s[k] for k in order]
    assert h == sorted(h, reverse=True) and h[-1] == pytest.approx(rep["selected_hours"], abs=1e-9)
    names_order = ["languages" if "languages" in kw else "eligible_files", "min_speech_ratio", "caps",
                   "max_tars"]
    assert f"{s[order[names_order.index(binding)]]:.3f} h" in rep["shortfall_reason"]
    if binding != "languages":
        assert "select.languages" not in rep["shortfall_reason"]


def test_reached_target_has_no_shortfall(index_dir, tmp_path):
    _, rep = _select(index_dir, tmp_path, "ok")
    assert rep["target_reached_within_1pct"] and rep["shortfall"] is None and rep["shortfall_reason"] is None


def test_eval_and_valid_splits_hold_whole_files_and_their_fractions(index_dir, tmp_path):
    chunks, rep = _select(index_dir, tmp_path, "ev", hours=2.0, eval_fraction=0.1, valid_fraction=0.1,
                          max_file_fraction=0.02)
    by_file: dict = {}
    for c in chunks:
        by_file.setdefault((c["tar"], c["key"]), set()).add(c["split"])
    assert all(len(s) == 1 for s in by_file.values())  # no file in two splits
    h = 10 / 3600
    for lang in ("en", "es", "fr", "yo"):
        rows = [c for c in chunks if c["language"] == lang]
        per_file: dict = {}
        for c in rows:
            per_file[(c["tar"], c["key"])] = per_file.get((c["tar"], c["key"]), 0) + 1
        biggest = max(per_file.values()) * h
        for split in ("valid", "eval"):
            held = sum(c["split"] == split for c in rows) * h
            assert held <= 0.1 * len(rows) * h + biggest, (lang, split)
            assert rep["languages"][lang][f"{split}_hours"] == pytest.approx(held)
    assert sum(c["split"] == "eval" for c in chunks) * h == pytest.approx(rep["split_hours"]["eval"])
    assert rep["split_hours"]["eval"] > 0 and rep["split_hours"]["valid"] > 0
    assert sum(rep["split_hours"].values()) == pytest.approx(rep["selected_hours"])


def test_rerun_writes_identical_bytes(index_dir, tmp_path):
    _select(index_dir, tmp_path, "r1")
    _select(index_dir, tmp_path, "r2")
    for name in ("chunks.parquet", "report.json", "hours_per_language.png"):
        assert (tmp_path / "r1" / name).read_bytes() == (tmp_path / "r2" / name).read_bytes(), name


@pytest.mark.parametrize("fetch", ["tars", "members"])
def test_a_target_beyond_the_data_takes_all_that_the_caps_allow(index_dir, tmp_path, fetch):
    # The tar choice stopped once what was left to take fell under 0.5 % of select.hours; with a
    # target 300x the data, that was true before the first tar, and nothing was selected.
    cfg = dataclasses.replace(BASE, hours=300.0)
    select.run(cfg, index_dir=index_dir, out_dir=tmp_path / fetch, fetch=fetch)
    rep = read_json(tmp_path / fetch / "report.json")
    s = rep["shortfall"]
    assert s["binding"] == "eligible_files" and s["after_caps_hours"] > 0.5
    assert rep["selected_hours"] == pytest.approx(s["after_caps_hours"], rel=0.01)


def test_a_target_of_a_fraction_of_a_chunk_blames_whole_chunks_not_a_limit(index_dir, tmp_path):
    _, rep = _select(index_dir, tmp_path, "tiny", hours=0.004)  # 1.44 chunks of 10 s
    assert rep["shortfall"]["binding"] == "whole_chunks"
    assert "select.max_tars" not in rep["shortfall_reason"] and "whole 10 s chunks" in rep["shortfall_reason"]
