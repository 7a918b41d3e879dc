"""File keys and tar numbers: one normal form, used by every join (VAD, LID, tar members).

The same audio file is named three ways in UPS: the VAD key `<item>/<file>` (no extension,
JSON-escaped, possibly percent-encoded), the LID path `/data/<item>/<file>.mp3`, and the tar
member `<item>/<file>.mp3`. Joining on basenames collides (one tar can hold `a/x.mp3` and
`b/x.mp3`), so everything is joined on `normalize_key`, which maps all three to one string.
"""

from __future__ import annotations

import re
import unicodedata
from urllib.parse import unquote

_PCT = re.compile(r"%[0-9A-Fa-f]{2}")
TAR_SPLIT = 5000  # tars numbered above this live under audio2/


def normalize_key(raw: str) -> str:
    """Canonical key `<item>/<file>`: no `/data/` prefix, no `.mp3`, percent-decoded, NFC.

    Percent-decoding applies only where the string holds valid escapes that decode to UTF-8, so a
    literal `%` in a name (`100% live`) survives. Both sides of a join go through this function,
    so a name that differs only by encoding maps to one key.
    """
    s = raw.strip()
    if s.startswith("/data/"):
        s = s[len("/data/"):]
    s = s.lstrip("/")
    if s.lower().endswith(".mp3"):
        s = s[:-4]
    if _PCT.search(s):
        try:
            s = unquote(s, encoding="utf-8", errors="strict")
        except UnicodeDecodeError:
            pass
    return unicodedata.normalize("NFC", s)


def parse_tar_number(value: str | int) -> int:
    """`"000123"` or `123` -> 123; raises ValueError for anything else (negative, text, float)."""
    if isinstance(value, bool):
        raise ValueError(f"not a tar number: {value!r}")
    if isinstance(value, int):
        n = value
    elif isinstance(value, str) and value.strip().isdigit():
        n = int(value.strip())
    else:
        raise ValueError(f"not a tar number: {value!r}")
    if n < 0:
        raise ValueError(f"not a tar number: {value!r}")
    return n


def tar_path(tar_number: int) -> str:
    """Path of a tar inside the dataset repo: `audio/` up to 5000, `audio2/` above."""
    n = parse_tar_number(tar_number)
    folder = "audio" if n <= TAR_SPLIT else "audio2"
    return f"{folder}/{n:06d}.tar"
