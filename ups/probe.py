"""Language-ID linear probe, as the UPS challenge baseline: pooled features -> logistic regression.

Each chunk becomes one vector (mean-pooled hidden states of one layer, or MFCC mean + std as a
control that carries language without any model); a standardised multinomial logistic regression
is fitted on the chunks of some files and scored (accuracy, macro-F1) on the chunks of other
files: evaluate picks both sides among held-out eval files (`probe_candidates`, `probe_split`:
whole files, per language, seeded). Pure functions (no disk), bar `probe_features`, the one that
runs the encoders over the chosen chunks.

Chance: `chance_uniform` = 1 / number of classes the probe can predict; `chance_majority` = the
test accuracy of always answering the most frequent training language. A test language that no
training chunk has cannot be predicted: its chunks are dropped and counted (`test_unseen`), never
scored as errors of the probe. Macro-F1 averages over the languages present in the test set.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import numpy as np

from ups.audio import from_int16
from ups.blas import fixed_blas
from ups.config import MfccParams
from ups.eval_chunks import MODELS, to_input
from ups.languages import is_language
from ups.mfcc import hubert_mfcc
from ups.skips import Skips


def mean_pool(hidden: np.ndarray) -> np.ndarray:
    """(B, T, D) or (T, D) frames -> (B, D) or (D,) mean over time, float64 accumulation."""
    return np.asarray(hidden, dtype=np.float64).mean(axis=-2).astype(np.float32)


def mfcc_stats(pcm: np.ndarray, spec: MfccParams | None = None) -> np.ndarray:
    """MFCC + deltas (39 dims at 50 Hz) of int16 PCM, summarised as mean and std: 78 float32."""
    spec = spec or MfccParams()
    x = from_int16(pcm) if pcm.dtype == np.int16 else np.asarray(pcm, dtype=np.float32)
    f = hubert_mfcc(x, spec).astype(np.float64)
    if len(f) == 0:
        return np.zeros(2 * 3 * spec.num_ceps, dtype=np.float32)
    return np.concatenate([f.mean(axis=0), f.std(axis=0)]).astype(np.float32)


def chance_levels(y_train: list[str], y_test: list[str]) -> dict[str, Any]:
    classes = sorted(set(y_train))
    if not classes or not y_test:
        return {"chance_uniform": None, "chance_majority": None, "majority_language": None}
    majority = Counter(y_train).most_common(1)[0][0]
    return {
        "chance_uniform": 1.0 / len(classes),
        "chance_majority": sum(y == majority for y in y_test) / len(y_test),
        "majority_language": majority,
    }


def fit_probe(
    x_train: np.ndarray,
    y_train: list[str],
    x_test: np.ndarray,
    y_test: list[str],
    *,
    c: float = 1.0,
    max_iter: int = 5000,
    seed: int = 0,
) -> dict[str, Any]:
    """Fit on train, score on test. Returns accuracy, macro_f1, counts and chance levels.

    With fewer than two training languages or no scorable test chunk, `accuracy` is None and
    `reason` says why."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    seen = set(y_train)
    keep = [i for i, y in enumerate(y_test) if y in seen]
    yt = [y_test[i] for i in keep]
    out: dict[str, Any] = {
        "n_train": len(y_train),
        "n_test": len(yt),
        "test_unseen": len(y_test) - len(keep),
        "languages_train": dict(sorted(Counter(y_train).items())),
        "languages_test": dict(sorted(Counter(yt).items())),
        **chance_levels(y_train, yt),
        "accuracy": None,
        "macro_f1": None,
    }
    if len(seen) < 2:
        out["reason"] = f"{len(seen)} language(s) in the probe's training chunks (need 2)"
        return out
    if not yt:
        out["reason"] = "no test chunk of a language seen in training"
        return out
    clf = make_pipeline(
        StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed)
    )
    with fixed_blas():  # one BLAS thread: the same figures for any thread count (ups.blas)
        clf.fit(np.asarray(x_train, dtype=np.float64), np.asarray(y_train))
        pred = clf.predict(np.asarray(x_test, dtype=np.float64)[keep])
    labels = sorted(set(yt))
    out["accuracy"] = float(accuracy_score(yt, pred))
    out["macro_f1"] = float(f1_score(yt, pred, labels=labels, average="macro", zero_division=0))
    out["n_iter"] = int(np.max(clf[-1].n_iter_))
    return out


# --- the probe of two encoders, layer by layer, on held-out files -------------------------------


def probe_candidates(rows: list[dict[str, Any]], lid_map: dict[tuple[int, str], tuple[str, str]],
                     skips: Skips) -> list[dict[str, Any]]:
    """Chunks whose file has a LID row with a language label (the probe's target), by chunk id."""
    cands = []
    for r in rows:
        hit = lid_map.get((r["tar"], r["key"]))
        if hit is None:
            skips.add("no_lid_row", r["key"])
        elif not is_language(hit[0]):
            skips.add("not_a_language", f"{r['key']} ({hit[0]})")
        else:
            cands.append({**r, "lid_language": hit[0]})
    return sorted(cands, key=lambda r: r["chunk_id"])


def probe_split(cands: list[dict[str, Any]], fraction: float, seed: int) -> np.ndarray:
    """True where a chunk's file is on the probe's scoring side: whole files, per language,
    `fraction` of each language's seconds, seeded (`ups.selection.hold_out_files`); a language
    with one file is only fitted on."""
    from ups.selection import hold_out_files

    files = {k: i for i, k in enumerate(sorted({(r["tar"], r["key"]) for r in cands}))}
    file = np.array([files[(r["tar"], r["key"])] for r in cands], dtype=np.int64)
    lang = np.array([r["lid_language"] for r in cands], dtype=object)
    seconds = np.array([r["n_samples"] / 16000 for r in cands], dtype=np.float64)
    return hold_out_files(file, lang, seconds, fraction, np.random.default_rng([seed, 3]))


def probe_features(models: dict[str, Any], layers: list[int],
                   batches: Iterable[list[tuple[dict[str, Any], Any]]], normalize_audio: bool,
                   mfcc: MfccParams, device: Any) -> dict[int, dict[str, Any]]:
    """Per chunk id: its MFCC mean + std and, per model, the mean-pooled hidden states of
    `layers` (L, D): one forward per batch with output_hidden_states, eval mode, no masking."""
    import torch

    feats: dict[int, dict[str, Any]] = {}
    for batch in batches:
        x = torch.from_numpy(to_input([p for _, p in batch], normalize_audio)).to(device)
        pooled = {}
        with torch.inference_mode():
            for m in MODELS:
                hs = models[m](x, output_hidden_states=True).hidden_states
                pooled[m] = np.stack([mean_pool(hs[k].float().cpu().numpy()) for k in layers])  # (L, B, D)
        for j, (r, pcm) in enumerate(batch):
            feats[r["chunk_id"]] = {"mfcc": mfcc_stats(pcm, mfcc), **{m: pooled[m][:, j] for m in MODELS}}
    return feats


def score_probe(feats: dict[int, dict[str, Any]], chosen: list[dict[str, Any]], layers: list[int],
                *, c: float, max_iter: int, seed: int) -> dict[str, Any]:
    """The probe fitted on the chosen chunks off the scoring side (`probe_test` false) and scored
    on the others: the MFCC control and every layer of both models, with the files of each side."""
    used = [r for r in chosen if r["chunk_id"] in feats]
    fit = [r for r in used if not r["probe_test"]]
    test = [r for r in used if r["probe_test"]]
    y_fit = [r["lid_language"] for r in fit]
    y_test = [r["lid_language"] for r in test]

    def probe_of(get: Any) -> dict[str, Any]:
        xa = np.stack([get(feats[r["chunk_id"]]) for r in fit]) if fit else np.zeros((0, 1))
        xb = np.stack([get(feats[r["chunk_id"]]) for r in test]) if test else np.zeros((0, 1))
        return fit_probe(xa, y_fit, xb, y_test, c=c, max_iter=max_iter, seed=seed)

    out: dict[str, Any] = {"n_chunks": len(used), "files_fit": _file_names(fit),
                           "files_test": _file_names(test), "mfcc": probe_of(lambda f: f["mfcc"])}
    for m in MODELS:
        out[m] = {str(k): probe_of(lambda f, i=i, m=m: f[m][i]) for i, k in enumerate(layers)}
    return out


def _file_names(rows: list[dict[str, Any]]) -> list[str]:
    return sorted({f"{r['tar']:06d}/{r['key']}" for r in rows})


def probe_rows(probe: dict[str, Any], layers: list[int]) -> list[dict[str, Any]]:
    """One row per layer: both models' accuracy and macro-F1 beside the MFCC control and chance."""
    rows = []
    for k in layers:
        row: dict[str, Any] = {"layer": k}
        for m in MODELS:
            r = probe[m][str(k)]
            row[f"{m}_accuracy"] = r["accuracy"]
            row[f"{m}_macro_f1"] = r["macro_f1"]
        row["mfcc_accuracy"] = probe["mfcc"]["accuracy"]
        row["chance_majority"] = probe["mfcc"]["chance_majority"]
        rows.append(row)
    return rows


def probe_metrics(probe: dict[str, Any], layers: list[int]) -> dict[str, Any]:
    """The probe's summary for metrics.json: counts, chance levels, the MFCC control and, per
    model, the best layer (ties to the lower layer), its accuracy and every layer's."""
    mf = probe["mfcc"]
    out: dict[str, Any] = {
        "n_train": mf["n_train"], "n_test": mf["n_test"], "n_languages_train": len(mf["languages_train"]),
        "n_languages_test": len(mf["languages_test"]), "chance_uniform": mf["chance_uniform"],
        "n_files_fit": len(probe["files_fit"]),
        "n_files_test": len(probe["files_test"]),
        "chance_majority": mf["chance_majority"],
        "mfcc": {"accuracy": mf["accuracy"], "macro_f1": mf["macro_f1"]},
    }
    if probe.get("reason") or mf.get("reason"):
        out["reason"] = probe.get("reason") or mf["reason"]
    for m in MODELS:
        per = probe[m]
        acc = {k: per[str(k)]["accuracy"] for k in layers}
        f1 = {k: per[str(k)]["macro_f1"] for k in layers}
        scored = [k for k in layers if acc[k] is not None]
        best = max(scored, key=lambda k: (acc[k], -k)) if scored else None
        out[m] = {
            "best_layer": best,
            "best_accuracy": acc[best] if best is not None else None,
            "best_macro_f1": f1[best] if best is not None else None,
            "mean_accuracy": float(np.mean([acc[k] for k in scored])) if scored else None,
            "accuracy": {f"layer_{k}": acc[k] for k in layers},
            "macro_f1": {f"layer_{k}": f1[k] for k in layers},
        }
    return out
