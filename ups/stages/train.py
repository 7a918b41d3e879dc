"""Stage `train`: continue HuBERT's masked pre-training on the labelled shards.

Read it top to bottom: `run` resolves the device (a GPU expected but absent stops here), joins
the process group under torchrun and calls, in order, `setup` (model, head, AdamW, data, the
run's fingerprint), `resume` (the last state of this fingerprint, restored at the same global
batch on any number of ranks and workers; or a fresh start, which sets older states aside),
then the loop: `next_micro_batches` + `vote` (every rank agrees on the step's normaliser and on
whether it has data), `train_step` (one optimizer step), `log_step`, `validate`, `save`, and
`end_epoch`; `finish` validates, saves and exports once more.

Loss normalisation: each step sums cross-entropy over the scored frames of all micro-batches of
all ranks and divides by their total count (voted before the forward passes, from the batches'
host-side counts), so accumulation and DDP give the same update as one large batch. A step
whose loss or gradient is not finite on any rank is skipped by every rank (one small collective
and the step's only host sync); `max_bad_steps` in a row stop every rank.

Data order: `ups.data_order`: one permutation of every training chunk per epoch, a function of
(seed, epoch), cut into global batches (batch x accumulation x ranks chunks); only the last
partial global batch sits out an epoch. A state records the global batch and the data step,
so a resume on R2 ranks x W2 workers takes the accumulation that keeps the global batch and
trains each remaining chunk of the epoch exactly once (refused, naming the keys, where no
accumulation can keep it).

Schedule: steps per epoch = training chunks // global batch; `max_steps` set means exactly that
many applied optimizer updates (epochs repeat as needed), else `epochs` x steps per epoch. A
skipped (non-finite) step consumes its data but is not an update: the step counter and the LR
do not move. `warmup_steps` is a count or a fraction of the total; a warmup as long as the run
is refused. The schedule is fixed when a run starts: resuming with another `epochs` /
`max_steps` is refused with a message naming the key.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson
import torch
from torch.utils.data import DataLoader

from ups import distributed, preempt
from ups.atomic import atomic_dir, read_json
from ups.batch_table import auto_batch, resolve_batch
from ups.config import ConfigError, TrainConfig
from ups.devices import resolve_device
from ups.hubert_model import ModelSetup, PretrainModel, export, flops_per_audio_second, load_hubert
from ups.pretraining import SUM_NAMES, PretrainingHead, masked_prediction_sums, scored_weight
from ups.progress import bar
from ups.report import Skips
from ups.schedule import check_warmup, lr_at, warmup_steps_for
from ups.train_data import EMPTY, BatchSpec, Catalog, ShardBatches, count_clusters, labels_digest, list_shards
from ups.train_state import drop_aside, latest_state, load_state, save_state, set_aside, take_back

log = logging.getLogger(__name__)

# Keys that may change between a run and its resume without invalidating the state. The
# schedule keys are checked on their own: a change is refused, never silently applied.
RUNTIME_KEYS = (
    "gpus",
    "nodes",
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
    "batch_size",  # the global batch is what a state keeps (see `elastic_accum`)
    "grad_accum",
)
# Summed per step on the device (the loss terms) and on the host (counts), reduced at log time.
DEVICE_SUMS = (*SUM_NAMES, "penalty")
HOST_SUMS = ("micro_batches", "audio_samples")
SAMPLE_RATE = 16000
STATE_FORMAT = 3  # what state.json holds; a state of another format is not resumed


class StopRequested(Exception):
    """Raised by the test hook `stop_after_steps`: the run ends as if killed (no final save)."""


# --- device, precision, crop -------------------------------------------------------------------


def resolve_precision(cfg: TrainConfig, device: torch.device) -> str:
    if device.type != "cuda":
        if cfg.precision in ("bf16", "fp16"):
            log.warning("train.precision=%s ignored on CPU: fp32", cfg.precision)
        return "fp32"
    if cfg.precision == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return cfg.precision


def check_crop(cfg: TrainConfig, feat_extract_norm: str) -> None:
    """Padding is only sound for a CNN that normalises each frame on its own."""
    if cfg.crop == "pad" and feat_extract_norm == "group":
        raise ConfigError(
            "train.crop: pad is not supported for this model: its CNN uses group norm "
            "(feat_extract_norm: group, as facebook/hubert-base-ls960), which normalises over time, "
            "so zero padding changes the real frames' features; use train.crop: shortest"
        )


# --- what a run is made of ------------------------------------------------------------------------


def fingerprint(cfg: TrainConfig, n_clusters: int, labels_dir: Path, shards: list[Path]) -> str:
    """What a state is valid for: the config (bar runtime keys), the labels and the shard names.
    Not the batch split: a state resumes at its own global batch, however it is split.

    The labels count by content (`labels_digest`), not only their chunk ids and offsets: a
    re-fitted k-means keeps those but renumbers the clusters, and a state trained on the old
    numbering must not be resumed (its head would score the new labels below chance)."""
    h = hashlib.sha256()
    conf = {k: v for k, v in asdict(cfg).items() if k not in RUNTIME_KEYS}
    conf.update(n_clusters=n_clusters)
    h.update(repr(sorted(conf.items())).encode())
    h.update(labels_digest(labels_dir).encode())
    h.update("\n".join(p.name for p in shards).encode())
    return h.hexdigest()


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


@dataclass
class Progress:
    """What a state saves and a resume restores."""

    total_steps: int
    step: int = 0  # applied optimizer updates
    epoch: int = 0
    steps_in_epoch: int = 0  # data steps of the current epoch taken (applied, skipped or empty)
    bad_in_row: int = 0
    skipped_steps: int = 0  # non-finite steps: their data is consumed, no update is made
    empty_steps: int = 0  # data steps where some rank had no readable sample
    epoch_chunks: int = 0  # chunks trained on in the current epoch (all ranks once saved)
    epoch_samples: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    epochs: list[dict[str, Any]] = field(default_factory=list)


# --- set-up -----------------------------------------------------------------------------------


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


def setup(
    cfg: TrainConfig,
    d: distributed.Dist,
    device: torch.device,
    audio_dir: Path,
    labels_dir: Path,
    state_dir: Path,
) -> Run:
    """Model, head, optimizer and data, identical on every rank (DDP also broadcasts rank 0's)."""
    from transformers import HubertConfig

    from ups.tiny_model import TINY, write_tiny_hubert

    precision = resolve_precision(cfg, device)
    memory_gib = None
    if device.type == "cuda":
        memory_gib = torch.cuda.get_device_properties(device).total_memory / 2**30
    batch_size, grad_accum = resolve_batch(cfg.batch_size, cfg.grad_accum, memory_gib)
    table_row = auto_batch(memory_gib)[0]
    n_clusters = count_clusters(labels_dir)
    train_shards = list_shards(audio_dir / "train")
    if not train_shards:
        raise FileNotFoundError(f"no training shards in {audio_dir / 'train'}")
    init = cfg.init
    # before any work (the tiny model is written just below)
    tiny = init == "tiny"
    norm = (TINY["feat_extract_norm"] if tiny
            else HubertConfig.from_pretrained(init, revision=cfg.init_revision).feat_extract_norm)
    check_crop(cfg, str(norm))

    torch.manual_seed(cfg.seed)
    if tiny:  # one writer: ranks (and nodes) share the state directory
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
    optimizer = torch.optim.AdamW(
        param_groups(model, cfg.weight_decay),
        lr=cfg.learning_rate,
        betas=(cfg.adam_betas[0], cfg.adam_betas[1]),
        eps=cfg.adam_eps,
    )
    scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
    ddp: Any = model
    if d.enabled:
        from torch.nn.parallel import DistributedDataParallel

        unused = (hubert.config.layerdrop or 0.0) > 0.0
        ddp = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None, find_unused_parameters=unused
        )
    forward = torch.compile(ddp) if cfg.compile else ddp

    spec = BatchSpec(
        batch_size=batch_size,
        max_sample_seconds=cfg.max_sample_seconds,
        min_sample_seconds=cfg.min_sample_seconds,
        crop=cfg.crop,
        mask_prob=cfg.mask_prob,
        mask_length=cfg.mask_length,
        min_masks=cfg.min_masks,
        normalize_audio=cfg.normalize_audio,
    )

    def batches(split: str) -> ShardBatches:
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

    train_ds = batches("train")
    valid_loader = None
    if list_shards(audio_dir / "valid") and (labels_dir / "valid" / "labels.npy").is_file():
        valid_loader = _loader(batches("valid"), cfg, device, cfg.seed + 1, persistent=True)
    if train_ds.n_samples < batch_size * grad_accum * d.world_size:
        raise RuntimeError(
            f"train: no optimizer step can be formed: {train_ds.n_samples} training chunks, global batch "
            f"{batch_size} x accum {grad_accum} x {d.world_size} processes (lower train.batch_size or "
            f"train.grad_accum)"
        )
    r = Run(
        cfg=cfg, d=d, device=device, precision=precision, batch_size=batch_size, grad_accum=grad_accum,
        table_row=table_row, n_clusters=n_clusters,
        fingerprint=fingerprint(cfg, n_clusters, labels_dir, train_shards),
        model=model, original_augment=original_augment, ddp=ddp, forward=forward, optimizer=optimizer,
        scaler=scaler, train_ds=train_ds, loader=_loader(train_ds, cfg, device, cfg.seed),
        valid_loader=valid_loader, flops=flops_per_audio_second(hubert.config, cfg.max_sample_seconds),
        labels_dir=labels_dir,
    )
    return r


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


def planned_steps(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """`max_steps` when set (epochs repeat as needed), else `epochs` x steps per epoch."""
    return cfg.max_steps or cfg.epochs * steps_per_epoch


def _changed_keys(info: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The train.* keys (bar runtime ones) whose values differ from the state's."""
    saved, now = info.get("config", {}), asdict(cfg)
    return sorted(f"train.{k}" for k in now if k not in RUNTIME_KEYS and saved.get(k) != now[k])


def _check_schedule(saved: dict[str, Any], cfg: TrainConfig, found: Path, step: int) -> None:
    before = saved.get("max_steps"), saved.get("epochs")
    if cfg.max_steps == before[0] and (cfg.max_steps is not None or cfg.epochs == before[1]):
        return
    key = "max_steps" if cfg.max_steps != before[0] else "epochs"
    was = before[0] if key == "max_steps" else before[1]
    raise ConfigError(
        f"train.{key} is {getattr(cfg, key)} but the state {found} (step {step}) was made with "
        f"train.{key}={was}: resuming would change the LR schedule mid-run. Set train.{key} back to "
        f"{was} to resume it, or train.resume: false to start afresh (its states are then removed)"
    )


def elastic_accum(global_batch: int, batch_size: int, world_size: int) -> int:
    """The accumulation that keeps a state's global batch on `world_size` processes."""
    per_step = batch_size * world_size
    if global_batch % per_step:
        raise ConfigError(
            f"train: the state was trained at a global batch of {global_batch} chunks, which "
            f"train.batch_size {batch_size} x {world_size} processes (train.gpus x train.nodes) cannot "
            f"make with a whole train.grad_accum; choose train.batch_size and the process count so that "
            f"their product divides {global_batch}, or train.resume: false to start afresh"
        )
    return global_batch // per_step


def choose_state(r: Run, state_dir: Path) -> str | None:
    """Rank 0: the state this run resumes (its path), or None for a fresh start. Nothing is
    deleted here: states of another config or trainer are set aside (`train_state.set_aside`)
    and a set-aside run of this fingerprint is taken back."""
    found = latest_state(state_dir)
    if found is not None and r.cfg.resume:
        info = read_json(found / "state.json")
        if info.get("format") != STATE_FORMAT:
            log.warning("train: state %s is from another trainer (format %s, now %d); starting afresh",
                        found, info.get("format", 1), STATE_FORMAT)
        elif info.get("fingerprint") == r.fingerprint:
            return str(found)
        else:
            log.warning("train: state %s was made with another config or data (%s); starting afresh",
                        found, ", ".join(_changed_keys(info, r.cfg)) or "labels or shards changed")
    back = take_back(state_dir, r.fingerprint) if r.cfg.resume else None
    if back is not None:
        log.info("train: took back the states of this config set aside earlier (%s)", back.name)
        return str(back)
    moved = set_aside(state_dir)
    if moved:
        log.warning("train: set the earlier states %s aside in %s; they are removed once this run "
                    "saves its first state", ", ".join(moved), state_dir / "aside")
    return None


def resume(r: Run, state_dir: Path) -> Progress:
    """The state rank 0 chose, restored exactly on every rank, at its global batch (the
    accumulation adapts to this run's processes); else a fresh start."""
    cfg, d = r.cfg, r.d
    chosen = choose_state(r, state_dir) if d.is_main else None
    chosen = distributed.broadcast_json(d, chosen)
    if chosen is None:
        distributed.barrier(d)
        torch.manual_seed(cfg.seed * 1_000_003 + d.rank + 1)  # dropout / layerdrop differ per rank
        return _fresh_progress(r)
    found = Path(chosen)
    _test_delay_load(d.rank)
    st = load_state(found)
    distributed.barrier(d)  # every rank has read the state before anything may move
    info = st["info"]
    _check_schedule(info["config"], cfg, found, info["step"])
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
    prog = Progress(
        total_steps=info["total_steps"],
        step=info["step"],
        epoch=info["epoch"],
        steps_in_epoch=info["steps_in_epoch"],
        bad_in_row=info["bad_in_row"],
        skipped_steps=info["skipped_steps"],
        empty_steps=info["empty_steps"],
        # the saved epoch counters are every rank's together: rank 0 carries them on
        epoch_chunks=info["epoch_chunks"] if d.is_main else 0,
        epoch_samples=info["epoch_samples"] if d.is_main else 0,
        history=st["history"],
        epochs=info["epochs"],
    )
    cpu_key, cuda_key = f"cpu.rank{d.rank}", f"cuda.rank{d.rank}"
    if cpu_key in st["rng"]:
        torch.set_rng_state(st["rng"][cpu_key])
        if r.device.type == "cuda" and cuda_key in st["rng"]:
            torch.cuda.set_rng_state(st["rng"][cuda_key], r.device)
    else:  # a state of fewer ranks: this rank's dropout stream starts anew
        torch.manual_seed(cfg.seed * 1_000_003 + d.rank + 1 + prog.step)
    log.info("train: resumed from %s (step %d, epoch %d, data step %d of %d)", found, prog.step, prog.epoch,
             prog.steps_in_epoch, r.steps_per_epoch)
    _log_schedule(r, prog)
    return prog


def _fresh_progress(r: Run) -> Progress:
    total = planned_steps(r.cfg, r.steps_per_epoch)
    r.warmup_steps = warmup_steps_for(r.cfg.warmup_steps, total)
    check_warmup(r.warmup_steps, total)
    prog = Progress(total_steps=total)
    _log_schedule(r, prog)
    return prog


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


def _test_delay_load(rank: int) -> None:
    """Test hook: UPS_TEST_LOAD_DELAY=<rank>:<seconds> delays that rank's reading of the state."""
    spec = os.environ.get("UPS_TEST_LOAD_DELAY")
    if spec and int(spec.split(":")[0]) == rank:
        time.sleep(float(spec.split(":")[1]))


# --- the loop ---------------------------------------------------------------------------------


def train(
    r: Run, prog: Progress, model_dir: Path, state_dir: Path, live_dir: Path, stop_after_steps: int | None
) -> dict[str, Any]:
    """Steps until the schedule's last update, epoch after epoch, then `finish`."""
    live = _Live(live_dir, r.d.is_main)
    for rec in prog.history:
        live.log(rec)
    live.flush()
    skips = Skips("train")
    _merge(skips, dict(r.train_ds.catalog_skips))
    sums = _Sums(r.device)
    progress = bar(desc="train", unit="step", total=prog.total_steps, initial=prog.step)
    r.train_ds.set_start(prog.epoch, prog.steps_in_epoch, r.global_batch)
    batches = iter(r.loader)  # one iterator (and one fork of the workers) for the whole run
    nan_step = _nan_injection(r.d.rank)
    trace = _Trace(r.d.rank)
    taken = 0  # data steps this process took (the NaN test hook counts these)
    while prog.step < prog.total_steps:
        if prog.steps_in_epoch == r.steps_per_epoch:
            end_epoch(r, prog, live)
        micro = next_micro_batches(batches, r.grad_accum, skips, prog)
        trace.write(prog, micro)
        applied = data_step(r, prog, micro, sums, nan_step == taken)
        taken += 1
        if not applied:
            continue
        progress.update(1)
        if prog.step % r.cfg.log_every_steps == 0 or prog.step == prog.total_steps:
            log_step(r, prog, sums, live)
        if r.valid_loader is not None and prog.step % r.cfg.valid_every_steps == 0:
            _record(prog, live, {"step": prog.step, **validate(r)})
            sums.restart_clock()
        if prog.step % r.cfg.save_every_steps == 0:
            save(r, prog, state_dir)
            sums.restart_clock()
        if prog.step % r.cfg.log_every_steps == 0 and preempt.requested(r.d):  # ups/preempt.py
            save(r, prog, state_dir)
            raise preempt.Preempted(prog.step)
        if stop_after_steps is not None and prog.step >= stop_after_steps:
            raise StopRequested(f"stopped after step {prog.step}")
    if prog.steps_in_epoch > 0:
        end_epoch(r, prog, live)
    progress.close()
    return finish(r, prog, skips, live, model_dir, state_dir)


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


def data_step(r: Run, prog: Progress, micro: list[dict[str, Any]], sums: _Sums, inject_nan: bool) -> bool:
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
    r: Run, prog: Progress, micro: list[dict[str, Any]], total_weight: float, sums: _Sums, inject_nan: bool
) -> bool:
    """Forward and backward over the micro-batches, then one optimizer update or a skip that
    every rank takes together (the step's only read of a device value); True when applied."""
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
    if r.scaler is not None:
        r.scaler.unscale_(r.optimizer)
    params = [p for p in r.model.parameters() if p.requires_grad]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
    flag = (bad | ~torch.isfinite(grad_norm)).to(torch.float64).reshape(1)
    if distributed.all_max(d, flag).item() > 0:
        r.optimizer.zero_grad(set_to_none=True)
        if r.scaler is not None:
            r.scaler.update(r.scaler.get_scale() * r.scaler.get_backoff_factor())
        prog.bad_in_row += 1
        prog.skipped_steps += 1
        log.warning("train: update %d skipped: loss or gradient not finite on some rank (%d in a row)",
                    prog.step, prog.bad_in_row)
        if prog.bad_in_row >= cfg.max_bad_steps:
            raise RuntimeError(f"train: {prog.bad_in_row} non-finite steps in a row; every rank stops "
                               f"(lower train.learning_rate or check the data)")
        return False
    lr = lr_at(prog.step, peak=cfg.learning_rate, warmup_steps=r.warmup_steps,
               total_steps=prog.total_steps, kind=cfg.lr_schedule)
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


class _Sums:
    """The logged sums since the last log step: loss terms on the device, counts on the host."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.grad_norm: torch.Tensor | None = None
        self._reset()
        self.restart_clock()

    def _reset(self) -> None:
        self.loss = torch.zeros(len(DEVICE_SUMS), dtype=torch.float64, device=self.device)
        self.micro_batches = 0
        self.audio_samples = 0

    def restart_clock(self) -> None:
        self.t0 = time.perf_counter()

    def add(self, loss_sums: torch.Tensor, penalty: torch.Tensor, n_samples: int) -> None:
        self.loss += torch.cat([loss_sums, penalty.double().reshape(1)])
        self.micro_batches += 1
        self.audio_samples += n_samples

    def reduce(self, d: distributed.Dist) -> tuple[dict[str, float], float]:
        """Every rank's sums (one collective, read back once) and the seconds since the clock."""
        host = torch.tensor([self.micro_batches, self.audio_samples], dtype=torch.float64, device=self.device)
        tot = distributed.all_sum(d, torch.cat([self.loss, host])).tolist()
        seconds = time.perf_counter() - self.t0
        self._reset()
        self.restart_clock()
        return dict(zip((*DEVICE_SUMS, *HOST_SUMS), tot, strict=True)), seconds


def log_step(r: Run, prog: Progress, sums: _Sums, live: _Live) -> None:
    v, seconds = sums.reduce(r.d)
    grad_norm = float(sums.grad_norm) if sums.grad_norm is not None else float("nan")
    rec = {
        "step": prog.step,
        "epoch": prog.epoch,
        "lr": r.optimizer.param_groups[0]["lr"],
        "grad_norm": grad_norm,
        "skipped_steps": prog.skipped_steps,
        "train/loss": v["ce_masked"] / max(v["n_masked"], 1.0),
        "train/loss_unmasked": v["ce_unmasked"] / max(v["n_unmasked"], 1.0),
        "train/acc_masked": v["correct_masked"] / max(v["n_masked"], 1.0),
        "train/acc_unmasked": v["correct_unmasked"] / max(v["n_unmasked"], 1.0),
        "train/masked_fraction": v["n_masked"] / max(v["n_masked"] + v["n_unmasked"], 1.0),
        "train/feature_penalty": v["penalty"] / max(v["micro_batches"], 1.0),
    }
    # Timings go to dvclive and the log only: the state's history (a tracked output) stays
    # the same bytes when a run is repeated.
    rate = v["audio_samples"] / SAMPLE_RATE / max(seconds, 1e-9)
    timing = {"train/audio_s_per_s": rate, "train/tflops": rate * r.flops / 1e12}
    _record(prog, live, rec, timing)
    log.info("train: step %d loss %.4f acc_masked %.3f %.0f audio-s/s", prog.step, rec["train/loss"],
             rec["train/acc_masked"], rate)


def _record(prog: Progress, live: _Live, rec: dict[str, Any], timing: dict[str, float] | None = None) -> None:
    prog.history.append(rec)
    live.log({**rec, **(timing or {})})
    live.flush()


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
    t = dict(zip(SUM_NAMES, distributed.all_sum(r.d, sums).tolist(), strict=True))
    return {
        "valid/loss": t["ce_masked"] / max(t["n_masked"], 1.0),
        "valid/acc_masked": t["correct_masked"] / max(t["n_masked"], 1.0),
        "valid/loss_unmasked": t["ce_unmasked"] / max(t["n_unmasked"], 1.0),
        "valid/acc_unmasked": t["correct_unmasked"] / max(t["n_unmasked"], 1.0),
    }


def end_epoch(r: Run, prog: Progress, live: _Live | None = None) -> None:
    """Record what the epoch trained on (all ranks; `complete`: all its steps ran, rather than
    the schedule's end or a dry stream), then move on to the next epoch."""
    steps = prog.steps_in_epoch
    complete = steps >= r.steps_per_epoch
    chunks, samples = distributed.host_sum(r.d, [float(prog.epoch_chunks), float(prog.epoch_samples)])
    rec = {
        "epoch": prog.epoch,
        "steps": steps,
        "complete": complete,
        "chunks_used": int(chunks),
        "chunks_available": r.train_ds.n_samples,
        "audio_seconds": samples / SAMPLE_RATE,
        "hours": samples / SAMPLE_RATE / 3600,
    }
    prog.epochs.append(rec)
    if live is not None:
        _record(prog, live, {"step": prog.step, **{f"epochs/{k}": v for k, v in rec.items()
                                                     if k not in ("epoch", "complete")}})
    log.info("train: epoch %d: %d steps, %d of %d chunks, %.2f h of audio", prog.epoch, steps,
             rec["chunks_used"], rec["chunks_available"], rec["hours"])
    prog.epoch += 1
    prog.steps_in_epoch = prog.epoch_chunks = prog.epoch_samples = 0


# --- save, finish, export ---------------------------------------------------------------------


def save(r: Run, prog: Progress, state_dir: Path) -> None:
    """The whole state (every rank's RNG; the epoch counters summed over ranks), by rank 0."""
    d = r.d
    rng = {f"cpu.rank{k}": s for k, s in enumerate(distributed.gather_rng(d, torch.get_rng_state()))}
    if r.device.type == "cuda":
        for k, s in enumerate(distributed.gather_rng(d, torch.cuda.get_rng_state(r.device))):
            rng[f"cuda.rank{k}"] = s
    chunks, samples = distributed.host_sum(d, [float(prog.epoch_chunks), float(prog.epoch_samples)])
    if d.is_main:
        save_state(
            state_dir,
            prog.step,
            model=r.model.state_dict(),
            optimizer=r.optimizer.state_dict(),
            rng=rng,
            info={
                "format": STATE_FORMAT,
                "total_steps": prog.total_steps,
                "epoch": prog.epoch,
                "steps_in_epoch": prog.steps_in_epoch,
                "global_batch": r.global_batch,
                "warmup_steps": r.warmup_steps,
                "empty_steps": prog.empty_steps,
                "epoch_chunks": int(chunks),
                "epoch_samples": int(samples),
                "epochs": prog.epochs,
                "bad_in_row": prog.bad_in_row,
                "skipped_steps": prog.skipped_steps,
                "scaler": r.scaler.state_dict() if r.scaler is not None else None,
                "fingerprint": r.fingerprint,
                "config": asdict(r.cfg),
                "batch_size": r.batch_size,  # as resolved (train.batch_size may be auto)
                "grad_accum": r.grad_accum,
                "world_size": d.world_size,
            },
            history=prog.history,
        )
        gone = drop_aside(state_dir)  # the new run has a state of its own now
        if gone:
            log.warning("train: removed the earlier states set aside: %s", ", ".join(gone))
    distributed.barrier(d)


def _last_metrics(history: list[dict[str, Any]]) -> dict[str, Any]:
    """The last training log and the last validation, one dict (the validation's step wins)."""
    last: dict[str, Any] = {}
    for key in ("train/loss", "valid/loss"):
        last.update(next((h for h in reversed(history) if key in h), {}))
    return last


def finish(
    r: Run, prog: Progress, skips: Skips, live: _Live, model_dir: Path, state_dir: Path
) -> dict[str, Any]:
    """Final validation and state, the export (rank 0) and the summary."""
    if prog.step == 0:
        raise RuntimeError("train: no batch could be formed (too little data for train.batch_size?)")
    validated = [h["step"] for h in prog.history if "valid/loss" in h]
    if r.valid_loader is not None and (not validated or validated[-1] != prog.step):
        _record(prog, live, {"step": prog.step, **validate(r)})
    save(r, prog, state_dir)
    skips.log_summary()
    summary = {
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
        "last": _last_metrics(prog.history),
        "flops_per_audio_second": r.flops,
    }
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


# --- small helpers ----------------------------------------------------------------------------


def _nan_injection(rank: int) -> int | None:
    """Test hook: UPS_TEST_NAN_AT=<rank>:<k> makes that rank's loss NaN at its k-th data step
    (0-based, counted from this process's start)."""
    spec = os.environ.get("UPS_TEST_NAN_AT")
    if not spec:
        return None
    r, s = spec.split(":")
    return int(s) if int(r) == rank else None


class _Trace:
    """Test hook: UPS_TEST_TRACE_DIR=<dir> makes each rank append, per data step, the chunk ids
    it trained on to `<dir>/rank<k>.jsonl` (flushed at once, so a killed run leaves its steps)."""

    def __init__(self, rank: int) -> None:
        where = os.environ.get("UPS_TEST_TRACE_DIR")
        self.fh = open(Path(where) / f"rank{rank}.jsonl", "ab") if where else None  # noqa: SIM115

    def write(self, prog: Progress, micro: list[dict[str, Any]]) -> None:
        if self.fh is not None:
            ids = [c for b in micro for c in b["chunk_ids"]]
            self.fh.write(orjson.dumps({"epoch": prog.epoch, "step": prog.steps_in_epoch, "update": prog.step,
                                        "ids": ids}) + b"\n")
            self.fh.flush()


def _merge(skips: Skips, counts: dict[str, int]) -> None:
    for reason, n in counts.items():
        skips.add(reason, n=n)


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
            if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                self.live.log_metric(k, float(v))

    def flush(self) -> None:
        if self.live is not None:
            self.live.make_summary()

    def end(self) -> None:
        if self.live is not None:
            self.live.end()
