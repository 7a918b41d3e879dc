"""model.npz: written and read back without pickle, fingerprinted, checked against the features now."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

from ups.centroids import check_model, check_precision, check_waveform, load_model, model_digest, write_model
from ups.config import FeaturesConfig
from ups.kmeans import Normaliser


def _written(tmp_path, **source):
    centroids = np.arange(6, dtype=np.float32).reshape(3, 2)
    features = FeaturesConfig(kind="mfcc")
    write_model(tmp_path / "model.npz", centroids, Normaliser.identity(2), features, source, n_clusters=3)
    return load_model(tmp_path / "model.npz")


def test_the_model_round_trips_with_what_it_was_fitted_on(tmp_path):
    m = _written(tmp_path)
    assert m["centroids"].tolist() == [[0, 1], [2, 3], [4, 5]] and m["centroids"].dtype == np.float32
    assert str(m["kind"]) == "mfcc" and int(m["layer"]) == 0 and int(m["n_clusters"]) == 3
    assert str(m["hubert_model"]) == "" and not bool(m["normalize_audio"])
    assert m["mean"].tolist() == [0, 0] and m["std"].tolist() == [1, 1]


def test_the_digest_follows_the_arrays_not_the_file(tmp_path):
    a = _written(tmp_path / "a")
    (tmp_path / "b").mkdir()
    b = _written(tmp_path / "b")
    assert model_digest(a) == model_digest(b)
    moved = {**a, "centroids": a["centroids"] + 1}
    assert model_digest(moved) != model_digest(a)
    assert model_digest({**a, "precision": np.array("bf16")}) != model_digest(a)


def test_centroids_of_other_features_waveform_or_precision_are_refused(tmp_path):
    (tmp_path / "m").mkdir()
    m = _written(tmp_path / "m", precision="bf16", normalize_audio=True)
    check_model(m, tmp_path, FeaturesConfig(kind="mfcc"), None)
    source = SimpleNamespace(name="facebook/hubert-base-ls960", pinned_revision="main")
    with pytest.raises(ValueError, match="fitted on mfcc features .* re-run fit-kmeans"):
        check_model(m, tmp_path, FeaturesConfig(kind="hubert"), source)
    check_waveform(m, tmp_path, True)
    with pytest.raises(ValueError, match="train.normalize_audio: true; it is now false"):
        check_waveform(m, tmp_path, False)
    check_precision(m, tmp_path, "bf16", allow_mismatch=False)
    check_precision(m, tmp_path, "fp32", allow_mismatch=True)
    with pytest.raises(ValueError, match="computed in bf16; features.precision resolves to fp32"):
        check_precision(m, tmp_path, "fp32", allow_mismatch=False)
