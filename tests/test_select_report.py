"""select's report figures: the header walk a selection costs, the shortfall named."""

from __future__ import annotations

import numpy as np

from ups.config import SelectConfig
from ups.select_report import header_walk, shortfall


def test_header_read_size_is_the_member_walks_window():
    from ups.member_index import WINDOW
    from ups.select_report import HEADER_READ_BYTES

    assert HEADER_READ_BYTES == WINDOW


def test_the_header_walk_is_a_read_per_member_and_one_per_tar_the_longest_tar_in_sequence():
    walk = header_walk(np.array([250, 3, 1000]))
    assert walk["requests_estimate"] == 1253 + 3 and walk["bytes_estimate"] == 1256 * 2048
    assert walk["max_tar_requests"] == 1001 and walk["members_per_tar"] == 1253 / 3
    assert header_walk(np.zeros(0, dtype=np.int64))["requests_estimate"] == 0


def _hours(**kw):
    base = {"eligible_hours": 10.0, "eligible_speech_hours": 12.0, "candidate_hours": 9.0,
            "after_caps_hours": 8.0, "within_download_limit_hours": 7.0}
    return {**base, **kw}


def test_no_shortfall_within_one_percent_else_the_first_limit_below_the_target():
    cfg = SelectConfig(hours=5.0, max_tars=3)
    assert shortfall(cfg, 4.96, _hours(), 3, 1, 1, 0.0) is None
    short = shortfall(SelectConfig(hours=7.5, max_tars=3), 7.0, _hours(), 3, 1, 1, 0.0)
    assert short["binding"] == "max_tars" and "select.max_tars 3" in short["reason"]
    caps = shortfall(SelectConfig(hours=8.5), 8.0, _hours(), 3, 4, 9, 0.0)
    assert caps["binding"] == "caps" and "at most 4 chunk(s) per file" in caps["reason"]
    budget = shortfall(SelectConfig(hours=7.5), 7.0, _hours(), 3, 1, 1, 0.0, fetch="members",
                       budget_scale=0.93)
    assert budget["binding"] == "max_download_gb" and "93.0 %" in budget["reason"]
