"""Stage `train`: continue HuBERT's masked pre-training on the labelled shards.

Read it top to bottom. `run` resolves the device (a GPU expected but absent stops here), joins
the process group under torchrun and calls, in order:
- `setup`: the run's shape (precision, batch split, clusters), then `setup_model` (HuBERT and a
  new head), `setup_optimizer` (AdamW, the fp16 scaler) and `setup_data` (the loaders);
- `resume`: the last state of this run's fingerprint, restored at the same global batch on any
  number of ranks and workers; or a fresh start, which sets older states aside;
- `train`: `run_epoch` epoch after epoch; each data step is `next_micro_batches` + `vote` (every
  rank agrees on the step's normaliser and on whether it has data) + `train_step` (one optimizer
  update), then `log_step`, `validate` and `save` on their steps; `end_epoch` records what each
  epoch trained on; `finish` validates, saves and exports once more.

The pure parts live in library modules: the LR schedule and its checks (`ups.schedule`), the
data order and the global batch a resume keeps (`ups.data_order`), the batches (`ups.train_data`),
what a state holds and which one to resume (`ups.train_state`), the logged figures
(`ups.train_log`); docs/training.md describes them.

Loss normalisation: each step sums cross-entropy over the scored frames of all micro-batches of
all ranks and divides by their total count (voted before the forward passes, from the batches'
host-side counts), so accumulation and DDP give the same update as one large batch. A step
whose loss or gradient is not finite on any rank is skipped by every rank (one small collective
and the step's only host sync); `max_bad_steps` in a row stop every rank. A skipped step
consumes its data but is not an update: the step counter and the LR do not move.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

from ups import distributed, failpoints, preempt
from ups.atomic import atomic_dir
from ups.batch_table import auto_batch, resolve_batch
from ups.config import TrainConfig
from ups.data_order import elastic_accum
from ups.devices import resolve_device, resolve_precision
from ups.frames import SAMPLE_RATE
from ups.hubert_model import ModelSetup, export, flops_per_audio_second, load_hubert
from ups.pretraining import SUM_NAMES, PretrainingHead, PretrainModel, masked_prediction_sums, scored_weight
from ups.progress import bar
from ups.schedule import check_same_schedule, check_warmup, lr_at, planned_steps, warmup_steps_for
from ups.skips import Skips
from ups.train_data import (
    EMPTY,
    BatchSpec,
    Catalog,
    ShardBatches,
    check_crop,
    count_clusters,
    labels_digest,
    list_shards,
)
from ups.train_log import (
    Live,
    StepSums,
    epoch_summary,
    last_metrics,
    record,
    throughput,
    train_figures,
    valid_figures,
)
from ups.train_state import Progress, choose_state, drop_aside, fingerprint, load_state, save_state

log = logging.getLogger(__name__)


class StopRequested(Exception):
    """Raised by the test hook `stop_after_steps`: the run ends as if killed (no final save)."""


@dataclass
class Run:
    """Everything set up once and read by the steps."""

    cfg: TrainConfig
    d: distributed.Dist
    device: torch.device
    precision: str
    batch_size: int
    grad_accum: int  # of this run's shape; a resume may change it to keep the state's global batch
    table_row: str
    n_clusters: int
    fingerprint: str
    model: PretrainModel
    original_augment: dict[str, Any]
    ddp: Any
    forward: Any
    optimizer: torch.optim.Optimizer
    scaler: Any
    train_ds: ShardBatches
    loader: DataLoader[Any]
    valid_loader: DataLoader[Any] | None
    flops: float
    labels_dir: Path
    warmup_steps: int = 0  # resolved from train.warmup_steps once the total is known

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.grad_accum * self.d.world_size

    @property
    def steps_per_epoch(self) -> int:
        return self.train_ds.n_samples // self.global_batch

    def autocast(self) -> contextlib.AbstractContextManager[Any]:
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)


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
    """Train, checkpoint, export; returns the final summary (also in `model_dir/training.json`)."""
    preempt.install()
    device = resolve_device(cfg.device, cfg.gpus, int(os.environ.get("LOCAL_RANK", "0")))
    d = distributed.init(device.type)
    try:
        r = setup(cfg, d, device, Path(audio_dir), Path(labels_dir), Path(state_dir))
        prog = resume(r, Path(state_dir))
        return train(r, prog, Path(model_dir), Path(state_dir), Path(live_dir), stop_after_steps)
    finally:
        preempt.uninstall()
        distributed.shutdown(d)


# --- set-up: model, optimizer, data -----------------------------------------------------------


def setup(
    cfg: TrainConfig,
    d: distributed.Dist,
    device: torch.device,
    audio_dir: Path,
    labels_dir: Path,
    state_dir: Path,
) -> Run:
    """Model, head, optimizer and data, identical on every rank (DDP also broadcasts rank 0's)."""
    precision = resolve_precision(cfg.precision, device)
    memory_gib = None
    if device.type == "cuda":
        memory_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    batch_size, grad_accum = resolve_batch(cfg.batch_size, cfg.grad_accum, memory_gib)
    n_clusters = count_clusters(labels_dir)
    train_shards = list_shards(audio_dir / "train")
    if not train_shards:
        raise FileNotFoundError(f"no training shards in {audio_dir / 'train'}")
    check_crop(cfg.crop, _feat_extract_norm(cfg))  # before any work (the tiny model is written below)

    torch.manual_seed(cfg.seed)
    model, original_augment, ddp, forward = setup_model(cfg, d, device, n_clusters, state_dir)
    optimizer, scaler = setup_optimizer(cfg, model, precision)
    train_ds, loader, valid_loader = setup_data(cfg, d, device, audio_dir, labels_dir, state_dir, batch_size)
    if train_ds.n_samples < batch_size * grad_accum * d.world_size:
        raise RuntimeError(
            f"train: no optimizer step can be formed: {train_ds.n_samples} training chunks, global batch "
            f"{batch_size} x accum {grad_accum} x {d.world_size} processes (lower train.batch_size or "
            f"train.grad_accum)"
        )
    return Run(
        cfg=cfg, d=d, device=device, precision=precision, batch_size=batch_size, grad_accum=grad_accum,
        table_row=auto_batch(memory_gib)[0], n_clusters=n_clusters,
        fingerprint=fingerprint(cfg, n_clusters, labels_dir, train_shards),
        model=model, original_augment=original_augment, ddp=ddp, forward=forward, optimizer=optimizer,
        scaler=scaler, train_ds=train_ds, loader=loader, valid_loader=valid_loader,
        flops=flops_per_audio_second(model.hubert.config, cfg.max_sample_seconds), labels_dir=labels_dir,
    )


def _feat_extract_norm(cfg: TrainConfig) -> str:
    """The initial model's CNN normalisation, from its config alone (no weights loaded)."""
    from transformers import HubertConfig

    from ups.tiny_model import TINY

    if cfg.init == "tiny":
        return str(TINY["feat_extract_norm"])
    return str(HubertConfig.from_pretrained(cfg.init, revision=cfg.init_revision).feat_extract_norm)


def setup_model(
    cfg: TrainConfig, d: distributed.Dist, device: torch.device, n_clusters: int, state_dir: Path
) -> tuple[PretrainModel, dict[str, Any], Any, Any]:
    """HuBERT from `train.init` with a new head over this run's clusters. Returns the model, the
    initial SpecAugment settings (restored at export), its DDP wrapper (the model itself on one
    process) and the forward the steps call (compiled with `train.compile`)."""
    from ups.tiny_model import write_tiny_hubert

    init = cfg.init
    if init == "tiny":  # one writer: ranks (and nodes) share the state directory
        if d.is_main:
            write_tiny_hubert(state_dir / "tiny-init", seed=cfg.seed)
        distributed.barrier(d)
        init = str(state_dir / "tiny-init")
    hubert, original_augment = load_hubert(
        ModelSetup(
            init, cfg.mask_prob, cfg.mask_length, cfg.min_masks, cfg.layerdrop, cfg.attn_implementation,
            cfg.init_revision,
        )
    )
    head = PretrainingHead(
        hubert.config.hidden_size, n_clusters, kind=cfg.head, final_dim=cfg.final_dim,
        temperature=cfg.logit_temperature,
    )
    model = PretrainModel(hubert, head, cfg.feature_grad_scale).to(device)
    model.train()
    ddp: Any = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        unused = (hubert.config.layerdrop or 0.0) > 0.0
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )
    forward = torch.compile(ddp) if cfg.compile else ddp
    return model, original_augment, ddp, forward


def setup_optimizer(
    cfg: TrainConfig, model: PretrainModel, precision: str
) -> tuple[torch.optim.Optimizer, Any]:
    """AdamW over `param_groups`, and the loss scaler fp16 needs (None otherwise)."""
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
        eps=cfg.adam_eps,
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    return optimizer, scaler


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """AdamW groups: decay on weight matrices only. Not on biases, norms, the mask embedding,
    the positional conv's weight-norm gain (`original0` / `weight_g`) or the label embeddings."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        matrix = p.ndim >= 2 and not name.endswith(("original0", "weight_g", "label_embs"))
        (decay if matrix else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def setup_data(
    cfg: TrainConfig, d: distributed.Dist, device: torch.device, audio_dir: Path, labels_dir: Path,
    state_dir: Path, batch_size: int,
) -> tuple[ShardBatches, DataLoader[Any], DataLoader[Any] | None]:
    """The training batches and their loader, and the validation loader (None without
    validation shards and labels)."""
    spec = BatchSpec.of(cfg, batch_size)
    train_ds = shared_batches("train", spec, cfg, d, audio_dir, labels_dir, state_dir)
    valid_loader = None
    if list_shards(audio_dir / "valid") and (labels_dir / "valid" / "labels.npy").is_file():
        valid_ds = shared_batches("valid", spec, cfg, d, audio_dir, labels_dir, state_dir)
        valid_loader = _loader(valid_ds, cfg, device, cfg.seed + 1, persistent=True)
    return train_ds, _loader(train_ds, cfg, device, cfg.seed), valid_loader


def shared_batches(
    split: str, spec: BatchSpec, cfg: TrainConfig, d: distributed.Dist, audio_dir: Path, labels_dir: Path,
    state_dir: Path,
) -> ShardBatches:
    """The split's dataset; its tar headers walked by rank 0 alone, the catalogue shared
    through the state directory (every rank walking every shard was ranks x the reads)."""
    saved = state_dir / "catalog" / f"{split}.npz"

    def make(catalog: Any = None) -> ShardBatches:
        return ShardBatches(audio_dir / split, labels_dir / split, spec, seed=cfg.seed,
                            train=split == "train", rank=d.rank, world_size=d.world_size, catalog=catalog,
                            max_batches=None if split == "train" else cfg.valid_max_batches)

    if not d.enabled:
        return make()
    ds = make() if d.is_main else None
    if ds is not None:
        saved.parent.mkdir(parents=True, exist_ok=True)
        ds.catalog.save(saved, ds.catalog_skips)
    distributed.barrier(d)
    return ds or make(Catalog.load(saved))


def _loader(
    ds: ShardBatches, cfg: TrainConfig, device: torch.device, seed: int, persistent: bool = False
) -> DataLoader[Any]:
    """A private generator: creating an iterator must not consume the global RNG (resume
    equality). Training makes one iterator per run (its schedule runs across epochs, so its
    workers are forked once); validation keeps its workers between passes."""
    return DataLoader(
        ds,
        batch_size=None,
        num_workers=cfg.num_workers,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(seed),
        prefetch_factor=4 if cfg.num_workers > 0 else None,
        persistent_workers=persistent and cfg.num_workers > 0,
    )


# --- resume -----------------------------------------------------------------------------------


def resume(r: Run, state_dir: Path) -> Progress:
    """The state rank 0 chose (`train_state.choose_state`), restored exactly on every rank, at
    its global batch (the accumulation adapts to this run's processes); else a fresh start."""
    cfg, d = r.cfg, r.d
    chosen = choose_state(state_dir, r.fingerprint, cfg) if d.is_main else None
    chosen = distributed.broadcast_json(d, chosen)
    if chosen is None:
        distributed.barrier(d)
        torch.manual_seed(cfg.seed * 1_000_003 + d.rank + 1)  # dropout / layerdrop differ per rank
        return fresh_start(r)
    found = Path(chosen)
    failpoints.delay_load(d.rank)
    st = load_state(found)
    distributed.barrier(d)  # every rank has read the state before anything may move
    info = st["info"]
    check_same_schedule(info["config"], cfg.max_steps, cfg.epochs, f"{found} (step {info['step']})")
    accum = elastic_accum(info["global_batch"], r.batch_size, d.world_size)
    if accum != r.grad_accum:
        log.warning("train: the state's global batch is %d chunks: accumulation %d on %d processes x "
                    "batch %d (this run's shape alone would give %d)", info["global_batch"], accum,
                    d.world_size, r.batch_size, r.global_batch)
        r.grad_accum = accum
    r.model.load_state_dict(st["model"])
    r.optimizer.load_state_dict(st["optimizer"])
    if r.scaler is not None and info.get("scaler"):
        r.scaler.load_state_dict(info["scaler"])
    r.warmup_steps = info["warmup_steps"]
    prog = Progress.restore(info, st["history"], d.is_main)
    _restore_rng(r, st["rng"], prog.step)
    log.info("train: resumed from %s (step %d, epoch %d, data step %d of %d)", found, prog.step, prog.epoch,
             prog.steps_in_epoch, r.steps_per_epoch)
    _log_schedule(r, prog)
    return prog


def fresh_start(r: Run) -> Progress:
    """A new run's progress: its total steps and warmup fixed (and checked) once, here."""
    total = planned_steps(r.cfg.max_steps, r.cfg.epochs, r.steps_per_epoch)
    r.warmup_steps = warmup_steps_for(r.cfg.warmup_steps, total)
    check_warmup(r.warmup_steps, total)
    prog = Progress(total_steps=total)
    _log_schedule(r, prog)
    return prog


def _restore_rng(r: Run, rng: dict[str, torch.Tensor], step: int) -> None:
    """This rank's generators as saved; a rank the state did not have starts its dropout
    stream anew (a state of fewer ranks)."""
    cpu_key, cuda_key = f"cpu.rank{r.d.rank}", f"cuda.rank{r.d.rank}"
    if cpu_key in rng:
        torch.set_rng_state(rng[cpu_key])
        if r.device.type == "cuda" and cuda_key in rng:
            torch.cuda.set_rng_state(rng[cuda_key], r.device)
    else:
        torch.manual_seed(r.cfg.seed * 1_000_003 + r.d.rank + 1 + step)


def _log_schedule(r: Run, prog: Progress) -> None:
    hours = r.global_batch * r.cfg.max_sample_seconds / 3600
    log.info(
        "train: %d processes on %s (%s), batch %d x accum %d (%s) = global batch %d (<= %.3f h of "
        "audio per step); %d clusters, %d chunks, %d steps per epoch, %d steps in all, warmup %d, "
        "peak LR %g (%s)",
        r.d.world_size, r.device, r.precision, r.batch_size, r.grad_accum, r.table_row, r.global_batch, hours,
        r.n_clusters, r.train_ds.n_samples, r.steps_per_epoch, prog.total_steps, r.warmup_steps,
        r.cfg.learning_rate, r.cfg.lr_schedule,
    )


# --- the loop ---------------------------------------------------------------------------------


@dataclass
class Loop:
    """What the loop carries from one data step to the next, on this process."""

    batches: Any  # one iterator (and one fork of the workers) for the whole run
    sums: StepSums
    skips: Skips
    live: Live
    progress: Any  # the step bar
    trace: failpoints.StepTrace
    nan_at: int | None  # test hook: the data step whose loss is made NaN
    taken: int = 0  # data steps this process took (the NaN test hook counts these)


def train(
    r: Run, prog: Progress, model_dir: Path, state_dir: Path, live_dir: Path, stop_after_steps: int | None
) -> dict[str, Any]:
    """Epoch after epoch until the schedule's last update, then `finish`."""
    live = Live(live_dir, r.d.is_main)
    for rec in prog.history:
        live.log(rec)
    live.flush()
    skips = Skips("train")
    _merge(skips, dict(r.train_ds.catalog_skips))
    sums = StepSums(r.device)
    progress = bar(desc="train", unit="step", total=prog.total_steps, initial=prog.step)
    r.train_ds.set_start(prog.epoch, prog.steps_in_epoch, r.global_batch)
    loop = Loop(iter(r.loader), sums, skips, live, progress, failpoints.StepTrace(r.d.rank),
                failpoints.nan_step(r.d.rank))
    while prog.step < prog.total_steps:
        if prog.steps_in_epoch == r.steps_per_epoch:
            end_epoch(r, prog, live)
        run_epoch(r, prog, loop, state_dir, stop_after_steps)
    if prog.steps_in_epoch > 0:
        end_epoch(r, prog, live)
    progress.close()
    return finish(r, prog, skips, live, model_dir, state_dir)


def run_epoch(r: Run, prog: Progress, loop: Loop, state_dir: Path, stop_after_steps: int | None) -> None:
    """Data steps until the epoch's last one or the schedule's last update. After an update:
    the log, validation and state on their steps, and a save-and-stop when preemption is asked."""
    cfg = r.cfg
    while prog.step < prog.total_steps and prog.steps_in_epoch != r.steps_per_epoch:
        micro = next_micro_batches(loop.batches, r.grad_accum, loop.skips, prog)
        loop.trace.write(prog.epoch, prog.steps_in_epoch, prog.step, micro)
        applied = data_step(r, prog, micro, loop.sums, loop.nan_at == loop.taken)
        loop.taken += 1
        if not applied:
            continue
        loop.progress.update(1)
        if prog.step % cfg.log_every_steps == 0 or prog.step == prog.total_steps:
            log_step(r, prog, loop.sums, loop.live)
        if r.valid_loader is not None and prog.step % cfg.valid_every_steps == 0:
            record(prog.history, loop.live, {"step": prog.step, **validate(r)})
            loop.sums.restart_clock()
        if prog.step % cfg.save_every_steps == 0:
            save(r, prog, state_dir)
            loop.sums.restart_clock()
        if prog.step % cfg.log_every_steps == 0 and preempt.requested(r.d):  # ups/preempt.py
            save(r, prog, state_dir)
            raise preempt.Preempted(prog.step)
        if stop_after_steps is not None and prog.step >= stop_after_steps:
            raise StopRequested(f"stopped after step {prog.step}")


def next_micro_batches(batches: Any, grad_accum: int, skips: Skips, prog: Progress) -> list[dict[str, Any]]:
    """This rank's `grad_accum` micro-batches of the next data step (some may be `EMPTY`)."""
    micro = []
    for _ in range(grad_accum):
        b = next(batches)
        _merge(skips, b["skips"])
        if (b["epoch"], b["step"]) != (prog.epoch, prog.steps_in_epoch):  # the schedule's own check
            raise RuntimeError(f"train: data step {b['epoch']}:{b['step']} arrived at "
                               f"{prog.epoch}:{prog.steps_in_epoch}")
        micro.append(b)
    return micro


def data_step(r: Run, prog: Progress, micro: list[dict[str, Any]], sums: StepSums, inject_nan: bool) -> bool:
    """One data step: an optimizer update unless some rank has nothing to train on (every rank
    then moves on together) or the update is not finite; True when an update was applied."""
    full = [b for b in micro if EMPTY not in b]
    empty_somewhere, total_weight = vote(r, full, len(full) == 0)
    prog.steps_in_epoch += 1
    if empty_somewhere:
        prog.empty_steps += 1
        log.warning("train: data step %d of epoch %d skipped: no readable sample on some rank",
                    prog.steps_in_epoch - 1, prog.epoch)
        if prog.empty_steps >= r.steps_per_epoch:
            raise RuntimeError(f"train: {prog.empty_steps} data steps had no readable sample (a whole "
                               "epoch's worth): see the skip counts above")
        return False
    return train_step(r, prog, full, total_weight, sums, inject_nan)


def vote(r: Run, micro: list[dict[str, Any]], empty: bool) -> tuple[bool, float]:
    """Every rank learns whether any rank has no micro-batch to train on, and the step's
    scored-frame count; one host-side collective (gloo), before any GPU work, so no rank
    enters DDP's all-reduce alone."""
    weight = sum(scored_weight(b["n_masked"], b["n_unmasked"], r.cfg.unmasked_weight) for b in micro)
    n_empty, total = distributed.host_sum(r.d, [float(empty), weight])
    return n_empty > 0, total


def train_step(
    r: Run, prog: Progress, micro: list[dict[str, Any]], total_weight: float, sums: StepSums, inject_nan: bool
) -> bool:
    """Forward and backward over the micro-batches, then one optimizer update or a skip that
    every rank takes together (the step's only read of a device value); True when applied."""
    bad = forward_backward(r, prog, micro, total_weight, sums, inject_nan)
    if r.scaler is not None:
        r.scaler.unscale_(r.optimizer)
    params = [p for p in r.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, r.cfg.grad_clip if r.cfg.grad_clip > 0 else math.inf)
    flag = (bad | ~torch.isfinite(grad_norm)).to(torch.float64).reshape(1)
    if distributed.all_max(r.d, flag).item() > 0:
        skip_update(r, prog)
        return False
    lr = lr_at(prog.step, peak=r.cfg.learning_rate, warmup_steps=r.warmup_steps,
               total_steps=prog.total_steps, kind=r.cfg.lr_schedule)
    for g in r.optimizer.param_groups:
        g["lr"] = lr
    if r.scaler is not None:
        r.scaler.step(r.optimizer)
        r.scaler.update()
    else:
        r.optimizer.step()
    r.optimizer.zero_grad(set_to_none=True)
    prog.bad_in_row = 0
    sums.grad_norm = grad_norm.detach()
    prog.step += 1
    return True


def forward_backward(
    r: Run, prog: Progress, micro: list[dict[str, Any]], total_weight: float, sums: StepSums, inject_nan: bool
) -> torch.Tensor:
    """The gradients of the step's loss, normalised by its scored frames over every rank (DDP
    syncs on the last micro-batch only); returns whether the loss was not finite (on the device)."""
    cfg, d, dev = r.cfg, r.d, r.device
    scale = d.world_size / max(total_weight, 1.0)  # DDP averages gradients over ranks
    bad = torch.zeros((), dtype=torch.bool, device=dev)
    for i, b in enumerate(micro):
        sync = contextlib.nullcontext() if (not d.enabled or i == len(micro) - 1) else r.ddp.no_sync()
        with sync:
            x = b["input_values"].to(dev, non_blocking=True)
            am = b["attention_mask"].to(dev, non_blocking=True) if b["attention_mask"] is not None else None
            mask = b["mask"].to(dev, non_blocking=True)
            valid = b["valid"].to(dev, non_blocking=True)
            labels = b["labels"].to(dev, non_blocking=True)
            with r.autocast():
                logits, penalty = r.forward(x, am, mask)
            s = masked_prediction_sums(logits, labels, mask, valid, unmasked_weight=cfg.unmasked_weight)
            loss = s.objective * scale
            if cfg.feature_penalty > 0:
                loss = loss + cfg.feature_penalty * penalty / len(micro)
            if inject_nan:
                loss = loss * float("nan")
            bad = bad | ~torch.isfinite(loss.detach())
            (r.scaler.scale(loss) if r.scaler is not None else loss).backward()
        sums.add(s.as_tensor(), penalty.detach(), b["n_samples"])
        prog.epoch_chunks += len(b["chunk_ids"])
        prog.epoch_samples += b["n_samples"]
    return bad


def skip_update(r: Run, prog: Progress) -> None:
    """A non-finite step on some rank: every rank drops its gradients; too many in a row stop the run."""
    r.optimizer.zero_grad(set_to_none=True)
    if r.scaler is not None:
        r.scaler.update(r.scaler.get_scale() * r.scaler.get_backoff_factor())
    prog.bad_in_row += 1
    prog.skipped_steps += 1
    log.warning("train: update %d skipped: loss or gradient not finite on some rank (%d in a row)",
                prog.step, prog.bad_in_row)
    if prog.bad_in_row >= r.cfg.max_bad_steps:
        raise RuntimeError(f"train: {prog.bad_in_row} non-finite steps in a row; every rank stops "
                           f"(lower train.learning_rate or check the data)")


def log_step(r: Run, prog: Progress, sums: StepSums, live: Live) -> None:
    v, seconds = sums.reduce(r.d)
    grad_norm = float(sums.grad_norm) if sums.grad_norm is not None else float("nan")
    rec = {
        "step": prog.step,
        "epoch": prog.epoch,
        "lr": r.optimizer.param_groups[0]["lr"],
        "grad_norm": grad_norm,
        "skipped_steps": prog.skipped_steps,
        **train_figures(v),
    }
    timing = throughput(v["audio_samples"], seconds, r.flops)
    record(prog.history, live, rec, timing)
    log.info("train: step %d loss %.4f acc_masked %.3f %.0f audio-s/s", prog.step, rec["train/loss"],
             rec["train/acc_masked"], timing["train/audio_s_per_s"])


@torch.no_grad()
def validate(r: Run) -> dict[str, float]:
    """Loss and accuracy on the validation shards, summed over ranks: the same batches and
    masks (seeded per chunk) for any number of ranks and workers."""
    assert r.valid_loader is not None
    r.model.eval()
    sums = torch.zeros(len(SUM_NAMES), dtype=torch.float64, device=r.device)
    for b in r.valid_loader:
        if EMPTY in b:
            continue
        mask = b["mask"].to(r.device)
        am = b["attention_mask"].to(r.device) if b["attention_mask"] is not None else None
        with r.autocast():
            logits, _ = r.model(b["input_values"].to(r.device), am, mask)
        labels, valid = b["labels"].to(r.device), b["valid"].to(r.device)
        sums += masked_prediction_sums(logits, labels, mask, valid).as_tensor()
    r.model.train()
    return valid_figures(dict(zip(SUM_NAMES, distributed.all_sum(r.d, sums).tolist(), strict=True)))


def save(r: Run, prog: Progress, state_dir: Path) -> None:
    """The whole state (every rank's RNG; the epoch counters summed over ranks), by rank 0."""
    d = r.d
    rng = {f"cpu.rank{k}": s for k, s in enumerate(distributed.gather_rng(d, torch.get_rng_state()))}
    if r.device.type == "cuda":
        for k, s in enumerate(distributed.gather_rng(d, torch.cuda.get_rng_state(r.device))):
            rng[f"cuda.rank{k}"] = s
    chunks, samples = distributed.host_sum(d, [float(prog.epoch_chunks), float(prog.epoch_samples)])
    if d.is_main:
        info = {
            **prog.info(int(chunks), int(samples)),
            "global_batch": r.global_batch,
            "warmup_steps": r.warmup_steps,
            "scaler": r.scaler.state_dict() if r.scaler is not None else None,
            "fingerprint": r.fingerprint,
            "config": asdict(r.cfg),
            "batch_size": r.batch_size,  # as resolved (train.batch_size may be auto)
            "grad_accum": r.grad_accum,
            "world_size": d.world_size,
        }
        save_state(state_dir, prog.step, model=r.model.state_dict(), optimizer=r.optimizer.state_dict(),
                   rng=rng, info=info, history=prog.history)
        gone = drop_aside(state_dir)  # the new run has a state of its own now
        if gone:
            log.warning("train: removed the earlier states set aside: %s", ", ".join(gone))
    distributed.barrier(d)


def end_epoch(r: Run, prog: Progress, live: Live | None = None) -> None:
    """Record what the epoch trained on (all ranks), then move on to the next epoch."""
    chunks, samples = distributed.host_sum(r.d, [float(prog.epoch_chunks), float(prog.epoch_samples)])
    rec = epoch_summary(prog.epoch, prog.steps_in_epoch, r.steps_per_epoch, chunks, samples,
                        r.train_ds.n_samples)
    prog.epochs.append(rec)
    if live is not None:
        record(prog.history, live, {"step": prog.step, **{f"epochs/{k}": v for k, v in rec.items()
                                                           if k not in ("epoch", "complete")}})
    log.info("train: epoch %d: %d steps, %d of %d chunks, %.2f h of audio", prog.epoch, rec["steps"],
             rec["chunks_used"], rec["chunks_available"], rec["hours"])
    prog.epoch += 1
    prog.steps_in_epoch = prog.epoch_chunks = prog.epoch_samples = 0


# --- finish: the last validation and state, the export ----------------------------------------


def finish(
    r: Run, prog: Progress, skips: Skips, live: Live, model_dir: Path, state_dir: Path
) -> dict[str, Any]:
    """Final validation and state, the export (rank 0) and the summary."""
    if prog.step == 0:
        raise RuntimeError("train: no batch could be formed (too little data for train.batch_size?)")
    validated = [h["step"] for h in prog.history if "valid/loss" in h]
    if r.valid_loader is not None and (not validated or validated[-1] != prog.step):
        record(prog.history, live, {"step": prog.step, **validate(r)})
    save(r, prog, state_dir)
    skips.log_summary()
    summary = _summary(r, prog)
    if r.d.is_main:
        info = {
            **summary,
            "config": asdict(r.cfg),
            "init": r.cfg.init,
            "normalize_audio": r.cfg.normalize_audio,
            "labels_sha256": labels_digest(r.labels_dir),
            "sample_rate": SAMPLE_RATE,
            "frame_rate_hz": 50,
            "skipped": skips.to_dict(),
        }
        with atomic_dir(model_dir) as tmp:
            export(r.model, r.original_augment, tmp, info)
        live.flush()
        live.end()
        log.info("train: model in %s, state in %s", model_dir, state_dir)
    distributed.barrier(r.d)
    return summary


def _summary(r: Run, prog: Progress) -> dict[str, Any]:
    """What the run did, returned and exported beside the model (`training.json`)."""
    return {
        "steps": prog.step,
        "epoch": prog.epochs[-1]["epoch"] if prog.epochs else 0,  # the last epoch trained
        "epochs": prog.epochs,
        "hours_trained": sum(e["hours"] for e in prog.epochs),
        "skipped_steps": prog.skipped_steps,
        "world_size": r.d.world_size,
        "batch_size": r.batch_size,
        "grad_accum": r.grad_accum,
        "batch_table_row": r.table_row,
        "precision": r.precision,
        "device": str(r.device),
        "n_clusters": r.n_clusters,
        "steps_per_epoch": r.steps_per_epoch,
        "total_steps": prog.total_steps,
        "last": last_metrics(prog.history),
        "flops_per_audio_second": r.flops,
    }


def _merge(skips: Skips, counts: dict[str, int]) -> None:
    for reason, n in counts.items():
        skips.add(reason, n=n)
