"""`make demo`: the real pipeline, every stage, on the bundled sample corpus, on the CPU.

The demo is its own DVC project under `runs/demo` (`dvc init --no-scm`): a copy of this repo's
dvc.yaml and `ups/` code, and a params.yaml made of the repo's params.yaml with the overrides in
`ups/shipped/demo.yaml` (local source, a few minutes of audio, a tiny model). So the repo's
params.yaml, dvc.lock and outputs are never touched, and a second `make demo` re-runs only the
stages whose code or parameters changed since the last one.
"""

from __future__ import annotations

import filecmp
import logging
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ups.atomic import write_bytes

log = logging.getLogger(__name__)

PACKAGE_PARENT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", "sample")


def project_root(cwd: Path | None = None) -> Path:
    """The checkout whose dvc.yaml, params.yaml and sample corpus the demo copies.

    From a source checkout (`pip install -e .`, `make setup`) that is the folder above the
    package. An installed wheel (the image's /opt/venv) sits in site-packages, where none of
    these is: then the current directory, which must be a checkout (the image mounts one).
    """
    for root in (PACKAGE_PARENT, (cwd or Path.cwd()).resolve()):
        if all((root / name).exists() for name in PROJECT_FILES):
            return root
    raise FileNotFoundError(f"`ups demo` needs a checkout of the ups repository "
                            f"({', '.join(PROJECT_FILES)}): run it from one (the package is "
                            f"installed in {PACKAGE_PARENT})")


# As in the repo's .dvc/config: each output is a hard link to (or, across file systems, a symlink
# into) its cache object, so the demo's shards are stored once (docs/reproducibility.md).
CACHE_TYPE = "hardlink,symlink"


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """`over` wins key by key; nested mappings are merged, not replaced."""
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def demo_params(repo: Path | None = None) -> dict[str, Any]:
    repo = repo or project_root()
    base = yaml.safe_load((repo / "params.yaml").read_text(encoding="utf-8"))
    over = yaml.safe_load(resources.files("ups").joinpath("shipped/demo.yaml").read_text(encoding="utf-8"))
    params = deep_merge(base, over)
    root = Path(params["dataset"]["local_root"])
    params["dataset"]["local_root"] = str(root if root.is_absolute() else (repo / root).resolve())
    return params


def _sync_tree(src: Path, dst: Path) -> None:
    """Mirror the `ups` package into the run dir, rewriting only files whose bytes changed."""
    for path in sorted(src.rglob("*")):
        if "__pycache__" in path.parts or path.suffix == ".pyc":
            continue
        target = dst / path.relative_to(src)
        if path.is_dir():
            target.mkdir(parents=True, exist_ok=True)
        elif not target.exists() or not filecmp.cmp(path, target, shallow=False):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target)
    for target in sorted(dst.rglob("*"), reverse=True):  # drop files removed from the package
        if "__pycache__" in target.parts:
            continue
        if not (src / target.relative_to(dst)).exists():
            shutil.rmtree(target) if target.is_dir() else target.unlink()


def prepare(run_dir: Path, repo: Path | None = None) -> Path:
    """Lay out the demo project: dvc init, code, dvc.yaml, params.yaml. Idempotent."""
    repo = repo or project_root()
    run_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    if not (run_dir / ".dvc").is_dir():
        subprocess.run([sys.executable, "-m", "dvc", "init", "--no-scm", "-q"], cwd=run_dir,
                       check=True, env=env)
    if not re.search(rf'^\s*type\s*=\s*"?{CACHE_TYPE}"?\s*$',
                     (run_dir / ".dvc" / "config").read_text(encoding="utf-8"), re.MULTILINE):
        subprocess.run([sys.executable, "-m", "dvc", "config", "cache.type", CACHE_TYPE], cwd=run_dir,
                       check=True, env=env)
        if (run_dir / "dvc.lock").is_file():  # a demo run before links: turn its copies into links
            subprocess.run([sys.executable, "-m", "dvc", "checkout", "--relink", "-q"], cwd=run_dir,
                           check=False, env=env)
    _sync_tree(repo / "ups", run_dir / "ups")
    dvc_yaml = (repo / "dvc.yaml").read_bytes()
    if not (run_dir / "dvc.yaml").exists() or (run_dir / "dvc.yaml").read_bytes() != dvc_yaml:
        write_bytes(run_dir / "dvc.yaml", dvc_yaml)
    params = yaml.safe_dump(demo_params(repo), sort_keys=False, allow_unicode=True).encode()
    header = b"# Generated by `ups demo` from params.yaml + ups/shipped/demo.yaml; edits are overwritten.\n"
    if not (run_dir / "params.yaml").exists() or (run_dir / "params.yaml").read_bytes() != header + params:
        write_bytes(run_dir / "params.yaml", header + params)
    return run_dir


def run(run_dir: Path, *, dry_run: bool = False) -> int:
    run_dir = prepare(run_dir.resolve())
    log.info("demo project ready in %s", run_dir)
    if dry_run:
        return 0
    # dvc.yaml's `python -m ups` must be this interpreter (the venv's), whatever PATH says.
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "PYTHONPATH": str(run_dir),
           "PATH": bin_dir + os.pathsep + os.environ.get("PATH", "")}
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "dvc", "repro"], cwd=run_dir, env=env)
    if proc.returncode != 0:
        log.error("demo failed (dvc repro exit %d); rerun `make demo` to resume", proc.returncode)
        return proc.returncode
    log.info("demo finished in %.0f s", time.monotonic() - t0)
    from ups import html_report

    html_report.write(run_dir, None)
    line = hours_summary(run_dir)
    if line:
        print(f"{'hours':>10}: {line}")
    for label, rel in (("model", "models/hubert-cpt"), ("metrics", "dvclive/metrics.json"),
                       ("evaluation", "reports/evaluate/metrics.json"),
                       ("report", "reports/report.html")):
        p = run_dir / rel
        if p.exists():
            print(f"{label:>10}: {p}")
    print(f"{'pipeline':>10}: cd {run_dir} && dvc metrics show / dvc plots show")
    return 0


def hours_summary(run_dir: Path) -> str | None:
    """Hours select chose, hours prepare-audio wrote and why they differ, from the two reports."""
    import orjson

    sel_p, audio_p = run_dir / "data/select/report.json", run_dir / "data/audio/report.json"
    if not (sel_p.is_file() and audio_p.is_file()):
        return None
    sel, audio = orjson.loads(sel_p.read_bytes()), orjson.loads(audio_p.read_bytes())
    written = audio["hours_written"]
    lost = {k: v for k, v in audio["hours_not_written"].items() if k != "total"}
    why = ", ".join(f"{k} {v:.3f} h" for k, v in lost.items()) or "nothing"
    splits = ", ".join(f"{s} {written[s]:.3f}" for s in ("train", "valid", "eval"))
    return (f"{sel['selected_hours']:.3f} selected of {sel['target_hours']:g} asked; "
            f"{written['total']:.3f} written ({splits}); not written: {why}")
