"""select with dataset.fetch members: a download budget instead of the tar limit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.stages import test_select as _base
from ups import member_selection as msel
from ups.atomic import read_json
from ups.config import SelectConfig
from ups.stages import select

index_dir = _base.index_dir  # the same 400-file VAD/LID fixture as the tar-limited tests

BASE = SelectConfig(hours=1.0, max_tars=2, max_file_fraction=0.2, max_tar_fraction=1.0,
                    valid_fraction=0.2, hours_table="computed", alpha=0.3, max_download_gb=0.0)


def _select(index_dir, tmp_path, name, fetch, **kw):
    cfg = dataclasses.replace(BASE, **kw)
    select.run(cfg, index_dir=index_dir, out_dir=tmp_path / name, fetch=fetch)
    return (pq.read_table(tmp_path / name / "chunks.parquet").to_pylist(),
            read_json(tmp_path / name / "report.json"))


def _imbalance(rep) -> float:
    """Largest gap between a language's share of the selected hours and its temperature share."""
    total = sum(rep["hours_after"].values())
    return max(abs(rep["hours_after"][k] / total - p) for k, p in rep["language_shares"].items())


def test_members_replace_the_tar_limit_and_balance_better(index_dir, tmp_path):
    _, by_tars = _select(index_dir, tmp_path, "t", "tars")
    chunks, by_members = _select(index_dir, tmp_path, "m", "members")
    assert by_tars["n_tars"] == 2 and by_members["n_tars"] > 2  # max_tars applies to tars only
    assert by_members["target_reached_within_1pct"]
    assert _imbalance(by_members) < _imbalance(by_tars)
    for rep, fetch in ((by_tars, "tars"), (by_members, "members")):
        d = rep["download"]
        assert d["fetch"] == fetch
        assert 0 < d["members"]["bytes_estimate"] < d["tars"]["bytes_estimate"]
        assert d["members"]["n_files"] == len({(c["tar"], c["key"]) for c in (
            chunks if fetch == "members" else pq.read_table(tmp_path / "t" / "chunks.parquet").to_pylist())})
    assert by_members["download"]["limit"] == {"max_download_gb": 0.0, "budget_bound": False,
                                               "hours_scale": 1.0}
    # a member estimate is the chosen files' audio at mp3_bytes_per_second
    assert by_members["download"]["members"]["bytes_estimate"] == pytest.approx(
        by_members["download"]["members"]["audio_hours"] * 3600 * BASE.mp3_bytes_per_second, rel=1e-6)


def test_budget_binds_hours_fall_short_balance_is_kept(index_dir, tmp_path):
    _, free = _select(index_dir, tmp_path, "f", "members")
    budget_gb = 0.5 * free["download"]["members"]["bytes_estimate"] / 1e9
    _, tight = _select(index_dir, tmp_path, "b", "members", max_download_gb=budget_gb)
    assert tight["download"]["members"]["bytes_estimate"] <= budget_gb * 1e9
    assert tight["selected_hours"] < 0.9 * free["selected_hours"]
    assert not tight["target_reached_within_1pct"]
    assert "select.max_download_gb" in tight["shortfall_reason"]
    limit = tight["download"]["limit"]
    assert limit["budget_bound"] and 0 < limit["hours_scale"] < 1
    # every language shrinks with the target: shares stay close to the unbounded selection's
    for k, h in free["hours_after"].items():
        assert tight["hours_after"][k] / tight["selected_hours"] == pytest.approx(
            h / free["selected_hours"], abs=0.05)


def test_members_selection_is_deterministic(index_dir, tmp_path):
    a, _ = _select(index_dir, tmp_path, "a", "members")
    b, _ = _select(index_dir, tmp_path, "b2", "members")
    assert a == b and len(a) == 360


def test_files_with_more_chunks_per_byte_first():
    # language 0: file 0 (2 chunks, 100 B), file 1 (5 chunks, 100 B), file 2 (5 chunks, 500 B)
    lang = np.array([0, 0, 0, 1])
    count = np.array([2, 5, 5, 3])
    nbytes = np.array([100.0, 100.0, 500.0, 50.0])
    lay = msel.layout(lang, count, nbytes, np.zeros(4), np.arange(4) / 10, 2)
    assert lay.files.tolist() == [1, 0, 2, 3]
    assert msel.prefix_lengths(lay, np.array([6, 1])).tolist() == [2, 1]  # files 1 and 0
    assert msel.bytes_needed(lay, np.array([2, 1])) == 250.0
    shares = np.array([0.5, 0.5])
    avail = np.array([12, 3]) * (10 / 3600)
    free = msel.fit_budget(lay, shares, avail, 8 * 10 / 3600, 10 / 3600, 0)
    assert free.scale == 1.0 and free.n_chunks.sum() == 8
    assert free.files.tolist() == [1, 3] and free.bytes == 150.0  # 5 + 3 chunks from 2 files
    tight = msel.fit_budget(lay, shares, avail, 8 * 10 / 3600, 10 / 3600, 120)
    assert tight.scale < 1.0 and tight.bytes <= 120 and tight.n_chunks.sum() < 8
    keep = msel.pick(np.array([0, 0, 0, 1]), np.array([0, 0, 0, 0]), np.array([0.9, 1.0, 0.8, 1.0]),
                     np.array([2, 1]))
    assert keep.tolist() == [True, True, False, True]


def test_max_download_gb_is_validated():
    from ups.config import ConfigError

    with pytest.raises(ConfigError, match="select.max_download_gb must be >= 0"):
        SelectConfig(max_download_gb=-1.0)



def test_dataset_fetch_is_validated_by_name():
    import yaml

    from tests.stages.conftest import REPO
    from ups.config import ConfigError, DatasetConfig, from_dict

    section = yaml.safe_load((REPO / "params.yaml").read_text())["dataset"]
    assert from_dict(DatasetConfig, section, "dataset").fetch == "members"  # the default
    with pytest.raises(ConfigError, match="dataset.fetch must be one of 'members', 'tars', got 'bytes'"):
        from_dict(DatasetConfig, {**section, "fetch": "bytes"}, "dataset")
