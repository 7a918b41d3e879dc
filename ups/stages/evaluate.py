"""Stage `evaluate`: the initial model (`train.init`) against the continued one (models/hubert-cpt).

Three measurements, all written to `<out_dir>/metrics.json` (flat enough for `dvc metrics` and
`dvc exp show`), `<out_dir>/probe_layers.csv` (the per-layer plot) and `<out_dir>/detail/`
(full report.json, PNG):

1. Masked prediction on the validation chunks, each chunk masked by its own generator
   `default_rng([evaluate.mask_seed, chunk_id])` with the trainer's `mask_prob`, `mask_length`
   and `min_masks`, so every model sees exactly the same masks:
   - `continued_trained_head`: the continued encoder with the head trained beside it;
   - `init_fitted_head` / `continued_fitted_head`: each encoder FROZEN, with a new head of the
     trainer's kind fitted for `head_fit_steps` Adam steps on the masked frames of
     `head_fit_chunks` training chunks (the initial model has no head for these clusters, so
     this is the like-for-like "before vs after": same head, same budget, same data);
   - `train_first_logged_loss` / `train_last_logged_loss`: the trainer's own first and last
     logged training loss (dvclive), for context.
2. A language-ID linear probe (ups/probe.py) per layer for both models (mean-pooled hidden
   states, eval mode, no masking, one forward with output_hidden_states), plus the MFCC
   mean + std control, fitted and scored on the eval split only (files select held out that no
   model trained on), split again by file, per language, seeded (`probe_split`). Optionally the
   same probe on training files, reported apart as `probe_training_files` (it flatters the
   continued model, which trained on them).
3. Label quality: cluster usage entropy, empty clusters and I(cluster; language) per frame;
   `label_set` puts what the labels are (kind, layer, model, clusters) beside the initial
   model's masked accuracy on them and that mutual information: the figures that judge the choice.

Chunks of equal length are batched (no padding changes a frame).
"""

from __future__ import annotations

import csv
import io
import logging
import tarfile
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ups.atomic import atomic_dir, atomic_write, write_json
from ups.config import ConfigError, EvaluateConfig, MfccParams, TrainConfig
from ups.frames import n_cnn_frames
from ups.kmeans import entropy_bits, mutual_information_from_counts
from ups.languages import is_language
from ups.masking import compute_mask
from ups.probe import fit_probe, mean_pool, mfcc_stats
from ups.progress import bar
from ups.report import Skips
from ups.train_data import LabelIndex, count_clusters, list_shards, read_shard

log = logging.getLogger(__name__)
STAGE = "evaluate"
MODELS = ("init", "continued")


# --- inputs ----------------------------------------------------------------------------------

def scan_shards(split_dir: Path, skips: Skips) -> list[dict[str, Any]]:
    """The `json` metadata of every sample of every shard of a split (PCM not decoded)."""
    rows: list[dict[str, Any]] = []
    for shard in list_shards(split_dir):
        try:
            with tarfile.open(shard, "r|") as tf:
                for member in tf:
                    if not member.isfile() or not member.name.endswith(".json"):
                        continue
                    fh = tf.extractfile(member)
                    try:
                        meta: Any = orjson.loads(fh.read()) if fh is not None else {}
                        row = {"chunk_id": int(meta["chunk_id"]), "tar": int(meta["tar"]),
                               "key": str(meta["key"]), "language": str(meta.get("language", "")),
                               "n_samples": int(meta["n_samples"]), "shard": shard}
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        skips.add("bad_metadata", f"{shard.name}:{member.name}")
                        continue
                    rows.append(row)
        except (tarfile.TarError, OSError, EOFError) as exc:
            skips.add("bad_shard", f"{shard.name}: {exc}")
    return rows


def read_lid(path: Path) -> dict[tuple[int, str], tuple[str, str]]:
    """(tar, key) -> (language, lid_split) from lid.parquet (the probe uses the language only)."""
    import pyarrow.parquet as pq

    t = pq.read_table(path, columns=["tar", "key", "language", "lid_split"]).to_pydict()
    return {(int(a), k): (lang, s) for a, k, lang, s in
            zip(t["tar"], t["key"], t["language"], t["lid_split"], strict=True)}


def pick(rows: list[dict[str, Any]], limit: int, seed: int, salt: int) -> list[dict[str, Any]]:
    """At most `limit` rows (0 = all), drawn without replacement by (seed, salt), in input order."""
    if limit == 0 or len(rows) <= limit:
        return list(rows)
    idx = np.sort(np.random.default_rng([seed, salt]).choice(len(rows), limit, replace=False))
    return [rows[i] for i in idx]


def iter_batches(rows: list[dict[str, Any]], batch_size: int, skips: Skips
                 ) -> Iterator[list[tuple[dict[str, Any], np.ndarray]]]:
    """Batches of (row, int16 pcm) of equal length, shard by shard (one shard's PCM in memory)."""
    by_shard: dict[Path, dict[int, dict[str, Any]]] = defaultdict(dict)
    for r in rows:
        by_shard[r["shard"]][r["chunk_id"]] = r
    counts: dict[str, int] = defaultdict(int)
    for shard in sorted(by_shard):
        wanted = by_shard[shard]
        by_len: dict[int, list[tuple[dict[str, Any], np.ndarray]]] = defaultdict(list)
        for chunk_id, pcm in read_shard(shard, counts):  # type: ignore[arg-type]
            if chunk_id in wanted:
                by_len[len(pcm)].append((wanted[chunk_id], pcm))
        for _, items in sorted(by_len.items()):
            for s in range(0, len(items), batch_size):
                yield items[s:s + batch_size]
    for reason, n in counts.items():
        skips.add(reason, n=n)


def to_input(pcms: list[np.ndarray], normalize: bool) -> np.ndarray:
    """int16 PCM -> float32 batch exactly as the trainer feeds it (/ 32768, optional per-chunk norm)."""
    x = np.stack(pcms).astype(np.float32) / 32768.0
    if normalize:
        x = (x - x.mean(axis=1, keepdims=True)) / np.sqrt(x.var(axis=1, keepdims=True) + 1e-7)
    return x


def chunk_mask(chunk_id: int, n_frames: int, train: TrainConfig, seed: int) -> np.ndarray:
    """The evaluation mask of one chunk: the same for every model and every batching."""
    rng = np.random.default_rng([seed, chunk_id])
    return compute_mask([n_frames], n_frames, mask_prob=train.mask_prob, mask_length=train.mask_length,
                        min_masks=train.min_masks, rng=rng)[0]


# --- models ----------------------------------------------------------------------------------

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


# --- the stage -------------------------------------------------------------------------------

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

    with tempfile.TemporaryDirectory(prefix="ups-evaluate-") as scratch:
        init_path = resolve_init(train, Path(scratch))
        models = {"init": load_encoder(init_path, train, device, train.init_revision),
                  "continued": load_encoder(str(model_dir), train, device)}
    n_layers = int(models["init"].config.num_hidden_layers)
    if int(models["continued"].config.num_hidden_layers) != n_layers:
        raise ValueError("the initial and continued models have different depths")
    layers = resolve_layers(cfg, n_layers)
    log.info("%s: init %s vs %s on %s; probe layers %s", STAGE, train.init, model_dir, device, layers)

    # the probe fits and scores on held-out files no model trained on (select.eval_fraction);
    # beside it, the same probe on training files, which the continued model has seen
    probe = _probe(cfg, train, mfcc, models, layers, probe_candidates(rows["eval"], lid_map, skips),
                   skips, device, "eval")
    on_train = None
    train_skips = Skips(f"{STAGE} (probe on training files)")
    if cfg.probe_training_files:
        on_train = _probe(cfg, train, mfcc, models, layers,
                          probe_candidates(rows["train"], lid_map, train_skips), train_skips, device, "train")
    masked = _masked(cfg, train, models, rows, labels_dir, model_dir, skips, device)
    if live_dir is not None:
        masked.update(_trainer_losses(Path(live_dir)))
    labels = label_quality(labels_dir, rows)

    metrics = {"probe": _probe_metrics(probe, layers), "masked": masked, "labels": labels,
               "label_set": label_set_summary(labels_dir, masked, labels)}
    if on_train is not None:
        metrics["probe_training_files"] = _probe_metrics(on_train, layers)
    with atomic_dir(out_dir / "detail") as tmp:
        write_json(tmp / "probe.json", probe)
        if on_train is not None:
            write_json(tmp / "probe_training_files.json", on_train)
        from ups.figures import probe_figure

        probe_figure(tmp / "probe_accuracy.png", probe_rows(probe, layers))
        body = {"stage": STAGE, "config": asdict(cfg), "init": train.init, "model_dir": str(model_dir),
                "device": str(device), "layers": layers, "metrics": metrics, "skipped": skips.to_dict()}
        if on_train is not None:
            body["probe_training_files_note"] = (
                "probe_training_files is fitted and scored on training files: the continued model "
                "trained on them, the initial one did not, so that comparison flatters the continued "
                "model; `probe` is fitted and scored on eval files, which no model trained on")
            body["skipped_probe_training_files"] = train_skips.to_dict()
        write_json(tmp / "report.json", body)
    write_probe_csv(out_dir / "probe_layers.csv", probe_rows(probe, layers))
    write_json(out_dir / "metrics.json", metrics)
    skips.log_summary()
    return metrics


# --- 1. masked prediction --------------------------------------------------------------------

def _labelled(rows: list[dict[str, Any]], index: LabelIndex, skips: Skips
              ) -> list[dict[str, Any]]:
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


def _masked_batch(batch: list[tuple[dict[str, Any], np.ndarray]], train: TrainConfig, seed: int,
                  device: Any) -> tuple[Any, Any, Any]:
    import torch

    x = torch.from_numpy(to_input([p for _, p in batch], train.normalize_audio)).to(device)
    t = n_cnn_frames(len(batch[0][1]))
    mask = torch.from_numpy(np.stack([chunk_mask(r["chunk_id"], t, train, seed) for r, _ in batch]))
    labels = torch.from_numpy(np.stack([r["labels"] for r, _ in batch]))
    return x, mask.to(device), labels.to(device)


def _masked(cfg: EvaluateConfig, train: TrainConfig, models: dict[str, Any], rows: dict[str, Any],
            labels_dir: Path, model_dir: Path, skips: Skips, device: Any) -> dict[str, Any]:
    import torch

    from ups.pretraining import masked_prediction_sums

    if not (labels_dir / "valid" / "labels.npy").is_file() or not rows["valid"]:
        return {"reason": "no labelled validation chunks"}
    n_clusters = count_clusters(labels_dir)
    trained_head, head_note = _trained_head(model_dir, labels_dir, skips)
    if trained_head is not None:
        trained_head = trained_head.eval().to(device)

    # frozen encoders, new heads fitted on the masked frames of a few training chunks
    heads: dict[str, Any] = {}
    fit_info: dict[str, Any] = {}
    if cfg.head_fit_steps > 0 and cfg.head_fit_chunks > 0 and (labels_dir / "train" / "labels.npy").is_file():
        fit_rows = _labelled(pick(rows["train"], cfg.head_fit_chunks, cfg.seed, 2),
                             LabelIndex(labels_dir / "train"), skips)
        feats: dict[str, list[Any]] = {m: [] for m in MODELS}
        targets: list[Any] = []
        for batch in bar(iter_batches(fit_rows, cfg.batch_size, skips), desc=f"{STAGE} head-fit",
                         unit="batch"):
            x, mask, labels = _masked_batch(batch, train, cfg.mask_seed + 1, device)
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
    sums: dict[str, np.ndarray] = defaultdict(lambda: np.zeros(6))
    n_chunks = 0
    valid_rows = _labelled(pick(rows["valid"], cfg.max_masked_chunks, cfg.seed, 1),
                           LabelIndex(labels_dir / "valid"), skips)
    for batch in bar(iter_batches(valid_rows, cfg.batch_size, skips), desc=f"{STAGE} masked",
                     unit="batch"):
        x, mask, labels = _masked_batch(batch, train, cfg.mask_seed, device)
        valid = torch.ones_like(mask)
        n_chunks += len(batch)
        with torch.inference_mode():
            hidden = {m: models[m](x, mask_time_indices=mask).last_hidden_state.float() for m in MODELS}
            scored = [(f"{m}_fitted_head", heads[m], hidden[m]) for m in MODELS if m in heads]
            if trained_head is not None:
                scored.insert(0, ("continued_trained_head", trained_head, hidden["continued"]))
            for name, head, h in scored:
                s = masked_prediction_sums(head(h), labels, mask, valid)
                sums[name] += np.array([float(s.ce_masked), float(s.n_masked), float(s.correct_masked),
                                        float(s.ce_unmasked), float(s.n_unmasked),
                                        float(s.correct_unmasked)])
    out: dict[str, Any] = {"n_chunks": n_chunks, "n_clusters": n_clusters,
                           "chance_loss": float(np.log(n_clusters)), "head_fit": fit_info}
    if head_note:
        out["trained_head_not_scored"] = head_note
    for name, v in sums.items():
        out[name] = {"loss": v[0] / max(v[1], 1), "acc": v[2] / max(v[1], 1),
                     "loss_unmasked": v[3] / max(v[4], 1), "acc_unmasked": v[5] / max(v[4], 1),
                     "masked_fraction": v[1] / max(v[1] + v[4], 1)}
    return out


def _trained_head(model_dir: Path, labels_dir: Path, skips: Skips) -> tuple[Any, str | None]:
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
        log.warning("%s: %s", STAGE, note)
        skips.add("trained_head_other_labels", str(model_dir))
        return None, note
    return load_head(model_dir), None


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


def _trainer_losses(live_dir: Path) -> dict[str, Any]:
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


# --- 2. LID probe ----------------------------------------------------------------------------

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


def _probe(cfg: EvaluateConfig, train: TrainConfig, mfcc: MfccParams, models: dict[str, Any],
           layers: list[int], cands: list[dict[str, Any]], skips: Skips, device: Any,
           split: str) -> dict[str, Any]:
    """Fit the probe on some files of `split` and score it on its other files (probe_split)."""
    import torch

    test = probe_split(cands, cfg.probe_test_fraction, cfg.seed)
    cands = [{**r, "probe_test": bool(t)} for r, t in zip(cands, test, strict=True)]
    chosen = pick(cands, cfg.max_probe_chunks, cfg.seed, 0)
    feats: dict[int, dict[str, Any]] = {}
    for batch in bar(iter_batches(chosen, cfg.batch_size, skips), desc=f"{STAGE} probe {split}",
                     unit="batch", total=None):
        x = torch.from_numpy(to_input([p for _, p in batch], train.normalize_audio)).to(device)
        pooled = {}
        with torch.inference_mode():
            for m in MODELS:
                hs = models[m](x, output_hidden_states=True).hidden_states
                pooled[m] = np.stack([mean_pool(hs[k].float().cpu().numpy()) for k in layers])  # (L, B, D)
        for j, (r, pcm) in enumerate(batch):
            feats[r["chunk_id"]] = {"mfcc": mfcc_stats(pcm, mfcc),
                                    **{m: pooled[m][:, j] for m in MODELS}}
    used = [r for r in chosen if r["chunk_id"] in feats]
    tr = [r for r in used if not r["probe_test"]]
    te = [r for r in used if r["probe_test"]]
    y_tr = [r["lid_language"] for r in tr]
    y_te = [r["lid_language"] for r in te]

    def probe_of(get: Any) -> dict[str, Any]:
        xa = np.stack([get(feats[r["chunk_id"]]) for r in tr]) if tr else np.zeros((0, 1))
        xb = np.stack([get(feats[r["chunk_id"]]) for r in te]) if te else np.zeros((0, 1))
        return fit_probe(xa, y_tr, xb, y_te, c=cfg.probe_c, max_iter=cfg.probe_max_iter, seed=cfg.seed)

    def names(rows: list[dict[str, Any]]) -> list[str]:
        return sorted({f"{r['tar']:06d}/{r['key']}" for r in rows})

    out: dict[str, Any] = {"split": split, "n_candidates": len(cands), "n_chunks": len(used),
                           "files_fit": names(tr), "files_test": names(te),
                           "mfcc": probe_of(lambda f: f["mfcc"])}
    if not cands:
        out["reason"] = f"no labelled chunk in the {split} split"
    for m in MODELS:
        out[m] = {str(k): probe_of(lambda f, i=i, m=m: f[m][i]) for i, k in enumerate(layers)}
    log.info("%s: probe on %s files: fit on %d chunks of %d files, scored on %d chunks of %d files; "
             "MFCC control accuracy %s (chance %s)", STAGE, split, len(tr), len(out["files_fit"]), len(te),
             len(out["files_test"]), out["mfcc"]["accuracy"], out["mfcc"]["chance_majority"])
    return out


def probe_rows(probe: dict[str, Any], layers: list[int]) -> list[dict[str, Any]]:
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


def _probe_metrics(probe: dict[str, Any], layers: list[int]) -> dict[str, Any]:
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


# --- 3. label quality ------------------------------------------------------------------------

def label_set_summary(labels_dir: Path, masked: dict[str, Any], labels: dict[str, Any]) -> dict[str, Any]:
    """What the labels are (assign-labels' report) beside the two figures that judge the choice:
    how well the initial model's frozen encoder already predicts them under masking (high: a
    gentle continuation; near chance: training must first move toward new targets) and how much
    they say about the language, I(cluster; language)."""
    from ups.atomic import read_json

    report = labels_dir / "report.json"
    rep: dict[str, Any] = read_json(report) if report.is_file() else {}
    out: dict[str, Any] = dict(rep.get("label_set") or {"kind": rep.get("features_kind"),
                                                         "n_clusters": rep.get("n_clusters")})
    init = masked.get("init_fitted_head") or {}
    out.update(init_masked_acc=init.get("acc"), init_masked_loss=init.get("loss"),
               chance_loss=masked.get("chance_loss"),
               majority_cluster_share=labels.get("majority_cluster_share"),
               mi_cluster_language_bits=labels.get("mi_cluster_language_bits"),
               mi_over_language_entropy=labels.get("mi_over_language_entropy"))
    return out


def label_quality(labels_dir: Path, rows: dict[str, list[dict[str, Any]]]) -> dict[str, Any]:
    """Usage entropy, empty clusters and I(cluster; language) per frame, per split and overall."""
    lang_of = {r["chunk_id"]: r["language"] for s in rows.values() for r in s}
    languages = sorted({v for v in lang_of.values() if v})
    if not (labels_dir / "train" / "labels.npy").is_file():
        return {"reason": "no labels"}
    k = count_clusters(labels_dir)
    li = {lang: i for i, lang in enumerate(languages)}
    out: dict[str, Any] = {"n_clusters": k, "n_languages": len(languages)}
    joint_all = np.zeros((k, max(1, len(languages))), dtype=np.int64)
    for split in ("train", "valid"):
        if not (labels_dir / split / "labels.npy").is_file():
            continue
        idx = LabelIndex(labels_dir / split)
        labels = np.asarray(idx.labels, dtype=np.int64)
        counts = np.bincount(labels, minlength=k)
        ids = np.asarray(idx.chunk_ids)
        per_chunk = np.array([li.get(lang_of.get(int(c), ""), -1) for c in ids], dtype=np.int64)
        per_frame = np.repeat(per_chunk, np.diff(np.asarray(idx.offsets)))
        ok = per_frame >= 0
        joint = np.bincount(labels[ok] * max(1, len(languages)) + per_frame[ok],
                            minlength=k * max(1, len(languages))).reshape(k, -1)
        joint_all += joint
        h = entropy_bits(counts)
        out[split] = {"usage_entropy_bits": h, "usage_entropy_normalised": h / np.log2(k),
                      "empty_clusters": int((counts == 0).sum()),
                      "mi_cluster_language_bits": mutual_information_from_counts(joint)}
    mi = mutual_information_from_counts(joint_all)
    lang_h = entropy_bits(joint_all.sum(axis=0))
    per_cluster = joint_all.sum(axis=1)
    out.update(mi_cluster_language_bits=mi, language_entropy_bits=lang_h,
               majority_cluster_share=float(per_cluster.max() / max(1, per_cluster.sum())),
               mi_over_language_entropy=mi / lang_h if lang_h > 0 else 0.0)
    return out
