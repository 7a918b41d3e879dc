"""Stage `train`: continue HuBERT's masked pre-training on the labelled shards.

Reads `data/audio/{train,valid}/*.tar` and `data/labels/{train,valid}/`, trains
`HubertModel` + a new pretraining head (ups.hubert_model, ups.pretraining) with AdamW, warmup
then decay, clipping and accumulation, under torchrun DDP when launched with several processes.
Every `save_every_steps` and at the end the whole state goes to `state_dir` (ups.train_state) and
an existing state is resumed; the model is exported to `model_dir` with `save_pretrained`.
Metrics go to dvclive (`live_dir`) and to the state's history, which is replayed into dvclive
on resume (DVC deletes the stage's non-persistent outputs before it runs the command).

Loss normalisation: each step sums cross-entropy over the scored frames of all micro-batches of
all ranks and divides by their total count (all-reduced before the forward passes), so
accumulation and DDP give the same update as one large batch. A step whose loss or gradient is
not finite on any rank is skipped by every rank; `max_bad_steps` in a row stop every rank.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ups import distributed
from ups.atomic import atomic_dir
from ups.batch_table import auto_batch, resolve_batch
from ups.config import TrainConfig
from ups.hubert_model import ModelSetup, PretrainModel, export, flops_per_audio_second, load_hubert
from ups.pretraining import PretrainingHead, masked_prediction_sums, scored_weight
from ups.progress import bar
from ups.report import Skips
from ups.schedule import lr_at
from ups.train_data import (
    END,
    BatchSpec,
    LabelIndex,
    ShardBatches,
    count_clusters,
    labels_digest,
    list_shards,
)
from ups.train_state import latest_state, load_state, save_state

log = logging.getLogger(__name__)

# Keys that may change between a run and its resume without invalidating the state.
RUNTIME_KEYS = (
    "gpus",
    "device",
    "num_workers",
    "log_every_steps",
    "valid_every_steps",
    "valid_max_batches",
    "save_every_steps",
    "resume",
    "max_bad_steps",
    "compile",
    "epochs",
    "max_steps",
)
# Sums kept per step and all-reduced at log time.
SUMS = (
    "ce_masked",
    "n_masked",
    "correct_masked",
    "ce_unmasked",
    "n_unmasked",
    "correct_unmasked",
    "penalty",
    "micro_batches",
    "audio_samples",
)


class StopRequested(Exception):
    """Raised by the test hook `stop_after_steps`: the run ends as if killed (no final save)."""


def _device(cfg: TrainConfig, d: distributed.Dist) -> torch.device:
    kind = cfg.device
    if kind == "auto":
        kind = "cuda" if torch.cuda.is_available() else "cpu"
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("train.device is cuda but no GPU is visible")
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def _precision(cfg: TrainConfig, device: torch.device) -> str:
    if device.type != "cuda":
        if cfg.precision in ("bf16", "fp16"):
            log.warning("train.precision=%s ignored on CPU: fp32", cfg.precision)
        return "fp32"
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return cfg.precision


def fingerprint(
    cfg: TrainConfig, batch_size: int, grad_accum: int, n_clusters: int, labels_dir: Path, shards: list[Path]
) -> str:
    """What a state is valid for: the config (bar runtime keys), the labels and the shard names.

    The labels count by content (`labels_digest`), not only their chunk ids and offsets: a
    re-fitted k-means keeps those but renumbers the clusters, and a state trained on the old
    numbering must not be resumed (its head would score the new labels below chance)."""
    h = hashlib.sha256()
    conf = {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_KEYS}
    conf.update(batch_size=batch_size, grad_accum=grad_accum, n_clusters=n_clusters)
    h.update(repr(sorted(conf.items())).encode())
    h.update(labels_digest(labels_dir).encode())
    h.update("\n".join(p.name for p in shards).encode())
    return h.hexdigest()


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _skip_per_worker(consumed: int, n_workers: int) -> list[int]:
    """Batches each DataLoader worker delivered when the main process consumed `consumed`
    (workers deliver round-robin)."""
    k = max(1, n_workers)
    return [(consumed - w + k - 1) // k for w in range(k)]


def _nan_injection(rank: int) -> int | None:
    """Test hook: UPS_TEST_NAN_AT=<rank>:<step> makes that rank's loss NaN at that step."""
    spec = os.environ.get("UPS_TEST_NAN_AT")
    if not spec:
        return None
    r, s = spec.split(":")
    return int(s) if int(r) == rank else None


class _Live:
    """dvclive on rank 0, fed from the history so a resumed run shows one continuous curve."""

    def __init__(self, live_dir: Path, enabled: bool) -> None:
        self.live = None
        if enabled:
            from dvclive import Live

            if Path(live_dir).exists():
                shutil.rmtree(live_dir)
            self.live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, resume=False)

    def log(self, record: dict[str, Any]) -> None:
        if self.live is None:
            return
        self.live.step = int(record["step"])
        for k, v in record.items():
            if k != "step" and isinstance(v, int | float):
                self.live.log_metric(k, float(v))

    def flush(self) -> None:
        if self.live is not None:
            self.live.make_summary()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()


def run(
    cfg: TrainConfig,
    *,
    audio_dir: Path,
    labels_dir: Path,
    model_dir: Path,
    state_dir: Path,
    live_dir: Path,
    stop_after_steps: int | None = None,
) -> dict[str, Any]:
    """Train, checkpoint, export; returns the final summary (also in `model_dir/report.json`)."""
    audio_dir, labels_dir = Path(audio_dir), Path(labels_dir)
    model_dir, state_dir, live_dir = Path(model_dir), Path(state_dir), Path(live_dir)
    probe = _device(cfg, distributed.Dist())
    d = distributed.init(probe.type)
    try:
        return _train(cfg, d, audio_dir, labels_dir, model_dir, state_dir, live_dir, stop_after_steps)
    finally:
        distributed.shutdown(d)


def _train(
    cfg: TrainConfig,
    d: distributed.Dist,
    audio_dir: Path,
    labels_dir: Path,
    model_dir: Path,
    state_dir: Path,
    live_dir: Path,
    stop_after_steps: int | None,
) -> dict[str, Any]:
    device = _device(cfg, d)
    precision = _precision(cfg, device)
    memory_gib = (
        torch.cuda.get_device_properties(device).total_memory / 2**30 if device.type == "cuda" else None
    )
    batch_size, grad_accum = resolve_batch(cfg.batch_size, cfg.grad_accum, memory_gib)
    table_row = auto_batch(memory_gib)[0]
    n_clusters = count_clusters(labels_dir)
    train_shards = list_shards(audio_dir / "train")
    if not train_shards:
        raise FileNotFoundError(f"no training shards in {audio_dir / 'train'}")
    n_train = len(LabelIndex(labels_dir / "train"))
    fp = fingerprint(cfg, batch_size, grad_accum, n_clusters, labels_dir, train_shards)
    log.info(
        "train: %d processes on %s (%s), batch %d x accum %d (%s), %d clusters, %d chunks",
        d.world_size,
        device,
        precision,
        batch_size,
        grad_accum,
        table_row,
        n_clusters,
        n_train,
    )

    # --- model, head, optimizer (identical on every rank; DDP also broadcasts from rank 0) ---
    torch.manual_seed(cfg.seed)
    init = cfg.init
    if init == "tiny":
        from ups.tiny_model import write_tiny_hubert

        init = str(write_tiny_hubert(state_dir / "tiny-init", seed=cfg.seed))
    hubert, original_augment = load_hubert(
        ModelSetup(
            init, cfg.mask_prob, cfg.mask_length, cfg.min_masks, cfg.layerdrop, cfg.attn_implementation,
            cfg.init_revision,
        )
    )
    head = PretrainingHead(
        hubert.config.hidden_size,
        n_clusters,
        kind=cfg.head,
        final_dim=cfg.final_dim,
        temperature=cfg.logit_temperature,
    )
    model = PretrainModel(hubert, head, cfg.feature_grad_scale).to(device)
    model.train()
    optimizer = torch.optim.AdamW(
        _param_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
        eps=cfg.adam_eps,
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    autocast_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

    # --- resume ---
    step, epoch, consumed, bad_in_row, skipped_steps = 0, 0, 0, 0, 0
    history: list[dict[str, Any]] = []
    n_workers = max(1, cfg.num_workers)
    n_streams = d.world_size * n_workers
    found = latest_state(state_dir) if cfg.resume else None
    rng_loaded = False
    if found is not None:
        st = load_state(found)
        info = st["info"]
        if info.get("fingerprint") != fp:
            log.warning("train: state %s was made with another config or data; starting afresh", found)
        else:
            model.load_state_dict(st["model"])
            optimizer.load_state_dict(st["optimizer"])
            if scaler is not None and info.get("scaler"):
                scaler.load_state_dict(info["scaler"])
            step, epoch, consumed = info["step"], info["epoch"], info["batches_in_epoch"]
            bad_in_row, skipped_steps = info["bad_in_row"], info["skipped_steps"]
            history = st["history"]
            if info["n_streams"] != n_streams and consumed > 0:
                log.warning(
                    "train: data streams changed (%d -> %d); epoch %d restarts at its next epoch",
                    info["n_streams"],
                    n_streams,
                    epoch,
                )
                epoch, consumed = epoch + 1, 0
            cpu_key, cuda_key = f"cpu.rank{d.rank}", f"cuda.rank{d.rank}"
            if cpu_key in st["rng"]:
                torch.set_rng_state(st["rng"][cpu_key])
                if device.type == "cuda" and cuda_key in st["rng"]:
                    torch.cuda.set_rng_state(st["rng"][cuda_key], device)
                rng_loaded = True
            log.info("train: resumed from %s (step %d, epoch %d, batch %d)", found, step, epoch, consumed)
    if not rng_loaded:
        torch.manual_seed(cfg.seed * 1_000_003 + d.rank + 1)  # dropout / layerdrop differ per rank

    ddp: Any = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        unused = (hubert.config.layerdrop or 0.0) > 0.0
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )
    forward = torch.compile(ddp) if cfg.compile else ddp

    # --- data ---
    spec = BatchSpec(
        batch_size=batch_size,
        max_sample_seconds=cfg.max_sample_seconds,
        min_sample_seconds=cfg.min_sample_seconds,
        crop=cfg.crop,
        mask_prob=cfg.mask_prob,
        mask_length=cfg.mask_length,
        min_masks=cfg.min_masks,
        normalize_audio=cfg.normalize_audio,
        shuffle_buffer=cfg.shuffle_buffer,
        open_shards=cfg.open_shards,
        bucket_batches=cfg.bucket_batches,
    )

    def split_batches(split: str) -> ShardBatches:
        return ShardBatches(audio_dir / split, labels_dir / split, spec, seed=cfg.seed,
                            train=split == "train", rank=d.rank, world_size=d.world_size)

    train_ds = split_batches("train")
    loader = _loader(train_ds, cfg, device, cfg.seed)
    valid_loader = None
    if list_shards(audio_dir / "valid") and (labels_dir / "valid" / "labels.npy").is_file():
        valid_loader = _loader(split_batches("valid"), cfg, device, cfg.seed + 1)

    steps_per_epoch = max(1, n_train // (batch_size * grad_accum * d.world_size))
    total_steps = cfg.max_steps or cfg.epochs * steps_per_epoch
    live = _Live(live_dir, d.is_main)
    for rec in history:
        live.log(rec)
    live.flush()

    skips = Skips("train")
    sums = torch.zeros(len(SUMS), dtype=torch.float64)
    nan_step = _nan_injection(d.rank)
    params = [p for p in model.parameters() if p.requires_grad]
    flops = flops_per_audio_second(hubert.config, cfg.max_sample_seconds)
    t_log = time.perf_counter()
    last_grad_norm = float("nan")
    progress = bar(desc="train", unit="step", total=total_steps, initial=step)

    def save_now() -> None:
        rng = {}
        for r, s in enumerate(distributed.gather_rng(d, torch.get_rng_state(), device)):
            rng[f"cpu.rank{r}"] = s
        if device.type == "cuda":
            for r, s in enumerate(distributed.gather_rng(d, torch.cuda.get_rng_state(device), device)):
                rng[f"cuda.rank{r}"] = s
        if d.is_main:
            save_state(
                state_dir,
                step,
                model=model.state_dict(),
                optimizer=optimizer.state_dict(),
                rng=rng,
                info={
                    "epoch": epoch,
                    "batches_in_epoch": consumed,
                    "n_streams": n_streams,
                    "bad_in_row": bad_in_row,
                    "skipped_steps": skipped_steps,
                    "scaler": scaler.state_dict() if scaler is not None else None,
                    "fingerprint": fp,
                    "config": asdict(cfg),
                    "world_size": d.world_size,
                },
                history=history,
            )
        distributed.barrier(d)

    def autocast() -> contextlib.AbstractContextManager[Any]:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=autocast_dtype)

    while epoch < cfg.epochs and step < total_steps:
        train_ds.set_position(epoch, _skip_per_worker(consumed, cfg.num_workers))
        batches = iter(loader)
        while step < total_steps:
            micro: list[dict[str, Any]] = []
            ended = False
            for _ in range(grad_accum):
                b = next(batches, None)
                if b is None or END in b:
                    ended = True
                    if b is not None:
                        _merge(skips, b["skips"])
                    break
                _merge(skips, b["skips"])
                micro.append(b)
            weight = sum(float(scored_weight(b["mask"], b["valid"], cfg.unmasked_weight)) for b in micro)
            agg = distributed.all_sum(d, torch.tensor([float(ended), weight], dtype=torch.float64))
            if agg[0] > 0:
                break  # some stream ran dry: every rank ends the epoch here
            total_weight = float(agg[1])
            consumed += grad_accum
            local_bad = False
            for i, b in enumerate(micro):
                sync = contextlib.nullcontext() if (not d.enabled or i == len(micro) - 1) else ddp.no_sync()
                with sync:
                    x = b["input_values"].to(device, non_blocking=True)
                    am = b["attention_mask"].to(device) if b["attention_mask"] is not None else None
                    mask = b["mask"].to(device)
                    valid = b["valid"].to(device)
                    labels = b["labels"].to(device)
                    with autocast():
                        logits, penalty = forward(x, am, mask)
                    s = masked_prediction_sums(
                        logits, labels, mask, valid, unmasked_weight=cfg.unmasked_weight
                    )
                    loss = s.objective * (d.world_size / max(total_weight, 1.0))
                    if cfg.feature_penalty > 0:
                        loss = loss + cfg.feature_penalty * penalty / len(micro)
                    if nan_step is not None and step == nan_step:
                        loss = loss * float("nan")
                    local_bad = local_bad or not bool(torch.isfinite(loss))
                    (scaler.scale(loss) if scaler is not None else loss).backward()
                sums += torch.tensor(
                    [
                        *s.as_floats(),
                        float(penalty.detach()),
                        1.0,
                        float(b["n_samples"]),
                    ],
                    dtype=torch.float64,
                )
            if scaler is not None:
                scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf
            )
            bad = distributed.all_max(
                d,
                torch.tensor([float(local_bad or not bool(torch.isfinite(grad_norm)))], dtype=torch.float64),
            )
            if bad[0] > 0:
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
                bad_in_row += 1
                skipped_steps += 1
                log.warning(
                    "train: step %d skipped: loss or gradient not finite on some rank (%d in a row)",
                    step,
                    bad_in_row,
                )
                if bad_in_row >= cfg.max_bad_steps:
                    raise RuntimeError(
                        f"train: {bad_in_row} non-finite steps in a row; every rank stops "
                        f"(lower train.learning_rate or check the data)"
                    )
            else:
                lr = lr_at(
                    step,
                    peak=cfg.learning_rate,
                    warmup_steps=cfg.warmup_steps,
                    total_steps=total_steps,
                    kind=cfg.lr_schedule,
                )
                for g in optimizer.param_groups:
                    g["lr"] = lr
                if scaler is not None:
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                bad_in_row = 0
                last_grad_norm = float(grad_norm)
            step += 1
            progress.update(1)

            if step % cfg.log_every_steps == 0 or step == total_steps:
                tot = distributed.all_sum(d, sums)
                now = time.perf_counter()
                rec = _train_record(
                    tot,
                    step,
                    epoch,
                    optimizer.param_groups[0]["lr"],
                    last_grad_norm,
                    skipped_steps,
                    now - t_log,
                    flops,
                )
                t_log, sums = now, torch.zeros_like(sums)
                history.append(rec)
                live.log(rec)
                live.flush()
                log.info(
                    "train: step %d loss %.4f acc_masked %.3f %.0f audio-s/s",
                    step,
                    rec["train/loss"],
                    rec["train/acc_masked"],
                    rec["train/audio_s_per_s"],
                )
            if valid_loader is not None and step % cfg.valid_every_steps == 0:
                rec = {"step": step, **_validate(model, valid_loader, cfg, d, device, autocast)}
                history.append(rec)
                live.log(rec)
                live.flush()
                t_log = time.perf_counter()
            if step % cfg.save_every_steps == 0:
                save_now()
                t_log = time.perf_counter()
            if stop_after_steps is not None and step >= stop_after_steps:
                raise StopRequested(f"stopped after step {step}")
        else:
            continue  # total_steps reached inside the epoch
        epoch, consumed = epoch + 1, 0
    progress.close()
    if step == 0:
        raise RuntimeError("train: no batch could be formed (too little data for train.batch_size?)")

    final: dict[str, Any] = {"step": step}
    if valid_loader is not None:
        final = {"step": step, **_validate(model, valid_loader, cfg, d, device, autocast)}
        if not history or history[-1] != final:
            history.append(final)
            live.log(final)
    save_now()
    skips.log_summary()
    summary = {
        "steps": step,
        "epoch": epoch,
        "skipped_steps": skipped_steps,
        "world_size": d.world_size,
        "batch_size": batch_size,
        "grad_accum": grad_accum,
        "batch_table_row": table_row,
        "precision": precision,
        "device": str(device),
        "n_clusters": n_clusters,
        "total_steps": total_steps,
        "last": history[-1] if history else {},
        "flops_per_audio_second": flops,
    }
    if d.is_main:
        info = {
            **summary,
            "config": asdict(cfg),
            "init": cfg.init,
            "normalize_audio": cfg.normalize_audio,
            "labels_sha256": labels_digest(labels_dir),
            "sample_rate": 16000,
            "frame_rate_hz": 50,
            "skipped": skips.to_dict(),
        }
        with atomic_dir(model_dir) as tmp:
            export(model, original_augment, tmp, info)
        live.flush()
        live.end()
        log.info("train: model in %s, state in %s, metrics in %s", model_dir, state_dir, live_dir)
    distributed.barrier(d)
    return summary


def _loader(ds: ShardBatches, cfg: TrainConfig, device: torch.device, seed: int) -> DataLoader[Any]:
    # A private generator: creating an iterator must not consume the global RNG (resume equality).
    return DataLoader(
        ds,
        batch_size=None,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=4 if cfg.num_workers > 0 else None,
    )


def _merge(skips: Skips, counts: dict[str, int]) -> None:
    for reason, n in counts.items():
        skips.add(reason, n=n)


def _train_record(
    tot: torch.Tensor,
    step: int,
    epoch: int,
    lr: float,
    grad_norm: float,
    skipped: int,
    seconds: float,
    flops: float,
) -> dict[str, Any]:
    v = dict(zip(SUMS, tot.tolist(), strict=True))
    audio_s = v["audio_samples"] / 16000.0
    rate = audio_s / max(seconds, 1e-9)
    return {
        "step": step,
        "epoch": epoch,
        "lr": lr,
        "grad_norm": grad_norm,
        "skipped_steps": skipped,
        "train/loss": v["ce_masked"] / max(v["n_masked"], 1.0),
        "train/loss_unmasked": v["ce_unmasked"] / max(v["n_unmasked"], 1.0),
        "train/acc_masked": v["correct_masked"] / max(v["n_masked"], 1.0),
        "train/acc_unmasked": v["correct_unmasked"] / max(v["n_unmasked"], 1.0),
        "train/masked_fraction": v["n_masked"] / max(v["n_masked"] + v["n_unmasked"], 1.0),
        "train/feature_penalty": v["penalty"] / max(v["micro_batches"], 1.0),
        "train/audio_s_per_s": rate,
        "train/tflops": rate * flops / 1e12,
    }


@torch.no_grad()
def _validate(
    model: PretrainModel,
    loader: DataLoader[Any],
    cfg: TrainConfig,
    d: distributed.Dist,
    device: torch.device,
    autocast: Any,
) -> dict[str, float]:
    """Loss and accuracy on the validation shards (fixed masks), summed over ranks."""
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)
    n = 0
    for b in loader:
        if END in b:
            continue
        if cfg.valid_max_batches is not None and n >= cfg.valid_max_batches:
            break
        n += 1
        mask = b["mask"].to(device)
        am = b["attention_mask"].to(device) if b["attention_mask"] is not None else None
        with autocast():
            logits, _ = model(b["input_values"].to(device), am, mask)
        s = masked_prediction_sums(logits, b["labels"].to(device), mask, b["valid"].to(device))
        sums += torch.tensor(s.as_floats(), dtype=torch.float64, device=sums.device)
    model.train()
    t = distributed.all_sum(d, sums).tolist()
    return {
        "valid/loss": t[0] / max(t[1], 1.0),
        "valid/acc_masked": t[2] / max(t[1], 1.0),
        "valid/loss_unmasked": t[3] / max(t[4], 1.0),
        "valid/acc_unmasked": t[5] / max(t[4], 1.0),
    }
