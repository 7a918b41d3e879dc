"""`ups report`: one HTML page from whatever a run has, saying what did not run."""

from __future__ import annotations

from ups import html_report


def test_report_on_an_empty_run_says_not_run(tmp_path):
    page = html_report.build(tmp_path)
    for what in ("selection", "k-means", "training", "evaluation"):
        assert f"{what}" in page
    assert page.count(": not run") == 4
    assert "<img" not in page


def test_nested_metrics_flatten_to_dotted_keys():
    assert html_report.flatten({"masked": {"acc": 0.5, "by": {"en": 1}}, "n": 3}) == {
        "masked.acc": 0.5, "masked.by.en": 1, "n": 3}
