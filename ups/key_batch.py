"""`normalize_key` over many keys at once: Arrow proves which keys it leaves unchanged.

`ups.keys.normalize_key` stays the one definition of a key's normal form. For a key that is
pure ASCII, has no `%`, does not start with `/`, does not end with `.mp3` (any case) and has no
whitespace or control character at either end, `normalize_key` is the identity (NFC of ASCII is
ASCII; nothing to strip, decode or cut). Those keys (nearly all of UPS) are checked in bulk;
every other key goes through `normalize_key` itself.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ups.keys import normalize_key

_EDGE = r"^[\x00-\x20]|[\x00-\x20]$"


def needs_normalizing(keys: pa.Array) -> np.ndarray:
    """Boolean mask of the keys that `normalize_key` could change."""
    if len(keys) == 0:
        return np.zeros(0, dtype=bool)
    mask = pc.invert(pc.string_is_ascii(keys))
    mask = pc.or_(mask, pc.match_substring(keys, "%"))
    mask = pc.or_(mask, pc.starts_with(keys, "/"))
    mask = pc.or_(mask, pc.ends_with(keys, ".mp3", ignore_case=True))
    mask = pc.or_(mask, pc.match_substring_regex(keys, _EDGE))
    return mask.to_numpy(zero_copy_only=False)


def normalize_keys(raw: list[str]) -> list[str]:
    """`[normalize_key(k) for k in raw]`, computed without a Python call for unchanged keys."""
    arr = pa.array(raw, type=pa.string())
    out = list(raw)
    for i in np.flatnonzero(needs_normalizing(arr)):
        out[i] = normalize_key(raw[i])
    return out


def normalize_keys_arrow(raw: pa.Array) -> pa.Array:
    """`normalize_keys` for an Arrow string array, returned as one."""
    mask = needs_normalizing(raw)
    if not mask.any():
        return raw
    fixed = [normalize_key(x) for x in raw.filter(pa.array(mask)).to_pylist()]
    return pc.replace_with_mask(raw, pa.array(mask), pa.array(fixed, pa.string()))
