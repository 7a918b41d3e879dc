"""Which LID labels are languages: Whisper large-v3 codes only."""

from __future__ import annotations

import pytest

from ups.languages import NOSPEECH, WHISPER_CODES, is_language


def test_the_whisper_code_set_is_whisper_large_v3s():
    assert len(WHISPER_CODES) == 100  # openai/whisper tokenizer.LANGUAGES at large-v3 (yue added)
    assert {"en", "yue", "haw", "jw", "ln"} <= WHISPER_CODES


@pytest.mark.parametrize("label, ok", [("en", True), ("yue", True), (NOSPEECH, False), ("", False),
                                       (None, False), ("EN", False), ("xx", False), ("en ", False)])
def test_is_language(label, ok):
    assert is_language(label) is ok
