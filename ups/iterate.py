"""`make iterate` / `ups iterate`: the next HuBERT iteration, from the continued model.

fairseq's recipe trains iteration n + 1 on k-means labels of a hidden layer of iteration n. Here:
1. the continued model (`models/hubert-cpt`) is copied to `models/iter/<sha256[:12]>/`, a name
   made from its weights and config, so `train.init` names exactly those weights (a later
   training gives a new name, and so new labels) and the next training cannot overwrite its own
   initial model;
2. the pipeline runs again with `train.init` = that copy, `features.kind: hubert` and
   `features.hubert_model: init`: fit-kmeans and assign-labels cluster layer `features.layer`
   (`--layer`) of the continued model, train continues it on those labels, evaluate compares it
   with iteration n. Audio is not decoded again (prepare-audio's inputs are unchanged).

In a Git repository step 2 is `dvc exp run -S ...` (an experiment, as `make train`); in a DVC
project without Git (the demo's runs/demo), where DVC has no experiments, the same overrides are
written into params.yaml (comments kept) and `dvc repro` runs.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from ups.atomic import atomic_dir

log = logging.getLogger(__name__)

SNAPSHOT_ROOT = Path("models/iter")
WEIGHT_FILES = ("config.json", "model.safetensors")


def model_digest(model_dir: Path) -> str:
    """sha256 over the files from_pretrained reads (config and weights)."""
    h = hashlib.sha256()
    for name in WEIGHT_FILES:
        path = model_dir / name
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: run `make train` (or `ups demo`) first")
        h.update(name.encode() + b"\0")
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def snapshot(run_dir: Path, model_dir: Path) -> Path:
    """Copy `model_dir` to `models/iter/<digest[:12]>` under run_dir (once); return it, relative."""
    rel = SNAPSHOT_ROOT / model_digest(run_dir / model_dir)[:12]
    target = run_dir / rel
    if not target.is_dir():
        with atomic_dir(target) as tmp:
            for p in sorted((run_dir / model_dir).iterdir()):
                if p.is_file():
                    shutil.copy2(p, tmp / p.name)
    return rel


def overrides(init: Path, layer: int | None, extra: list[str]) -> list[str]:
    """`key=value` overrides of the next iteration (extra ones last, so they win)."""
    out = [f"train.init={init.as_posix()}", "features.kind=hubert", "features.hubert_model=init"]
    if layer is not None:
        out.append(f"features.layer={layer}")
    for item in extra:
        if "=" not in item or not item.split("=", 1)[0]:
            raise ValueError(f"--set takes key=value, got {item!r}")
    return out + list(extra)


def apply_overrides(params_path: Path, items: list[str]) -> None:
    """Write `a.b=value` into params.yaml as `dvc exp run -S` does (value parsed as YAML,
    comments and order kept: ruamel.yaml, which DVC itself uses)."""
    from ruamel.yaml import YAML

    ry = YAML()
    data: Any = ry.load(params_path.read_text(encoding="utf-8"))
    for item in items:
        key, value = item.split("=", 1)
        *parents, leaf = key.split(".")
        node = data
        for part in parents:
            if part not in node:
                raise KeyError(f"{params_path} has no section {key.rsplit('.', 1)[0]!r}")
            node = node[part]
        node[leaf] = yaml.safe_load(value)
    with open(params_path, "w", encoding="utf-8") as fh:
        ry.dump(data, fh)


def command(run_dir: Path, items: list[str]) -> list[str]:
    """The DVC command line: an experiment in a Git repo, else a plain repro."""
    dvc = [sys.executable, "-m", "dvc"]
    if is_git(run_dir):
        return [*dvc, "exp", "run", *(a for item in items for a in ("-S", item))]
    return [*dvc, "repro"]


def is_git(run_dir: Path) -> bool:
    res = subprocess.run(["git", "rev-parse", "--is-inside-work-tree"], cwd=run_dir,
                         capture_output=True, text=True)
    return res.returncode == 0 and res.stdout.strip() == "true" and not _no_scm(run_dir)


def _no_scm(run_dir: Path) -> bool:
    cfg = run_dir / ".dvc" / "config"
    return cfg.is_file() and "no_scm = true" in cfg.read_text(encoding="utf-8").replace("True", "true")


def run(run_dir: Path, *, layer: int | None = None, extra: list[str] | None = None,
        model_dir: Path = Path("models/hubert-cpt"), dry_run: bool = False) -> int:
    run_dir = run_dir.resolve()
    init = snapshot(run_dir, model_dir)
    items = overrides(init, layer, extra or [])
    cmd = command(run_dir, items)
    log.info("iterate: next iteration from %s (copy of %s): %s", init, model_dir, " ".join(items))
    if dry_run:
        print(" ".join(cmd[2:] if cmd[:2] == [sys.executable, "-m"] else cmd))
        return 0
    if cmd[-1] == "repro":
        apply_overrides(run_dir / "params.yaml", items)
    # dvc.yaml's `python -m ups ...` must be this interpreter (the venv's), whatever PATH says
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")}
    return subprocess.run(cmd, cwd=run_dir, env=env).returncode
