"""The masked-prediction objective: the head, its loss and accuracy, and the model that masks."""

import pytest
import torch
import torch.nn.functional as F

from tests.train_fixtures import tiny_pretrain_model
from ups.hubert_model import ModelSetup, load_hubert
from ups.pretraining import PretrainingHead, PretrainModel, masked_prediction_sums, scored_weight
from ups.tiny_model import write_tiny_hubert


def test_cosine_head_logits_are_scaled_cosines():
    torch.manual_seed(0)
    head = PretrainingHead(8, 5, kind="cosine", final_dim=4, temperature=0.1)
    x = torch.randn(2, 3, 8)
    logits = head(x)
    assert logits.shape == (2, 3, 5)
    assert logits.abs().max() <= 10.0 + 1e-4
    p = head.final_proj(x)
    want = F.cosine_similarity(p[..., None, :], head.label_embs[None, None], dim=-1) / 0.1
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-4)


def test_linear_head():
    head = PretrainingHead(8, 5, kind="linear")
    assert head(torch.randn(1, 2, 8)).shape == (1, 2, 5)


def test_loss_counts_masked_real_frames_only():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 3, requires_grad=True)
    labels = torch.tensor([[0, 1, 2, 0], [1, 1, 1, 1]])
    mask = torch.tensor([[1, 0, 1, 1], [1, 1, 0, 1]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]], dtype=torch.bool)
    s = masked_prediction_sums(logits, labels, mask, valid)
    sel = mask & valid  # (0,0) (0,2) (0,3) (1,0) (1,1); (1,3) is padding though masked
    want = F.cross_entropy(logits[sel], labels[sel], reduction="sum")
    torch.testing.assert_close(s.objective, want)
    assert int(s.n_masked) == 5 and int(s.n_unmasked) == 1
    s.objective.backward()
    g = logits.grad.abs().sum(-1)
    assert (g[~sel] == 0).all() and (g[sel] > 0).all()  # unmasked and padded frames get no gradient
    assert scored_weight(int(s.n_masked), int(s.n_unmasked), 0.0) == 5.0


def test_unmasked_weight_adds_unmasked_real_frames():
    logits = torch.randn(1, 4, 3)
    labels = torch.tensor([[0, 1, 2, 0]])
    mask = torch.tensor([[1, 0, 0, 0]], dtype=torch.bool)
    valid = torch.tensor([[1, 1, 1, 0]], dtype=torch.bool)
    s = masked_prediction_sums(logits, labels, mask, valid, unmasked_weight=0.5)
    ce = F.cross_entropy(logits[0], labels[0], reduction="none")
    torch.testing.assert_close(s.objective, ce[0] + 0.5 * (ce[1] + ce[2]))
    assert scored_weight(int(s.n_masked), int(s.n_unmasked), 0.5) == 2.0


def test_accuracy_counts():
    logits = torch.zeros(1, 3, 2)
    logits[0, :, 1] = 1.0  # always predicts 1
    s = masked_prediction_sums(logits, torch.tensor([[1, 0, 1]]), torch.tensor([[True, True, False]]),
                               torch.ones(1, 3, dtype=torch.bool))
    assert int(s.correct_masked) == 1 and int(s.correct_unmasked) == 1


@pytest.mark.parametrize("kind", ["cosine", "linear"])
def test_head_logits_are_fp32_under_bf16_autocast(kind):
    # fairseq computes the logits in fp32; under autocast the projection and the cosine matmul
    # ran in bf16 (errors up to 0.06 on logits spanning +-10).
    torch.manual_seed(0)
    head = PretrainingHead(64, 100, kind=kind, final_dim=32, temperature=0.1)
    hidden = torch.randn(2, 50, 64)
    ref = head(hidden)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = head(hidden.to(torch.bfloat16))
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, head(hidden.to(torch.bfloat16).float()), rtol=1e-5, atol=1e-5)
    assert (got - ref).abs().max() < 0.05  # only the bf16 input's own rounding remains


def _encoder_inputs(model: PretrainModel, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = args[0].detach().clone()

    h = model.hubert.encoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(x, mask_time_indices=mask)
    finally:
        h.remove()
    return seen["x"]


def test_masked_positions_reach_encoder_as_mask_embedding(tmp_path):
    # With apply_spec_augment=False transformers ignores mask_time_indices: nothing is masked.
    model, original = tiny_pretrain_model(tmp_path, apply_spec_augment=False)
    assert original["apply_spec_augment"] is False
    assert model.hubert.config.apply_spec_augment is True
    assert model.hubert.config.mask_feature_prob == 0.0
    model.train()
    x = torch.randn(2, 16000)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, 5:15] = True
    mask[1, 30:40] = True
    enc = _encoder_inputs(model, x, mask)
    emb = model.hubert.masked_spec_embed.detach()
    assert torch.equal(enc[mask], emb.expand(int(mask.sum()), -1))
    # unmasked frames are the projected features, not the embedding, and the model adds no masks
    plain = _encoder_inputs(model, x, torch.zeros_like(mask))
    assert torch.equal(enc[~mask], plain[~mask])
    assert not torch.isclose(plain, emb).all(-1).any()


def test_eval_without_mask_masks_nothing(tmp_path):
    model, _ = tiny_pretrain_model(tmp_path)
    model.eval()
    x = torch.randn(1, 16000)
    enc = _encoder_inputs(model, x, None)
    feats = model.hubert.feature_projection(model.hubert.feature_extractor(x).transpose(1, 2))
    torch.testing.assert_close(enc, feats)


def test_feature_grad_scale_scales_cnn_gradients(tmp_path):
    model, _ = tiny_pretrain_model(tmp_path)
    model.train()
    x = torch.randn(1, 8000)
    grads = []
    for scale in (1.0, 0.1):
        model.feature_grad_scale = scale
        model.zero_grad()
        logits, _ = model(x, mask_time_indices=torch.zeros(1, 24, dtype=torch.bool))
        logits.sum().backward()
        grads.append(model.hubert.feature_extractor.conv_layers[0].conv.weight.grad.clone())
    # the same backward pass but for the scale: equal up to float32 summation order
    torch.testing.assert_close(grads[1], grads[0] * 0.1, rtol=1e-3, atol=1e-5)


def test_frozen_feature_encoder(tmp_path):
    init = write_tiny_hubert(tmp_path / "init")
    hubert, _ = load_hubert(ModelSetup(str(init), 0.8, 10, 2, None, "sdpa"))
    model = PretrainModel(hubert, PretrainingHead(32, 3), feature_grad_scale=0.0)
    assert not any(p.requires_grad for p in model.hubert.feature_extractor.parameters())
