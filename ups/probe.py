"""Language-ID linear probe, as the UPS challenge baseline: pooled features -> logistic regression.

Each chunk becomes one vector (mean-pooled hidden states of one layer, or MFCC mean + std as a
control that carries language without any model); a standardised multinomial logistic regression
is fitted on the chunks of some files and scored (accuracy, macro-F1) on the chunks of other
files (evaluate picks both sides among held-out eval files). Pure functions: no disk, no model.

Chance: `chance_uniform` = 1 / number of classes the probe can predict; `chance_majority` = the
test accuracy of always answering the most frequent training language. A test language that no
training chunk has cannot be predicted: its chunks are dropped and counted (`test_unseen`), never
scored as errors of the probe. Macro-F1 averages over the languages present in the test set.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np

from ups.audio import from_int16
from ups.blas import fixed_blas
from ups.config import MfccParams
from ups.mfcc import hubert_mfcc


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
