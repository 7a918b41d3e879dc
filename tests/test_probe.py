"""The LID probe: pure pieces on synthetic data, and the MFCC control on the bundled sample corpus."""

from __future__ import annotations

import json
import tarfile
from collections import defaultdict

import numpy as np
import pytest

from ups.audio import decode_mono_16k, to_int16
from ups.probe import (
    chance_levels,
    fit_probe,
    mean_pool,
    mfcc_stats,
    probe_candidates,
    probe_metrics,
    probe_rows,
    probe_split,
    score_probe,
)
from ups.skips import Skips

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


def test_probe_split_is_by_file_stratified_and_seeded():
    rows = [{"chunk_id": c, "tar": 1, "key": f"f{c // 3}", "n_samples": 16000,
             "lid_language": "en" if (c // 3) % 2 else "de"} for c in range(60)]
    a = probe_split(rows, 0.5, seed=0)
    assert (a == probe_split(rows, 0.5, seed=0)).all()
    assert not (a == probe_split(rows, 0.5, seed=1)).all()
    for f in range(20):  # whole files
        assert len({bool(a[c]) for c in range(60) if c // 3 == f}) == 1
    for lang in ("en", "de"):  # stratified: half of each language's 10 files
        assert sum(bool(a[c]) for c in range(60) if rows[c]["lid_language"] == lang) == 15


def test_candidates_are_chunks_of_files_with_a_language_by_chunk_id():
    rows = [{"chunk_id": 5, "tar": 1, "key": "a"}, {"chunk_id": 2, "tar": 1, "key": "b"},
            {"chunk_id": 3, "tar": 2, "key": "a"}, {"chunk_id": 4, "tar": 1, "key": "c"}]
    lid = {(1, "a"): ("en", "train"), (1, "b"): ("nospeech", "train"), (2, "a"): ("de", "test")}
    skips = Skips("test")
    cands = probe_candidates(rows, lid, skips)
    assert [(r["chunk_id"], r["lid_language"]) for r in cands] == [(3, "de"), (5, "en")]
    assert skips.to_dict()["counts"] == {"not_a_language": 1, "no_lid_row": 1}


def _probed(n_files: int = 8) -> tuple[dict, list[int]]:
    """Two languages told apart by layer 1 only (layer 0 is noise); odd files are scored."""
    rng = np.random.default_rng(0)
    chosen, feats = [], {}
    for c in range(4 * n_files):
        f, lang = c // 4, "en" if (c // 4) % 2 else "de"
        chosen.append({"chunk_id": c, "tar": 0, "key": f"f{f}", "lid_language": lang,
                       "probe_test": f >= n_files // 2})
        sep = np.full(3, 3.0 if lang == "en" else -3.0) + rng.normal(0, 0.1, 3)
        layer = np.stack([rng.normal(0, 1, 3), sep])
        feats[c] = {"mfcc": rng.normal(0, 1, 4), "init": layer, "continued": layer}
    layers = [0, 1]
    probe = score_probe(feats, chosen + [{**chosen[0], "chunk_id": 999}], layers, c=1.0, max_iter=200, seed=0)
    return probe, layers


def test_the_probe_fits_on_one_side_and_scores_on_the_other_per_layer():
    probe, layers = _probed()
    assert probe["n_chunks"] == 32  # chunk 999 has no features: not used
    assert probe["files_fit"] == [f"000000/f{i}" for i in range(4)]
    assert probe["files_test"] == [f"000000/f{i}" for i in range(4, 8)]
    assert probe["mfcc"]["n_train"] == probe["mfcc"]["n_test"] == 16
    assert probe["continued"]["1"]["accuracy"] == 1.0
    m = probe_metrics(probe, layers)
    assert m["continued"]["best_layer"] == 1 and m["continued"]["best_accuracy"] == 1.0
    assert m["n_files_fit"] == 4 and m["n_languages_test"] == 2 and m["chance_uniform"] == 0.5
    assert m["init"]["accuracy"] == {"layer_0": probe["init"]["0"]["accuracy"], "layer_1": 1.0}
    rows = probe_rows(probe, layers)
    assert [r["layer"] for r in rows] == [0, 1] and rows[1]["continued_accuracy"] == 1.0
    assert rows[0]["mfcc_accuracy"] == probe["mfcc"]["accuracy"]


def test_the_best_layer_ties_to_the_lower_one_and_an_unscored_probe_says_why():
    same = {"accuracy": 0.5, "macro_f1": 0.4}
    mf = {"n_train": 2, "n_test": 0, "languages_train": {"en": 2}, "languages_test": {},
          "chance_uniform": None, "chance_majority": None, "accuracy": None, "macro_f1": None,
          "reason": "one language"}
    probe = {"files_fit": [], "files_test": [], "mfcc": mf, "init": {"0": same, "1": same},
             "continued": dict.fromkeys(("0", "1"), {"accuracy": None, "macro_f1": None})}
    m = probe_metrics(probe, [0, 1])
    assert m["init"]["best_layer"] == 0 and m["init"]["mean_accuracy"] == 0.5
    assert m["continued"]["best_layer"] is None and m["reason"] == "one language"
