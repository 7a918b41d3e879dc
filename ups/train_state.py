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
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ups.atomic import _fsync_dir, read_json, write_json

KEEP = 2
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
