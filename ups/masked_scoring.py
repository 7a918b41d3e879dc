"""Masked prediction scored on the validation chunks: every model sees the same masks, and
each frozen encoder gets a head fitted the same way, so the initial and the continued model
compare like for like.

Each chunk is masked by its own generator `default_rng([evaluate.mask_seed, chunk_id])` with the
trainer's `mask_prob`, `mask_length` and `min_masks` (`chunk_mask`), whatever the batching.
Scored heads:
- `continued_trained_head`: the continued encoder with the head trained beside it (refused when
  the labels are not the ones it was trained on: `trained_head`);
- `init_fitted_head` / `continued_fitted_head`: each encoder FROZEN, with a new head of the
  trainer's kind fitted for `head_fit_steps` Adam steps on the masked frames of
  `head_fit_chunks` training chunks (the initial model has no head for these clusters);
- beside them, the trainer's own first and last logged training loss (`trainer_losses`).
"""

from __future__ import annotations

import csv
import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ups.config import EvaluateConfig, TrainConfig
from ups.eval_chunks import MODELS, iter_batches, pick, to_input
from ups.frames import n_cnn_frames
from ups.masking import compute_mask
from ups.progress import bar
from ups.skips import Skips
from ups.train_data import LabelIndex, count_clusters

log = logging.getLogger(__name__)
SUM_FIELDS = 6  # ce, n, correct over masked frames, then over unmasked frames


def masked_prediction(cfg: EvaluateConfig, train: TrainConfig, models: dict[str, Any],
                      rows: dict[str, list[dict[str, Any]]], labels_dir: Path, model_dir: Path,
                      skips: Skips, device: Any) -> dict[str, Any]:
    """Every head's masked loss and accuracy on (at most `max_masked_chunks`) validation chunks."""
    if not (labels_dir / "valid" / "labels.npy").is_file() or not rows["valid"]:
        return {"reason": "no labelled validation chunks"}
    n_clusters = count_clusters(labels_dir)
    head, head_note = trained_head(model_dir, labels_dir, skips)
    heads = [] if head is None else [("continued_trained_head", head.eval().to(device), "continued")]
    fitted, fit_info = fit_heads(cfg, train, models, rows["train"], labels_dir, n_clusters, skips, device)
    heads += [(f"{m}_fitted_head", fitted[m], m) for m in MODELS if m in fitted]
    valid_rows = labelled(pick(rows["valid"], cfg.max_masked_chunks, cfg.seed, 1),
                          LabelIndex(labels_dir / "valid"), skips)
    sums, n_chunks = score_heads(cfg, train, models, heads, valid_rows, skips, device)
    return masked_figures(sums, n_chunks, n_clusters, fit_info, head_note)


def chunk_mask(chunk_id: int, n_frames: int, train: TrainConfig, seed: int) -> np.ndarray:
    """The evaluation mask of one chunk: the same for every model and every batching."""
    rng = np.random.default_rng([seed, chunk_id])
    return compute_mask([n_frames], n_frames, mask_prob=train.mask_prob, mask_length=train.mask_length,
                        min_masks=train.min_masks, rng=rng)[0]


def labelled(rows: list[dict[str, Any]], index: LabelIndex, skips: Skips) -> list[dict[str, Any]]:
    """The rows with their frame labels; a chunk without labels, or with labels of another
    length than its CNN frames, is counted and left out."""
    out = []
    for r in rows:
        lab = index.get(r["chunk_id"])
        if lab is None:
            skips.add("no_labels", str(r["chunk_id"]))
        elif len(lab) != n_cnn_frames(r["n_samples"]):
            skips.add("label_length_mismatch", str(r["chunk_id"]))
        else:
            out.append({**r, "labels": np.asarray(lab, dtype=np.int64)})
    return out


def masked_batch(batch: list[tuple[dict[str, Any], np.ndarray]], train: TrainConfig, seed: int,
                 device: Any) -> tuple[Any, Any, Any]:
    """One batch of equal-length labelled chunks as tensors: input, each chunk's mask, labels."""
    import torch

    x = torch.from_numpy(to_input([p for _, p in batch], train.normalize_audio)).to(device)
    t = n_cnn_frames(len(batch[0][1]))
    mask = torch.from_numpy(np.stack([chunk_mask(r["chunk_id"], t, train, seed) for r, _ in batch]))
    labels = torch.from_numpy(np.stack([r["labels"] for r, _ in batch]))
    return x, mask.to(device), labels.to(device)


def trained_head(model_dir: Path, labels_dir: Path, skips: Skips) -> tuple[Any, str | None]:
    """The head exported beside the continued model, or None and why it is not scored.

    A head predicts the cluster numbering it was trained on; if `labels_dir` holds other labels
    (k-means re-fitted: same chunks, renumbered clusters) its loss would be meaningless (below
    chance), so it is refused. Exports without a recorded digest are scored as before."""
    from ups.hubert_model import load_head
    from ups.train_data import labels_digest

    if not (model_dir / "head.json").is_file():
        skips.add("no_trained_head", str(model_dir))
        return None, "no head.json beside the model"
    trained_on = orjson.loads((model_dir / "head.json").read_bytes()).get("labels_sha256")
    if trained_on and trained_on != labels_digest(labels_dir):
        note = (f"the head in {model_dir} was trained on other labels than {labels_dir} "
                f"(labels sha256 {trained_on[:12]} vs {labels_digest(labels_dir)[:12]}); re-run train")
        log.warning("evaluate: %s", note)
        skips.add("trained_head_other_labels", str(model_dir))
        return None, note
    return load_head(model_dir), None


def fit_heads(cfg: EvaluateConfig, train: TrainConfig, models: dict[str, Any],
              train_rows: list[dict[str, Any]], labels_dir: Path, n_clusters: int, skips: Skips,
              device: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """Per model, a head fitted on its frozen features of the masked frames of (at most
    `head_fit_chunks`) training chunks, and how the fit went; none when the fit is off."""
    import torch

    heads: dict[str, Any] = {}
    fit_info: dict[str, Any] = {}
    has_labels = (labels_dir / "train" / "labels.npy").is_file()
    if not (cfg.head_fit_steps > 0 and cfg.head_fit_chunks > 0 and has_labels):
        return heads, fit_info
    fit_rows = labelled(pick(train_rows, cfg.head_fit_chunks, cfg.seed, 2), LabelIndex(labels_dir / "train"),
                        skips)
    feats: dict[str, list[Any]] = {m: [] for m in MODELS}
    targets: list[Any] = []
    for batch in bar(iter_batches(fit_rows, cfg.batch_size, skips), desc="evaluate head-fit", unit="batch"):
        x, mask, labels = masked_batch(batch, train, cfg.mask_seed + 1, device)
        with torch.inference_mode():
            for m in MODELS:
                h = models[m](x, mask_time_indices=mask).last_hidden_state
                feats[m].append(h[mask].float().cpu())
        targets.append(labels[mask].cpu())
    if targets:
        y = torch.cat(targets)
        for m in MODELS:
            heads[m], fit_info[m] = fit_head(torch.cat(feats[m]).to(device), y.to(device), n_clusters,
                                             train, cfg)
    return heads, fit_info


def fit_head(x: Any, y: Any, n_clusters: int, train: TrainConfig, cfg: EvaluateConfig
             ) -> tuple[Any, dict[str, Any]]:
    """A head of the trainer's kind fitted on frozen frame features x (N, D) -> labels y (N,)."""
    import torch
    import torch.nn.functional as F

    from ups.pretraining import PretrainingHead

    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    head = PretrainingHead(x.shape[1], n_clusters, kind=train.head, final_dim=train.final_dim,
                           temperature=train.logit_temperature).to(x.device)
    opt = torch.optim.Adam(head.parameters(), lr=cfg.head_fit_lr)
    batch = min(4096, len(y))
    losses = []
    for _ in range(cfg.head_fit_steps):
        idx = torch.randint(len(y), (batch,), generator=g).to(x.device)
        loss = F.cross_entropy(head(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    head.eval()
    return head, {"frames": int(len(y)), "steps": cfg.head_fit_steps,
                  "first_loss": losses[0], "last_loss": losses[-1]}


def score_heads(cfg: EvaluateConfig, train: TrainConfig, models: dict[str, Any],
                heads: list[tuple[str, Any, str]], rows: list[dict[str, Any]], skips: Skips,
                device: Any) -> tuple[dict[str, np.ndarray], int]:
    """Each (name, head, model) scored on the labelled `rows` under their evaluation masks: the
    summed loss terms per name (`SUM_FIELDS`) and the number of chunks."""
    import torch

    from ups.pretraining import masked_prediction_sums

    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(SUM_FIELDS))
    n_chunks = 0
    for batch in bar(iter_batches(rows, cfg.batch_size, skips), desc="evaluate masked", unit="batch"):
        x, mask, labels = masked_batch(batch, train, cfg.mask_seed, device)
        valid = torch.ones_like(mask)
        n_chunks += len(batch)
        with torch.inference_mode():
            hidden = {m: models[m](x, mask_time_indices=mask).last_hidden_state.float() for m in MODELS}
            for name, head, m in heads:
                s = masked_prediction_sums(head(hidden[m]), labels, mask, valid)
                sums[name] += np.array([float(s.ce_masked), float(s.n_masked), float(s.correct_masked),
                                        float(s.ce_unmasked), float(s.n_unmasked),
                                        float(s.correct_unmasked)])
    return sums, n_chunks


def masked_figures(sums: dict[str, np.ndarray], n_chunks: int, n_clusters: int,
                   fit_info: dict[str, Any], head_note: str | None) -> dict[str, Any]:
    """Per head: mean loss and accuracy over masked and over unmasked frames, the masked share;
    beside them the chance loss (log k) and how each head was fitted."""
    out: dict[str, Any] = {"n_chunks": n_chunks, "n_clusters": n_clusters,
                           "chance_loss": float(np.log(n_clusters)), "head_fit": fit_info}
    if head_note:
        out["trained_head_not_scored"] = head_note
    for name, v in sums.items():
        out[name] = {"loss": v[0] / max(v[1], 1), "acc": v[2] / max(v[1], 1),
                     "loss_unmasked": v[3] / max(v[4], 1), "acc_unmasked": v[5] / max(v[4], 1),
                     "masked_fraction": v[1] / max(v[1] + v[4], 1)}
    return out


def trainer_losses(live_dir: Path) -> dict[str, Any]:
    """First and last `train/loss` the trainer logged (dvclive TSV), or nothing."""
    tsv = live_dir / "plots" / "metrics" / "train" / "loss.tsv"
    if not tsv.is_file():
        return {}
    with open(tsv, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    vals = [(int(float(r["step"])), float(r["loss"])) for r in rows if r.get("loss")]
    if not vals:
        return {}
    return {"train_first_logged_loss": vals[0][1], "train_first_logged_step": vals[0][0],
            "train_last_logged_loss": vals[-1][1], "train_last_logged_step": vals[-1][0]}
