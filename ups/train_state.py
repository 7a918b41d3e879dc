"""The whole training state on disk, without pickle: safetensors for tensors, JSON for the rest.

`<state_dir>/step-<N>/` holds model.safetensors (HuBERT + head), optimizer.safetensors plus the
param groups in state.json, rng.safetensors (every rank's torch CPU/CUDA generator state),
state.json (step, epoch, data position, scaler, counters, config, fingerprint) and history.json
(the logged metrics so far); `done.json` is written last. A state is built in
`step-<N>.partial` and renamed, then `latest.json` is pointed at it, then older states beyond
the previous good one are removed, so a kill at any point leaves at least one complete state.

`latest.json` is the authority on which state to resume; the trainer compares its fingerprint
with the run's. A fresh start does not delete anything: it moves the earlier states into
`aside/<fingerprint>/` (`set_aside`), and they are removed only once the new run has saved its
own first state (`drop_aside`, each named in the log). So a change of config, then a kill before
the first save, leaves the old states to resume when the config comes back (`take_back`); the
states at the top of the directory are always one run's, and pruning by step never deletes the
state just written.

Beside the files, the bookkeeping: where a run stands (`Progress`: saved in state.json, restored
on resume), what a state is valid for (`fingerprint`) and which state a run resumes
(`choose_state`).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from ups.atomic import _fsync_dir, read_json, write_json
from ups.train_data import labels_digest

if TYPE_CHECKING:
    from ups.config import TrainConfig

log = logging.getLogger(__name__)

KEEP = 2
STATE_FORMAT = 3  # what state.json holds; a state of another format is not resumed
# Keys that may change between a run and its resume without invalidating the state. The
# schedule keys are checked on their own (`ups.schedule.check_same_schedule`): a change is
# refused, never silently applied.
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
    "batch_size",  # the global batch is what a state keeps (`ups.data_order.elastic_accum`)
    "grad_accum",
)
_DIR = re.compile(r"^step-(\d{9})$")


def _tensors(d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().contiguous() for k, v in d.items()}


def optimizer_to_files(sd: dict[str, Any]) -> tuple[dict[str, torch.Tensor], list[dict[str, Any]]]:
    tensors: dict[str, torch.Tensor] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            t = value if isinstance(value, torch.Tensor) else torch.tensor(value)
            tensors[f"{idx}.{name}"] = t
    groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in sd["param_groups"]]
    return _tensors(tensors), groups


def optimizer_from_files(tensors: dict[str, torch.Tensor], groups: list[dict[str, Any]]) -> dict[str, Any]:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, t in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = t
    fixed = [{k: (tuple(v) if k == "betas" else v) for k, v in g.items()} for g in groups]
    return {"state": state, "param_groups": fixed}


def save_state(
    state_dir: Path,
    step: int,
    *,
    model: dict[str, torch.Tensor],
    optimizer: dict[str, Any],
    rng: dict[str, torch.Tensor],
    info: dict[str, Any],
    history: list[dict[str, Any]],
) -> Path:
    """Write one complete state for `step` and make it the latest; returns its directory."""
    state_dir = Path(state_dir)
    name = f"step-{step:09d}"
    final = state_dir / name
    partial = state_dir / (name + ".partial")
    replaced = state_dir / (name + ".replaced")
    for stale in [partial, *state_dir.glob("step-*.replaced")]:  # what a kill left
        if stale.is_dir():
            shutil.rmtree(stale)
    partial.mkdir(parents=True)
    save_file(_tensors(model), str(partial / "model.safetensors"))
    opt_tensors, groups = optimizer_to_files(optimizer)
    save_file(opt_tensors, str(partial / "optimizer.safetensors"))
    save_file(_tensors(rng), str(partial / "rng.safetensors"))
    write_json(partial / "state.json", {**info, "step": step, "optimizer_param_groups": groups})
    write_json(partial / "history.json", history)
    write_json(partial / "done.json", {"step": step})
    for f in partial.iterdir():
        fd = os.open(f, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    if final.exists():  # the same step again (the final save after a save step): set the old
        os.replace(final, replaced)  # one aside by name, so a kill never meets a half-deleted state
    os.replace(partial, final)
    _fsync_dir(state_dir)
    write_json(state_dir / "latest.json", {"step": step, "dir": name, "fingerprint": info.get("fingerprint")})
    if replaced.exists():
        shutil.rmtree(replaced)
    others = [p for p in complete_states(state_dir) if p != final]
    for old in others[: max(0, len(others) - (KEEP - 1))]:
        shutil.rmtree(old)
    return final


def complete_states(state_dir: Path) -> list[Path]:
    """Complete state directories (done.json present), oldest first."""
    if not Path(state_dir).is_dir():
        return []
    found = []
    for p in Path(state_dir).iterdir():
        m = _DIR.match(p.name)
        if m and p.is_dir() and (p / "done.json").is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def latest_state(state_dir: Path) -> Path | None:
    """The state `latest.json` names when it is complete; else the newest complete one (a kill
    between the rename and `latest.json`, or a directory from before `latest.json`)."""
    pointer = Path(state_dir) / "latest.json"
    if pointer.is_file():
        try:
            named = Path(state_dir) / str(read_json(pointer)["dir"])
        except (ValueError, KeyError, TypeError):
            named = None
        if named is not None and _DIR.match(named.name) and (named / "done.json").is_file():
            return named
    states = complete_states(state_dir)
    return states[-1] if states else None


ASIDE = "aside"


def _state_entries(state_dir: Path) -> list[Path]:
    """The state directories (complete, partial or replaced) at the top of `state_dir`."""
    if not state_dir.is_dir():
        return []
    return [p for p in sorted(state_dir.iterdir())
            if p.is_dir() and _DIR.match(p.name.removesuffix(".partial").removesuffix(".replaced"))]


def state_fingerprint(state_dir: Path) -> str | None:
    """The fingerprint `latest.json` records (None without one)."""
    try:
        return str(read_json(Path(state_dir) / "latest.json")["fingerprint"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def set_aside(state_dir: Path) -> list[str]:
    """Move every state and `latest.json` into `aside/<fingerprint>/`; returns the names moved."""
    state_dir = Path(state_dir)
    entries = _state_entries(state_dir)
    pointer = state_dir / "latest.json"
    if not entries and not pointer.exists():
        return []
    dest = state_dir / ASIDE / (state_fingerprint(state_dir) or "unknown")[:16]
    if dest.exists():  # an older copy of the same run: what is at the top is newer
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    for p in entries:
        os.replace(p, dest / p.name)
    if pointer.exists():
        os.replace(pointer, dest / "latest.json")
    _fsync_dir(state_dir)
    return [p.name for p in entries]


def take_back(state_dir: Path, fingerprint: str) -> Path | None:
    """A set-aside run of this fingerprint back at the top (what is there goes aside); its
    latest complete state, or None when no such run was set aside."""
    state_dir = Path(state_dir)
    src = state_dir / ASIDE / fingerprint[:16]
    if state_fingerprint(src) != fingerprint or latest_state(src) is None:
        return None
    set_aside(state_dir)
    for p in _state_entries(src):
        os.replace(p, state_dir / p.name)
    os.replace(src / "latest.json", state_dir / "latest.json")
    shutil.rmtree(src)
    _fsync_dir(state_dir)
    return latest_state(state_dir)


def drop_aside(state_dir: Path) -> list[str]:
    """Remove what `set_aside` kept; returns the names removed (`<fingerprint>/step-...`)."""
    root = Path(state_dir) / ASIDE
    if not root.is_dir():
        return []
    gone = [f"{d.name}/{p.name}" for d in sorted(root.iterdir()) if d.is_dir() for p in _state_entries(d)]
    shutil.rmtree(root)
    return gone


def load_state(path: Path) -> dict[str, Any]:
    """Everything `save_state` wrote, as tensors and plain values."""
    path = Path(path)
    info = read_json(path / "state.json")
    return {
        "model": load_file(str(path / "model.safetensors")),
        "optimizer": optimizer_from_files(
            load_file(str(path / "optimizer.safetensors")), info.pop("optimizer_param_groups")
        ),
        "rng": load_file(str(path / "rng.safetensors")),
        "info": info,
        "history": read_json(path / "history.json"),
    }


# --- bookkeeping: where a run stands, what a state is valid for, which state to resume ---------


@dataclass
class Progress:
    """Where a run stands: what a state saves and a resume restores."""

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

    @classmethod
    def restore(cls, info: dict[str, Any], history: list[dict[str, Any]], is_main: bool) -> Progress:
        """The progress a state recorded (`info`: its state.json). The saved epoch counters are
        every rank's together: rank 0 carries them on, the other ranks start theirs at 0."""
        return cls(
            total_steps=info["total_steps"],
            step=info["step"],
            epoch=info["epoch"],
            steps_in_epoch=info["steps_in_epoch"],
            bad_in_row=info["bad_in_row"],
            skipped_steps=info["skipped_steps"],
            empty_steps=info["empty_steps"],
            epoch_chunks=info["epoch_chunks"] if is_main else 0,
            epoch_samples=info["epoch_samples"] if is_main else 0,
            history=history,
            epochs=info["epochs"],
        )

    def info(self, epoch_chunks: int, epoch_samples: int) -> dict[str, Any]:
        """The progress part of state.json, with the epoch counters summed over ranks."""
        return {
            "format": STATE_FORMAT,
            "total_steps": self.total_steps,
            "epoch": self.epoch,
            "steps_in_epoch": self.steps_in_epoch,
            "empty_steps": self.empty_steps,
            "epoch_chunks": epoch_chunks,
            "epoch_samples": epoch_samples,
            "epochs": self.epochs,
            "bad_in_row": self.bad_in_row,
            "skipped_steps": self.skipped_steps,
        }


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


def changed_keys(info: dict[str, Any], cfg: TrainConfig) -> list[str]:
    """The train.* keys (bar runtime ones) whose values differ from the state's."""
    saved, now = info.get("config", {}), asdict(cfg)
    return sorted(f"train.{k}" for k in now if k not in RUNTIME_KEYS and saved.get(k) != now[k])


def choose_state(state_dir: Path, fingerprint: str, cfg: TrainConfig) -> str | None:
    """Rank 0: the state this run resumes (its path), or None for a fresh start. Nothing is
    deleted here: states of another config or trainer are set aside (`set_aside`) and a
    set-aside run of this fingerprint is taken back."""
    found = latest_state(state_dir)
    if found is not None and cfg.resume:
        info = read_json(found / "state.json")
        if info.get("format") != STATE_FORMAT:
            log.warning("train: state %s is from another trainer (format %s, now %d); starting afresh",
                        found, info.get("format", 1), STATE_FORMAT)
        elif info.get("fingerprint") == fingerprint:
            return str(found)
        else:
            log.warning("train: state %s was made with another config or data (%s); starting afresh",
                        found, ", ".join(changed_keys(info, cfg)) or "labels or shards changed")
    back = take_back(state_dir, fingerprint) if cfg.resume else None
    if back is not None:
        log.info("train: took back the states of this config set aside earlier (%s)", back.name)
        return str(back)
    moved = set_aside(state_dir)
    if moved:
        log.warning("train: set the earlier states %s aside in %s; they are removed once this run "
                    "saves its first state", ", ".join(moved), state_dir / "aside")
    return None
