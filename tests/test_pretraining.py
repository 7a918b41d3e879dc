import pytest
import torch
import torch.nn.functional as F

from ups.pretraining import PretrainingHead, masked_prediction_sums, scored_weight


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
