from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from ups.config import (
    ConfigError,
    DatasetConfig,
    SelectConfig,
    from_dict,
    load_params,
    load_section,
)

REPO = Path(__file__).resolve().parents[1]


def _write(tmp_path: Path, data: dict) -> Path:
    p = tmp_path / "params.yaml"
    p.write_text(yaml.safe_dump(data))
    return p


def test_repo_params_load_for_every_section():
    params = load_params(REPO / "params.yaml")
    ds = load_section(DatasetConfig, "dataset", REPO / "params.yaml")
    assert ds.source in ("local", "hub")
    assert "select" in params and load_section(SelectConfig, "select", REPO / "params.yaml").hours > 0


def test_unknown_key_is_named(tmp_path):
    p = _write(tmp_path, {"select": {"hours": 5, "hourz": 3}})
    with pytest.raises(ConfigError, match=r"select\.hourz is not a known parameter"):
        load_section(SelectConfig, "select", p)


def test_wrong_type_is_named(tmp_path):
    p = _write(tmp_path, {"select": {"hours": "many"}})
    with pytest.raises(ConfigError, match=r"select\.hours must be a number, got 'many'"):
        load_section(SelectConfig, "select", p)


def test_bool_is_not_a_number():
    with pytest.raises(ConfigError, match=r"select\.hours must be a number"):
        from_dict(SelectConfig, {"hours": True}, "select")


def test_range_checked_in_post_init():
    with pytest.raises(ConfigError, match=r"select\.hours must be > 0, got -5"):
        from_dict(SelectConfig, {"hours": -5}, "select")


def test_int_is_accepted_as_float():
    cfg = from_dict(SelectConfig, {"hours": 3}, "select")
    assert cfg.hours == 3.0 and isinstance(cfg.hours, float)


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match=r"dataset\.source is missing"):
        from_dict(DatasetConfig, {}, "dataset")


def test_literal_is_checked():
    base = load_params(REPO / "params.yaml")["dataset"] | {"source": "ftp"}
    with pytest.raises(ConfigError, match=r"dataset\.source must be one of 'local', 'hub'"):
        from_dict(DatasetConfig, base, "dataset")


def test_missing_section_and_file(tmp_path):
    p = _write(tmp_path, {"other": {}})
    with pytest.raises(ConfigError, match="no section 'select'"):
        load_section(SelectConfig, "select", p)
    with pytest.raises(ConfigError, match="not found"):
        load_section(SelectConfig, "select", tmp_path / "nope.yaml")


def test_configs_are_frozen():
    cfg = from_dict(SelectConfig, {"hours": 1}, "select")
    with pytest.raises(AttributeError):
        cfg.hours = 2  # type: ignore[misc]


@pytest.mark.parametrize(("key", "value", "message"), [
    ("api_calls_per_5min", 0, "must be >= 1"), ("resolves_per_5min", -3, "must be >= 1"),
    ("header_walks", 0, r"must be in \[1, 4096\]"), ("header_walks", 10_000, r"must be in \[1, 4096\]")])
def test_hub_budgets_and_walks_are_checked(key, value, message):
    base = load_params(REPO / "params.yaml")["dataset"] | {key: value}
    with pytest.raises(ConfigError, match=rf"dataset\.{key} {message}, got {value}"):
        from_dict(DatasetConfig, base, "dataset")
    ok = from_dict(DatasetConfig, load_params(REPO / "params.yaml")["dataset"], "dataset")
    assert (ok.api_calls_per_5min, ok.resolves_per_5min) == (500, 2500)  # half a free account's
