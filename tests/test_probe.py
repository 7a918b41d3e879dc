"""The LID probe: pure pieces on synthetic data, and the MFCC control on the bundled sample corpus."""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict

import numpy as np
import pytest

from ups.audio import decode_mono_16k, to_int16
from ups.probe import chance_levels, fit_probe, mean_pool, mfcc_stats

CHUNK = 5 * 16000


def test_mean_pool_and_mfcc_stats_shapes():
    h = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    assert np.allclose(mean_pool(h), h.mean(axis=1))
    pcm = (np.sin(np.arange(16000) / 5) * 8000).astype(np.int16)
    s = mfcc_stats(pcm)
    assert s.shape == (78,) and np.isfinite(s).all()
    assert mfcc_stats(pcm[:100]).shape == (78,)  # shorter than one frame: zeros, no crash


def test_chance_levels_report_uniform_and_majority():
    c = chance_levels(["a", "a", "a", "b"], ["a", "b", "b", "b"])
    assert c["chance_uniform"] == 0.5
    assert c["chance_majority"] == 0.25 and c["majority_language"] == "a"


def test_probe_separates_separable_classes_and_drops_unseen_languages():
    rng = np.random.default_rng(0)
    centres = {"en": 0.0, "de": 3.0, "fr": -3.0}
    ytr = [lang for lang in centres for _ in range(30)]
    yte = [lang for lang in centres for _ in range(10)] + ["sw"] * 5
    xtr = np.array([[centres[y]] * 4 for y in ytr]) + rng.standard_normal((len(ytr), 4))
    xte = np.array([[centres.get(y, 0.0)] * 4 for y in yte]) + rng.standard_normal((len(yte), 4))
    r = fit_probe(xtr, ytr, xte, yte)
    assert r["accuracy"] > 0.9 and r["macro_f1"] > 0.9
    assert r["test_unseen"] == 5 and r["n_test"] == 30
    assert r["chance_uniform"] == pytest.approx(1 / 3)


def test_probe_with_one_language_says_why():
    r = fit_probe(np.zeros((3, 2)), ["en"] * 3, np.zeros((2, 2)), ["en"] * 2)
    assert r["accuracy"] is None and "1 language" in r["reason"]


def _sample_chunks(sample_root, first_s: float = 60.0) -> dict[tuple[str, str], list[np.ndarray]]:
    """5 s chunks of the first `first_s` of every decodable speech file, by (LID label, file)."""
    manifest = json.loads((sample_root / "MANIFEST.json").read_text())
    lid = {(f["tar"], f["member"]): f["lid_label"] for f in manifest["files"]
           if f.get("in_tar") and f.get("decodable") and f.get("lid_label") not in (None, "nospeech")}
    out: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for tar in sorted(sample_root.glob("audio*/*.tar")):
        with tarfile.open(tar) as tf:
            for m in tf:
                label = lid.get((tar.stem, m.name))
                if label is None or not m.isfile():
                    continue
                pcm = to_int16(decode_mono_16k(tf.extractfile(m).read(), need_samples=int(first_s * 16000)))
                pcm = pcm[: int(first_s * 16000)]
                for s in range(0, len(pcm) - CHUNK + 1, CHUNK):
                    out[(label, m.name)].append(pcm[s:s + CHUNK])
    return out


def test_mfcc_control_separates_sample_languages_well_above_chance(sample_root):
    chunks = _sample_chunks(sample_root)
    feats = {k: [mfcc_stats(c) for c in v] for k, v in chunks.items()}
    files_of = defaultdict(list)
    for lang, name in sorted(feats):
        files_of[lang].append(name)
    assert len(files_of) >= 10

    # 1. split by file, as the challenge's LID split: the last file of each language with two or
    #    more files is held out (espeak voices, speeds and pitches vary per utterance, so this is hard)
    xtr, ytr, xte, yte = [], [], [], []
    for lang, names in files_of.items():
        for i, name in enumerate(names):
            test = len(names) >= 2 and i == len(names) - 1
            (xte if test else xtr).extend(feats[(lang, name)])
            (yte if test else ytr).extend([lang] * len(feats[(lang, name)]))
    r = fit_probe(np.array(xtr), ytr, np.array(xte), yte)
    assert r["n_test"] > 50 and len(r["languages_test"]) >= 8
    assert r["accuracy"] > 1.5 * max(r["chance_uniform"], r["chance_majority"]), r
    assert r["macro_f1"] > 2 * r["chance_uniform"], r

    # 2. split by time inside each file (first 60 % of a file's chunks fit, the rest score):
    #    every language is in the test set and the control is far above chance
    xtr, ytr, xte, yte = [], [], [], []
    for (lang, _), fs in sorted(feats.items()):
        cut = int(round(0.6 * len(fs)))
        xtr.extend(fs[:cut]), ytr.extend([lang] * cut)
        xte.extend(fs[cut:]), yte.extend([lang] * (len(fs) - cut))
    r = fit_probe(np.array(xtr), ytr, np.array(xte), yte)
    assert r["accuracy"] > 3 * max(r["chance_uniform"], r["chance_majority"]), r
    assert r["macro_f1"] > 4 * r["chance_uniform"], r
    # labels shuffled within the training set: the same probe falls to chance
    shuffled = list(np.random.default_rng(0).permutation(ytr))
    r0 = fit_probe(np.array(xtr), shuffled, np.array(xte), yte)
    assert r0["accuracy"] < r["accuracy"] / 2, (r0["accuracy"], r["accuracy"])
