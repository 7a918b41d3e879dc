"""Hours of speech per language: the table shipped with the package, or recomputed from indices.

The shipped `ups/shipped/lang_speech_hours.json` holds the dataset's own statistics (hours of speech
per Whisper code, as published with the origin pipeline; see its `_source`). `compute_hours`
recomputes such a table from the VAD and LID indices (speech seconds of each file summed per
predicted language, `nospeech` and non-language labels left out): `select.hours_table: computed`
uses it and select's report stores it as `language_hours_computed`.

A language the table lacks (`select.unlisted_language: indices`) gets its indexed hours scaled
by how much bigger the table is than the indices over the languages both know
(`fill_unlisted`): on a partial mirror holding a tenth of the dataset, such a language counts ten
times its indexed hours, like every listed language does. So it never vanishes (its raw indexed
hours against full-dataset figures would make it look tiny) and is never treated as the rarest.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from ups.languages import is_language


def load_shipped() -> dict[str, float]:
    """The packaged table: {language code: hours of speech}."""
    text = resources.files("ups").joinpath("shipped/lang_speech_hours.json").read_text("utf-8")
    return {k: float(v) for k, v in json.loads(text)["hours"].items()}


def compute_hours(speech_s: np.ndarray, language: np.ndarray) -> dict[str, float]:
    """Sum of speech hours per language over files (arrays aligned; language None if unlabelled)."""
    out: dict[str, float] = {}
    langs = np.asarray(language, dtype=object)
    for lang in sorted({x for x in langs.tolist() if is_language(x)}):
        out[lang] = float(np.asarray(speech_s)[langs == lang].sum() / 3600.0)
    return out


def fill_unlisted(table: dict[str, float], computed: dict[str, float],
                  languages: list[str]) -> tuple[dict[str, float], float]:
    """`table` plus every language of `languages` it lacks, at computed hours x ratio, where
    ratio = (table hours) / (indexed hours) summed over the listed languages present in the
    indices (1.0 when none is). Returns (filled table, ratio)."""
    listed = [x for x in languages if x in table and computed.get(x, 0.0) > 0]
    indexed = sum(computed[x] for x in listed)
    ratio = sum(table[x] for x in listed) / indexed if indexed > 0 else 1.0
    out = dict(table)
    for x in languages:
        if x not in table:
            out[x] = computed.get(x, 0.0) * ratio
    return out, ratio
