"""The bad-input tally: counts by reason, a few examples each, merged across workers, logged once."""

from __future__ import annotations

import logging

from ups.skips import Skips


def test_counts_and_at_most_max_examples_per_reason():
    s = Skips("stage", max_examples=2)
    for i in range(4):
        s.add("corrupt_mp3", f"a/{i}.mp3")
    s.add("missing_vad", n=7)
    assert s.total == 11
    assert s.to_dict() == {"counts": {"corrupt_mp3": 4, "missing_vad": 7},
                           "examples": {"corrupt_mp3": ["a/0.mp3", "a/1.mp3"], "missing_vad": []}}


def test_merge_adds_counts_and_keeps_the_example_cap():
    a, b = Skips("s", max_examples=3), Skips("s", max_examples=3)
    a.add("x", "a1")
    a.add("x", "a2")
    b.add("x", "b1")
    b.add("x", "b2")
    b.add("y", "b3")
    a.merge(b)
    assert a.to_dict() == {"counts": {"x": 4, "y": 1}, "examples": {"x": ["a1", "a2", "b1"], "y": ["b3"]}}


def test_the_summary_names_each_reason_or_says_there_was_none(caplog):
    caplog.set_level(logging.INFO, logger="ups.skips")
    Skips("index-vad").log_summary()
    assert "index-vad: no bad input" in caplog.text
    s = Skips("index-vad")
    s.add("bad_duration", "k1")
    s.add("bad_duration", "k2", n=2)
    s.log_summary()
    assert "index-vad: skipped 3 item(s): bad_duration (e.g. k1; k2)" in caplog.text
