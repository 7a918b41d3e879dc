"""Language labels of the UPS LID file: Whisper large-v3 codes, plus `nospeech`."""

from __future__ import annotations

NOSPEECH = "nospeech"

# Whisper large-v3 language codes (openai/whisper tokenizer.LANGUAGES, 100 codes).
WHISPER_CODES = frozenset("""
en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr
bg lt la mi ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn
yo so af oc ka be tg sd gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su
yue
""".split())


def is_language(label: str | None) -> bool:
    """True for a real language label: a Whisper code (not `nospeech`, not empty, not unknown)."""
    return label is not None and label in WHISPER_CODES
