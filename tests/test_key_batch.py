"""Bulk key normalisation equals `normalize_key` on every key, whichever path each key takes."""

from __future__ import annotations

import random

import pyarrow as pa

from ups.key_batch import needs_normalizing, normalize_keys, normalize_keys_arrow
from ups.keys import normalize_key

AWKWARD = ["item/file", "/data/item/a.mp3", "item/b.MP3", "item/100% live", "item/caf%C3%A9",
           " item/pad ", "item/tab\t", "ite\u0301m/nfd", "item/é", "item/x.mp3.mp3", "/lead/slash",
           "item/a.b.c", "", "item/%zz"]


def _fuzz(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    alphabet = "ab/.% \t3PMmé\u0301_-"
    return ["".join(rng.choice(alphabet) for _ in range(rng.randint(0, 12))) for _ in range(n)]


def test_the_bulk_path_equals_normalize_key_key_by_key():
    keys = AWKWARD + _fuzz(3000)
    want = [normalize_key(k) for k in keys]
    assert normalize_keys(keys) == want
    assert normalize_keys_arrow(pa.array(keys, pa.string())).to_pylist() == want


def test_only_keys_normalize_key_could_change_are_flagged():
    keys = AWKWARD + _fuzz(3000, seed=1)
    mask = needs_normalizing(pa.array(keys, pa.string()))
    changed = [normalize_key(k) != k for k in keys]
    assert all(m for m, c in zip(mask.tolist(), changed, strict=True) if c)  # nothing changed is missed
    assert not mask[0] and mask[1] and mask[2] and mask[5]  # a plain key takes the fast path


def test_an_array_without_awkward_keys_is_returned_as_is():
    arr = pa.array(["a/b", "c/d.wav", "e/f"], pa.string())
    assert normalize_keys_arrow(arr) is arr
    assert len(needs_normalizing(pa.array([], pa.string()))) == 0
