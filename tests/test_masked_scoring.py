"""Masked-prediction scoring: the same masks for every model, figures from the summed terms, the
trained head refused on other labels, the trainer's logged losses read back."""

from __future__ import annotations

import numpy as np
import pytest

from tests.train_fixtures import write_corpus
from ups.config import TrainConfig
from ups.masked_scoring import chunk_mask, masked_figures, trained_head, trainer_losses
from ups.skips import Skips


def test_a_chunks_mask_depends_on_the_chunk_and_the_seed_only():
    train = TrainConfig()
    a = chunk_mask(7, 200, train, seed=1)
    assert a.dtype == bool and a.shape == (200,) and 0.3 < a.mean() < 0.8
    assert (a == chunk_mask(7, 200, train, seed=1)).all()
    assert not (a == chunk_mask(8, 200, train, seed=1)).all()
    assert not (a == chunk_mask(7, 200, train, seed=2)).all()


def test_figures_are_means_per_head_beside_chance():
    sums = {"init_fitted_head": np.array([6.0, 3.0, 1.0, 2.0, 1.0, 1.0])}
    out = masked_figures(sums, 4, 5, {"init_fitted_head": {"steps": 3}}, "no head.json beside the model")
    assert out["init_fitted_head"] == {"loss": 2.0, "acc": pytest.approx(1 / 3), "loss_unmasked": 2.0,
                                       "acc_unmasked": 1.0, "masked_fraction": 0.75}
    assert out["n_chunks"] == 4 and out["chance_loss"] == pytest.approx(np.log(5))
    assert out["trained_head_not_scored"] == "no head.json beside the model"
    assert "trained_head_not_scored" not in masked_figures({}, 0, 5, {}, None)


def test_trainer_losses_are_the_first_and_last_logged(tmp_path):
    assert trainer_losses(tmp_path) == {}
    tsv = tmp_path / "plots" / "metrics" / "train" / "loss.tsv"
    tsv.parent.mkdir(parents=True)
    tsv.write_text("step\tloss\n2\t3.5\n4\t2.25\n6\t1.5\n")
    assert trainer_losses(tmp_path) == {"train_first_logged_loss": 3.5, "train_first_logged_step": 2,
                                        "train_last_logged_loss": 1.5, "train_last_logged_step": 6}


def test_trained_head_on_other_labels_is_refused(tmp_path):
    from ups.hubert_model import ModelSetup, export, load_hubert
    from ups.pretraining import PretrainingHead, PretrainModel
    from ups.tiny_model import write_tiny_hubert
    from ups.train_data import labels_digest

    corpus = write_corpus(tmp_path / "data", n_train=4, n_valid=2, seconds=(1.0, 1.2))
    hubert, original = load_hubert(ModelSetup(str(write_tiny_hubert(tmp_path / "init")), 0.8, 10, 2,
                                              None, "sdpa"))
    out = tmp_path / "model"
    out.mkdir()
    skips = Skips("evaluate")
    head, note = trained_head(out, corpus["labels"], skips)
    assert head is None and note == "no head.json beside the model"
    export(PretrainModel(hubert, PretrainingHead(32, 5, final_dim=8)), original, out,
           {"labels_sha256": labels_digest(corpus["labels"])})
    head, note = trained_head(out, corpus["labels"], skips)
    assert head is not None and note is None
    p = corpus["labels"] / "valid" / "labels.npy"
    np.save(p, ((np.load(p) + 1) % 5).astype(np.int16))
    head, note = trained_head(out, corpus["labels"], skips)
    assert head is None and "other labels" in note
    assert skips.to_dict()["counts"] == {"no_trained_head": 1, "trained_head_other_labels": 1}
