"""A stage's report.json: the resolved config as a dict, the tally, the stage's own fields."""

from __future__ import annotations

from dataclasses import dataclass

from ups.atomic import read_json
from ups.skips import Skips
from ups.stage_report import write_report


@dataclass(frozen=True)
class _Cfg:
    hours: float = 1.5
    seed: int = 0


def test_the_report_holds_config_tally_and_fields(tmp_path):
    skips = Skips("select")
    skips.add("nospeech", n=3)
    write_report(tmp_path / "report.json", stage="select", config=_Cfg(), skips=skips, n_chunks=12,
                 languages=["en", "yo"])
    assert read_json(tmp_path / "report.json") == {
        "stage": "select", "config": {"hours": 1.5, "seed": 0}, "n_chunks": 12, "languages": ["en", "yo"],
        "skipped": {"counts": {"nospeech": 3}, "examples": {"nospeech": []}}}


def test_a_plain_dict_config_and_no_tally(tmp_path):
    write_report(tmp_path / "r.json", stage="index-members", config={"dataset": {"source": "local"}})
    want = {"stage": "index-members", "config": {"dataset": {"source": "local"}}}
    assert read_json(tmp_path / "r.json") == want
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]  # written atomically, nothing else
