"""JSONL lines for the parser and bad-input tests: valid VAD / LID lines by index, and a hypothesis
strategy of lines that must be counted as bad (truncated valid lines, garbage text and bytes, JSON
that is not an object)."""

from __future__ import annotations

import orjson
from hypothesis import strategies as st


def vad_line(i: int) -> bytes:
    return orjson.dumps({f"item{i}/f{i}.x": {"tar_number": f"{i % 7 + 1:06d}", "duration": 12.5,
                         "timestamps": [{"start": 0, "end": 16000 * (i % 5 + 1)}]}})


def lid_line(i: int) -> bytes:
    return orjson.dumps({"tar_number": f"{i % 7 + 1:06d}", "filepath": f"/data/item{i}/f{i}.x.mp3",
                         "prediction": ["en", "sw", "de"][i % 3]})


_text = st.text(st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
                min_size=1, max_size=80).filter(lambda s: s.strip() and not s.strip().startswith("{"))


def bad_lines(valid: st.SearchStrategy[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(
        valid.flatmap(lambda v: st.integers(1, len(v) - 1).map(lambda n: v[:n])),  # truncated
        _text.map(str.encode),                                                        # garbage
        st.binary(min_size=1, max_size=60).filter(
            lambda b: b"\n" not in b and b"\r" not in b and b.strip() and not b.strip().startswith(b"{")),
        st.one_of(st.integers(-2**63, 2**63 - 1), st.lists(st.integers(-2**31, 2**31), max_size=3),
                  st.just(None), st.booleans(),
                  st.floats(allow_nan=False, allow_infinity=False)).map(orjson.dumps),
    )
