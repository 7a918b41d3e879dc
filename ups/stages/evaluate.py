"""Stage `evaluate`: the initial model (`train.init`) against the continued one (models/hubert-cpt).

Three measurements, all written to `<out_dir>/metrics.json` (flat enough for `dvc metrics` and
`dvc exp show`), `<out_dir>/probe_layers.csv` (the per-layer plot) and `<out_dir>/detail/`
(full report.json, probe.json, PNG):

1. Masked prediction on the validation chunks, the same masks for every model: the continued
   model with its trained head, and each frozen encoder with a head fitted the same way
   (`ups.masked_scoring`);
2. a language-ID linear probe (`ups.probe`) per layer for both models, plus the MFCC mean + std
   control, fitted and scored on the eval split only (files select held out that no model
   trained on), split again by file, per language, seeded. Optionally the same probe on training
   files, reported apart as `probe_training_files` (it flatters the continued model, which
   trained on them);
3. label quality (`ups.label_quality`): cluster usage entropy, empty clusters and
   I(cluster; language) per frame; `label_set` puts what the labels are beside the initial
   model's masked accuracy on them and that mutual information.

The chunks and their equal-length batches come from `ups.eval_chunks`; docs/evaluation.md
describes every figure.
"""

from __future__ import annotations

import csv
import io
import logging
import tempfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ups.atomic import atomic_dir, atomic_write, write_json
from ups.config import ConfigError, EvaluateConfig, MfccParams, TrainConfig
from ups.eval_chunks import iter_batches, pick, read_lid, scan_shards
from ups.label_quality import label_quality, label_set_summary
from ups.masked_scoring import masked_prediction, trainer_losses
from ups.probe import probe_candidates, probe_features, probe_metrics, probe_rows, probe_split, score_probe
from ups.progress import bar
from ups.skips import Skips

log = logging.getLogger(__name__)
STAGE = "evaluate"
TRAINING_FILES_NOTE = (
    "probe_training_files is fitted and scored on training files: the continued model "
    "trained on them, the initial one did not, so that comparison flatters the continued "
    "model; `probe` is fitted and scored on eval files, which no model trained on")


def run(
    cfg: EvaluateConfig,
    train: TrainConfig,
    mfcc: MfccParams,
    *,
    audio_dir: Path,
    labels_dir: Path,
    lid: Path,
    model_dir: Path,
    live_dir: Path | None,
    out_dir: Path,
) -> dict[str, Any]:
    """Evaluate both models; write metrics.json, probe_layers.csv and detail/; return the metrics."""
    import torch

    audio_dir, labels_dir = Path(audio_dir), Path(labels_dir)
    model_dir, out_dir = Path(model_dir), Path(out_dir)
    skips = Skips(STAGE)
    device = _device(cfg.device)
    torch.manual_seed(cfg.seed)
    rows = {s: scan_shards(audio_dir / s, skips) for s in ("train", "valid", "eval")}
    lid_map = read_lid(Path(lid))
    models = load_models(train, model_dir, device)
    layers = resolve_layers(cfg, int(models["init"].config.num_hidden_layers))
    log.info("%s: init %s vs %s on %s; probe layers %s", STAGE, train.init, model_dir, device, layers)

    # the probe fits and scores on held-out files no model trained on (select.eval_fraction);
    # beside it, the same probe on training files, which the continued model has seen
    probe = lid_probe(cfg, train, mfcc, models, layers, probe_candidates(rows["eval"], lid_map, skips),
                      skips, device, "eval")
    on_train = None
    train_skips = Skips(f"{STAGE} (probe on training files)")
    if cfg.probe_training_files:
        train_cands = probe_candidates(rows["train"], lid_map, train_skips)
        on_train = lid_probe(cfg, train, mfcc, models, layers, train_cands, train_skips, device, "train")
    masked = masked_prediction(cfg, train, models, rows, labels_dir, model_dir, skips, device)
    if live_dir is not None:
        masked.update(trainer_losses(Path(live_dir)))
    labels = label_quality(labels_dir, rows)

    metrics = {"probe": probe_metrics(probe, layers), "masked": masked, "labels": labels,
               "label_set": label_set_summary(labels_dir, masked, labels)}
    if on_train is not None:
        metrics["probe_training_files"] = probe_metrics(on_train, layers)
    report = {"stage": STAGE, "config": asdict(cfg), "init": train.init, "model_dir": str(model_dir),
              "device": str(device), "layers": layers, "metrics": metrics, "skipped": skips.to_dict()}
    if on_train is not None:
        report["probe_training_files_note"] = TRAINING_FILES_NOTE
        report["skipped_probe_training_files"] = train_skips.to_dict()
    write_outputs(out_dir, metrics, report, probe, on_train, layers)
    skips.log_summary()
    return metrics


def load_models(train: TrainConfig, model_dir: Path, device: Any) -> dict[str, Any]:
    """Both encoders in eval mode, `init` resolved as the trainer resolves it; of one depth."""
    with tempfile.TemporaryDirectory(prefix="ups-evaluate-") as scratch:
        init_path = resolve_init(train, Path(scratch))
        models = {"init": load_encoder(init_path, train, device, train.init_revision),
                  "continued": load_encoder(str(model_dir), train, device)}
    if int(models["continued"].config.num_hidden_layers) != int(models["init"].config.num_hidden_layers):
        raise ValueError("the initial and continued models have different depths")
    return models


def resolve_init(train: TrainConfig, scratch: Path) -> str:
    """`train.init` as the trainer resolves it (`tiny`: the same seeded tiny model)."""
    if train.init == "tiny":
        from ups.tiny_model import write_tiny_hubert

        return str(write_tiny_hubert(scratch / "tiny-init", seed=train.seed))
    return train.init


def load_encoder(path: str, train: TrainConfig, device: Any, revision: str = "main") -> Any:
    from ups.hubert_model import ModelSetup, load_hubert

    model, _ = load_hubert(ModelSetup(path, train.mask_prob, train.mask_length, train.min_masks,
                                      None, train.attn_implementation, revision))
    return model.eval().to(device)


def _device(name: str) -> Any:
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"evaluate.device is {name} but no GPU is visible")
    return torch.device(name)


def resolve_layers(cfg: EvaluateConfig, n_layers: int) -> list[int]:
    if cfg.layers == "all":
        return list(range(n_layers + 1))
    bad = [x for x in cfg.layers if x > n_layers]
    if bad:
        raise ConfigError(f"evaluate.layers must be within [0, {n_layers}] for this model, got {cfg.layers}")
    return sorted(set(cfg.layers))


def lid_probe(cfg: EvaluateConfig, train: TrainConfig, mfcc: MfccParams, models: dict[str, Any],
              layers: list[int], cands: list[dict[str, Any]], skips: Skips, device: Any,
              split: str) -> dict[str, Any]:
    """Fit the probe on some files of `split` and score it on its other files (`probe_split`)."""
    test = probe_split(cands, cfg.probe_test_fraction, cfg.seed)
    cands = [{**r, "probe_test": bool(t)} for r, t in zip(cands, test, strict=True)]
    chosen = pick(cands, cfg.max_probe_chunks, cfg.seed, 0)
    batches = bar(iter_batches(chosen, cfg.batch_size, skips), desc=f"{STAGE} probe {split}", unit="batch",
                  total=None)
    feats = probe_features(models, layers, batches, train.normalize_audio, mfcc, device)
    out = {"split": split, "n_candidates": len(cands),
           **score_probe(feats, chosen, layers, c=cfg.probe_c, max_iter=cfg.probe_max_iter, seed=cfg.seed)}
    if not cands:
        out["reason"] = f"no labelled chunk in the {split} split"
    n_fit = out["mfcc"]["n_train"]
    log.info("%s: probe on %s files: fit on %d chunks of %d files, scored on %d chunks of %d files; "
             "MFCC control accuracy %s (chance %s)", STAGE, split, n_fit, len(out["files_fit"]),
             out["n_chunks"] - n_fit, len(out["files_test"]), out["mfcc"]["accuracy"],
             out["mfcc"]["chance_majority"])
    return out


def write_outputs(out_dir: Path, metrics: dict[str, Any], report: dict[str, Any], probe: dict[str, Any],
                  on_train: dict[str, Any] | None, layers: list[int]) -> None:
    """detail/ (probe JSONs, the figure, report.json) as one directory, then the CSV and metrics."""
    from ups.figures import probe_figure

    with atomic_dir(out_dir / "detail") as tmp:
        write_json(tmp / "probe.json", probe)
        if on_train is not None:
            write_json(tmp / "probe_training_files.json", on_train)
        probe_figure(tmp / "probe_accuracy.png", probe_rows(probe, layers))
        write_json(tmp / "report.json", report)
    write_probe_csv(out_dir / "probe_layers.csv", probe_rows(probe, layers))
    write_json(out_dir / "metrics.json", metrics)


def write_probe_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    fields = ["layer", "init_accuracy", "continued_accuracy", "init_macro_f1", "continued_macro_f1",
              "mfcc_accuracy", "chance_majority"]
    w = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if r[k] is None else r[k]) for k in fields})
    with atomic_write(path, "w") as fh:
        fh.write(buf.getvalue())
