"""HuBERT's masked-prediction objective: the encoder with a pretraining head over cluster labels
(`PretrainModel`), the head, its loss, its accuracy.

The cosine head follows the HuBERT paper (and fairseq's `HubertModel`): project the encoder
output to `final_dim`, then logits are the cosine similarity with one learned embedding per
cluster, divided by a temperature (0.1). The linear head is a plain `Linear(hidden, n_clusters)`.
The head is always new: its label set is this run's k-means clusters. It runs in fp32 even
under autocast (the encoder runs in bf16), like fairseq's logits.

The loss is cross-entropy summed over the scored frames: masked frames, plus unmasked frames
weighted by `unmasked_weight` when that is > 0; padding is never scored. Sums (not means) are
returned so that a caller can normalise by the number of scored frames across micro-batches
and ranks, which makes gradient accumulation and DDP give the same update as one big batch.

`PretrainModel` puts the mask embedding at the masked frames with `torch.where`
(`_apply_mask`), not with transformers' boolean index put, which reads the mask's count back from
the device (one `nonzero` forward, two backward) and breaks `torch.compile` graphs. It also scales
the CNN's gradient (`feature_grad_scale`, fairseq's 0.1) and returns fairseq's feature penalty.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn


class PretrainingHead(nn.Module):
    """Frame logits over `n_clusters` labels: `cosine` (HuBERT) or `linear`."""

    def __init__(
        self,
        hidden_size: int,
        n_clusters: int,
        *,
        kind: str = "cosine",
        final_dim: int = 256,
        temperature: float = 0.1,
    ) -> None:
        super().__init__()
        if kind not in ("cosine", "linear"):
            raise ValueError(f"head kind must be cosine or linear, got {kind!r}")
        self.kind = kind
        self.n_clusters = n_clusters
        self.temperature = temperature
        if kind == "cosine":
            self.final_proj = nn.Linear(hidden_size, final_dim)
            self.label_embs = nn.Parameter(torch.empty(n_clusters, final_dim).uniform_())
        else:
            self.final_proj = nn.Linear(hidden_size, n_clusters)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        # fp32 whatever the autocast around it, as fairseq computes its logits: in bf16 the
        # cosine logits (+-10 at temperature 0.1) were off by up to 0.06.
        with torch.autocast(device_type=hidden.device.type, enabled=False):
            x = self.final_proj(hidden.float())
            if self.kind == "linear":
                return x
            x = F.normalize(x, dim=-1, eps=1e-8)
            e = F.normalize(self.label_embs.float(), dim=-1, eps=1e-8)
            return x @ e.t() / self.temperature


@dataclass
class LossSums:
    """Summed loss terms and counts of one micro-batch (tensors, detached except `objective`)."""

    objective: torch.Tensor  # differentiable sum to normalise and back-propagate
    ce_masked: torch.Tensor
    ce_unmasked: torch.Tensor
    n_masked: torch.Tensor
    n_unmasked: torch.Tensor
    correct_masked: torch.Tensor
    correct_unmasked: torch.Tensor

    def as_tensor(self) -> torch.Tensor:
        """The six logged sums as one float64 vector on their device, in `SUM_NAMES` order, so a
        caller accumulates them without reading anything back to the host."""
        return torch.stack([self.ce_masked, self.n_masked, self.correct_masked,
                            self.ce_unmasked, self.n_unmasked, self.correct_unmasked]).double()


SUM_NAMES = ("ce_masked", "n_masked", "correct_masked", "ce_unmasked", "n_unmasked", "correct_unmasked")


def masked_prediction_sums(
    logits: torch.Tensor,
    labels: torch.Tensor,
    mask: torch.Tensor,
    valid: torch.Tensor,
    *,
    unmasked_weight: float = 0.0,
) -> LossSums:
    """Cross-entropy and accuracy sums over masked / unmasked real frames.

    logits (B, T, C); labels (B, T) int; mask, valid (B, T) bool. Frames where `valid` is False
    (padding) are excluded from everything, masked or not.
    """
    masked = mask & valid
    unmasked = ~mask & valid
    flat_logits = logits.reshape(-1, logits.shape[-1]).float()
    flat_labels = labels.reshape(-1).long()
    # CE on every frame, padding zeroed by `where` (no boolean indexing: that waits for the GPU
    # to count the selected frames); metrics for unmasked frames are computed without grad.
    ce = F.cross_entropy(flat_logits, flat_labels, reduction="none").reshape(labels.shape)
    ce = torch.where(valid, ce, torch.zeros((), dtype=ce.dtype, device=ce.device))
    weights = masked.float() + unmasked_weight * unmasked.float()
    objective = (ce * weights).sum()
    with torch.no_grad():
        pred = logits.argmax(-1)
        hit = pred == labels
        return LossSums(
            objective=objective,
            ce_masked=(ce.detach() * masked).sum(),
            ce_unmasked=(ce.detach() * unmasked).sum(),
            n_masked=masked.sum(),
            n_unmasked=unmasked.sum(),
            correct_masked=(hit & masked).sum(),
            correct_unmasked=(hit & unmasked).sum(),
        )


def scored_weight(n_masked: int, n_unmasked: int, unmasked_weight: float) -> float:
    """The normaliser of one micro-batch: masked frames + unmasked_weight * unmasked frames
    (host counts, known from the batch's masks before any GPU work)."""
    return n_masked + unmasked_weight * n_unmasked


class _GradScale(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return grad * ctx.scale, None


class PretrainModel(nn.Module):
    """HubertModel + pretraining head; forward gives frame logits and the feature penalty."""

    def __init__(self, hubert: Any, head: PretrainingHead, feature_grad_scale: float = 1.0) -> None:
        super().__init__()
        self.hubert: Any = hubert
        self.head = head
        self.feature_grad_scale = feature_grad_scale
        self._features: torch.Tensor | None = None
        if feature_grad_scale == 0.0:
            hubert.feature_extractor._freeze_parameters()
        hubert.feature_extractor.register_forward_hook(self._on_features)
        hubert._mask_hidden_states = self._apply_mask  # an instance attribute: this model only

    def _apply_mask(
        self, hidden_states: torch.Tensor, mask_time_indices: torch.Tensor | None = None,
        attention_mask: Any = None,
    ) -> torch.Tensor:
        """The mask embedding at the masked frames, without a host sync; no mask: unchanged
        (transformers would draw masks of its own in training mode)."""
        if mask_time_indices is None:
            return hidden_states
        embed = self.hubert.masked_spec_embed.to(hidden_states.dtype)
        return torch.where(mask_time_indices[..., None], embed, hidden_states)

    def _on_features(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> torch.Tensor:
        if self.training and 0.0 < self.feature_grad_scale < 1.0:
            output = _GradScale.apply(output, self.feature_grad_scale)
        self._features = output
        return output

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        mask_time_indices: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.hubert(input_values, attention_mask=attention_mask, mask_time_indices=mask_time_indices)
        logits = self.head(out.last_hidden_state)
        assert self._features is not None
        penalty = self._features.float().pow(2).mean()
        self._features = None
        return logits, penalty
