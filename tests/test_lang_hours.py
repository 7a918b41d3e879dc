"""The shipped hours table (the dataset's statistics) and the rule for languages it lacks."""

from __future__ import annotations

import json
from importlib import resources

import numpy as np
import pytest

from ups import lang_hours
from ups import selection as sel
from ups.languages import WHISPER_CODES


def test_shipped_table_is_the_datasets_statistics():
    raw = json.loads(resources.files("ups").joinpath("shipped/lang_speech_hours.json").read_text("utf-8"))
    assert "estimate" not in raw["_source"].lower() and "origin pipeline" in raw["_source"]
    t = lang_hours.load_shipped()
    assert len(t) == 89 and set(t) <= WHISPER_CODES
    assert sum(t.values()) == pytest.approx(478_101.19, abs=0.05)
    assert raw["_total_hours"] == pytest.approx(sum(t.values()), abs=0.05)
    assert (t["en"], t["vi"], t["es"], t["ar"], t["de"], t["fr"]) == (
        244436.82, 87138.91, 51091.65, 29670.03, 9044.69, 5686.34)
    for code in ("kn", "ne", "te", "cy", "is", "mt", "ht"):  # missing from the former estimate
        assert t[code] > 0
    assert min(t, key=t.get) == "oc" and t["oc"] == 0.10


def test_full_size_temperature_moves_hours_from_en_and_vi_to_the_tail():
    # availability = the whole dataset's hours: 100 h chosen by quotas at alpha 0.5
    t = lang_hours.load_shipped()
    codes = sorted(t)
    n = np.array([t[c] for c in codes])
    q = sel.water_fill(sel.temperature_shares(n, 0.5), n, 100.0)
    natural = n / n.sum()
    got = dict(zip(codes, (q / q.sum()).tolist(), strict=True))
    nat = dict(zip(codes, natural.tolist(), strict=True))
    assert got["en"] < nat["en"] / 2.5 and got["vi"] < nat["vi"] / 1.5
    small = [c for c in codes if t[c] < 10]
    assert small == sorted(["mk", "mn", "yue", "et", "be", "ht", "as", "fo", "oc"])
    assert all(got[c] > 20 * nat[c] for c in small)
    assert q.sum() == pytest.approx(100.0)


def test_a_language_missing_from_the_table_is_scaled_like_the_listed_ones():
    # the indices hold 1/100 of each listed language's table hours (a partial mirror);
    # `uz` is not in the table and has as many indexed hours as `de`
    table = {"en": 1000.0, "de": 100.0, "mk": 5.0}
    computed = {"en": 10.0, "de": 1.0, "mk": 0.05, "uz": 1.0}
    filled, ratio = lang_hours.fill_unlisted(table, computed, ["de", "en", "mk", "uz"])
    assert ratio == pytest.approx(100.0)
    assert filled["uz"] == pytest.approx(100.0) == filled["de"]
    assert {k: filled[k] for k in table} == table  # listed languages keep the table's figure
    shares = sel.temperature_shares(np.array([filled[c] for c in ("de", "en", "mk", "uz")]), 0.5)
    assert shares[3] == pytest.approx(shares[0]) and shares[3] > shares[2]  # not vanished, not "rarest"
    # no listed language in the indices: indexed hours as they are (ratio 1)
    filled, ratio = lang_hours.fill_unlisted(table, {"uz": 2.0}, ["uz"])
    assert ratio == 1.0 and filled["uz"] == 2.0
