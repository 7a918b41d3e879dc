"""select with dataset.fetch members: a download budget instead of the tar limit."""

from __future__ import annotations

import dataclasses

import pyarrow.parquet as pq
import pytest

from ups.atomic import read_json
from ups.config import SelectConfig
from ups.stages import select

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
    limit = by_members["download"]["limit"]
    assert {k: limit[k] for k in ("max_download_gb", "budget_bound", "hours_scale", "balance_tolerance")} \
        == {"max_download_gb": 0.0, "budget_bound": False, "hours_scale": 1.0, "balance_tolerance": 0.0}
    assert by_members["n_tars"] <= limit["tars_opened"]
    assert limit["language_share_gap"] == pytest.approx(_imbalance(by_members))
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


# --- tars opened: the header walk reads one header per member of every tar touched ----------

CHUNK_H = 10 / 3600
DENSE = SelectConfig(hours=50 * CHUNK_H, max_file_fraction=1.0, max_tar_fraction=1.0,
                     hours_table="computed", valid_fraction=0.0, eval_fraction=0.0,
                     max_download_gb=0.0)


@pytest.fixture(scope="module")
def dense_and_spread(tmp_path_factory):
    """Tars 1 and 2 each hold 5 en and 5 es files of 55 s (25 candidates per language); tars
    3-22 each hold one en and one es file of 60 s: 6 candidates each, more chunks per byte."""
    from tests.stages.table_fixture import write_files

    layout = [(t, lang, 55.0) for t in (1, 2) for lang in ("en", "es") for _ in range(5)]
    layout += [(t, lang, 60.0) for t in range(3, 23) for lang in ("en", "es")]
    return write_files(tmp_path_factory.mktemp("dense"), layout)


def test_members_come_from_the_fewest_tars_that_meet_the_quotas(dense_and_spread, tmp_path):
    # 25 chunks per language: the files with most chunks per byte lie in tars 3-22, one per tar
    # and language (3 header reads per tar); tar 1 alone holds 25 candidates of each language
    select.run(DENSE, index_dir=dense_and_spread, out_dir=tmp_path / "m", fetch="members")
    rep = read_json(tmp_path / "m" / "report.json")
    assert rep["n_tars"] == 1 and rep["tars"] == [1]
    assert rep["hours_after"] == pytest.approx({"en": 25 * CHUNK_H, "es": 25 * CHUNK_H})
    assert rep["download"]["limit"]["tars_opened"] == 1
    assert rep["download"]["limit"]["language_share_gap"] == pytest.approx(0.0)
    walk = rep["download"]["members"]["header_walk"]  # tar 1 holds 10 files
    assert walk["requests_estimate"] == 11 and walk["bytes_estimate"] == 11 * 2048
    assert rep["download"]["members"]["n_files"] == 10


def test_a_tolerance_moves_each_share_by_at_most_itself(index_dir, tmp_path):
    _, exact = _select(index_dir, tmp_path, "e", "members")
    _, loose = _select(index_dir, tmp_path, "l", "members", balance_tolerance=0.2)
    assert loose["download"]["limit"]["tars_opened"] < exact["download"]["limit"]["tars_opened"]
    chunk_share = 1 / loose["n_chunks"]
    for lang, h in exact["hours_after"].items():
        assert abs(loose["hours_after"][lang] / loose["selected_hours"] - h / exact["selected_hours"]) \
            <= 0.2 + chunk_share


def test_balance_tolerance_is_validated():
    from ups.config import ConfigError

    with pytest.raises(ConfigError, match=r"select.balance_tolerance must be in \[0, 1\)"):
        SelectConfig(balance_tolerance=-0.1)
