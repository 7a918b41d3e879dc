"""Hours of speech per language: the table shipped with the package, or recomputed from indices.

The shipped `ups/data/lang_speech_hours.json` is an estimate (see its `_source`);
`compute_hours` recomputes the table from the VAD and LID indices (speech seconds of each file
summed per predicted language, `nospeech` and non-language labels left out), which is what
`select.hours_table: computed` uses and what select's report stores as
`language_hours_computed`.
"""

from __future__ import annotations

import json
from importlib import resources

import numpy as np

from ups.languages import is_language


def load_shipped() -> dict[str, float]:
    """The packaged table: {language code: hours of speech}."""
    text = resources.files("ups").joinpath("data/lang_speech_hours.json").read_text("utf-8")
    return {k: float(v) for k, v in json.loads(text)["hours"].items()}


def compute_hours(speech_s: np.ndarray, language: np.ndarray) -> dict[str, float]:
    """Sum of speech hours per language over files (arrays aligned; language None if unlabelled)."""
    out: dict[str, float] = {}
    langs = np.asarray(language, dtype=object)
    for lang in sorted({x for x in langs.tolist() if is_language(x)}):
        out[lang] = float(np.asarray(speech_s)[langs == lang].sum() / 3600.0)
    return out
