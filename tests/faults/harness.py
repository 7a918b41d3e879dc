"""A small project on the bundled sample corpus, the stage command lines, and output comparison.

Every stage runs as `python -m ups <stage>` in a subprocess with the project as its working
directory (the same command lines as dvc.yaml), so a SIGKILL hits a real process.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

REPO = Path(__file__).resolve().parents[2]
SAMPLE = REPO / "sample"

# stage -> (arguments after `python -m ups`, outputs); as in dvc.yaml
STAGES: dict[str, tuple[list[str], list[str]]] = {
    "fetch-meta": (["fetch-meta", "--out-dir", "data/meta"], ["data/meta"]),
    "index-vad": (["index-vad", "--vad", "data/meta/vad_results.jsonl", "--out-dir", "data/index/vad"],
                  ["data/index/vad"]),
    "index-lang": (["index-lang", "--lid", "data/meta/lang_id_results.jsonl",
                    "--out-dir", "data/index/lang"], ["data/index/lang"]),
    "select": (["select", "--index-dir", "data/index", "--out-dir", "data/select"], ["data/select"]),
    "prepare-audio": (["prepare-audio", "--chunks", "data/select/chunks.parquet", "--audio-dir",
                       "data/audio", "--features-dir", "data/features"],
                      ["data/audio", "data/features"]),
    "fit-kmeans": (["fit-kmeans", "--features-dir", "data/features", "--audio-dir", "data/audio",
                    "--out-dir", "data/kmeans"], ["data/kmeans"]),
    "assign-labels": (["assign-labels", "--model", "data/kmeans/model.npz", "--features-dir",
                       "data/features", "--audio-dir", "data/audio", "--chunks",
                       "data/select/chunks.parquet", "--out-dir", "data/labels"], ["data/labels"]),
    "train": (["train", "--audio-dir", "data/audio", "--labels-dir", "data/labels", "--model-dir",
               "models/hubert-cpt", "--state-dir", "data/train/state", "--live-dir", "dvclive"],
              ["models/hubert-cpt", "data/train/state", "dvclive"]),
}
ORDER = list(STAGES)

# Small enough that each stage runs in seconds on 2 cores; every sample tar is used.
OVERRIDES: dict[str, dict[str, Any]] = {
    # fetch tars: the tar-limited selection, which takes the sample's planted corrupt MP3
    # (member fetches, the default, are kill-tested in tests/stages/test_prepare_audio.py)
    "dataset": {"source": "local", "local_root": str(SAMPLE), "max_retries": 2,
                "retry_backoff_s": 0.01, "download_workers": 1, "fetch": "tars"},
    "select": {"hours": 0.15, "max_file_fraction": 1.0, "max_tar_fraction": 1.0,
               "valid_fraction": 0.2},
    "prepare_audio": {"workers": 1, "shard_max_chunks": 4},
    # MFCC labels: the repo default (layer 9 of train.init) has no layer 9 in the tiny model
    "features": {"kind": "mfcc", "device": "cpu"},
    "kmeans": {"n_clusters": 16, "sample_hours": 0.05, "n_init": 2, "max_iter": 20},
    "train": {"init": "tiny", "device": "cpu", "epochs": 1, "max_steps": 8, "learning_rate": 2e-3,
              "warmup_steps": 2, "batch_size": 4, "grad_accum": 1, "num_workers": 0,
              "final_dim": 16,
              "log_every_steps": 2, "valid_every_steps": 4, "save_every_steps": 2},
}


def write_params(root: Path, **extra: dict[str, Any]) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for section, values in {**OVERRIDES}.items():
        params[section] = {**params[section], **values}
    for section, values in extra.items():
        params[section] = {**params[section], **values}
    params["dataset"]["tar_cache_dir"] = str(root / "cache" / "tars")
    root.mkdir(parents=True, exist_ok=True)
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def stage_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "UPS_FAIL_AFTER_CHUNKS"}
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "DVC_NO_ANALYTICS": "1"})
    env.update(extra or {})
    return env


def command(stage: str) -> list[str]:
    return [sys.executable, "-m", "ups", *STAGES[stage][0]]


def run_stage(root: Path, stage: str, env: dict[str, str] | None = None,
              timeout_s: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(command(stage), cwd=root, env=stage_env(env), capture_output=True,
                          text=True, timeout=timeout_s)


@dataclass
class Reference:
    root: Path
    seconds: dict[str, float] = field(default_factory=dict)


def build_reference(root: Path, upto: str = "train") -> Reference:
    """Run the pipeline once, uninterrupted, recording each stage's wall time."""
    write_params(root)
    ref = Reference(root)
    for stage in ORDER[:ORDER.index(upto) + 1]:
        t0 = time.monotonic()
        res = run_stage(root, stage)
        assert res.returncode == 0, f"{stage}: {res.stderr[-3000:]}"
        ref.seconds[stage] = time.monotonic() - t0
    return ref


def copy_inputs(ref: Path, dest: Path, stage: str) -> Path:
    """The reference project as it stood before `stage` ran: its outputs and later ones removed."""
    later = {o for s in ORDER[ORDER.index(stage):] for o in STAGES[s][1]}
    shutil.copytree(ref, dest, ignore=lambda d, names: [
        n for n in names if (Path(d) / n).relative_to(ref).as_posix() in later])
    return dest


@dataclass
class KillResult:
    stage: str
    delay_s: float
    killed: bool          # the process was still running when SIGKILL arrived
    had_output: bool      # some output file existed at that moment (the kill hit real work)
    same: bool
    diff: list[str]


def kill_and_resume(ref: Reference, work: Path, stage: str, delay_s: float,
                    env: dict[str, str] | None = None, after_glob: str | None = None) -> KillResult:
    """SIGKILL `stage` `delay_s` after its start (or after `after_glob` first matches), rerun it
    to completion, and compare its outputs with the reference run's."""
    root = copy_inputs(ref.root, work, stage)
    proc = subprocess.Popen(command(stage), cwd=root, env=stage_env(env),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while after_glob and proc.poll() is None and not any(root.glob(after_glob)):
        assert time.monotonic() < deadline, f"{after_glob} never appeared"
        time.sleep(0.01)
    try:
        proc.wait(timeout=delay_s)
        killed = False
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        killed = True
    had_output = any(p.is_file() for o in STAGES[stage][1] for p in (root / o).rglob("*"))
    res = run_stage(root, stage, env)
    assert res.returncode == 0, f"{stage} rerun after kill at {delay_s:.2f} s: {res.stderr[-3000:]}"
    diff = compare_outputs(ref.root, root, stage)
    return KillResult(stage, delay_s, killed, had_output, not diff, diff)


# --- comparison ------------------------------------------------------------------------------

TIMING_KEYS = ("seconds", "elapsed", "per_s", "tflops", "mfu", "timestamp", "duration_wall")
TIMING_FILES = ("audio_s_per_s.tsv", "tflops.tsv")


def _is_timing(key: str) -> bool:
    k = key.lower()
    return any(t in k for t in TIMING_KEYS) or k in ("time", "elapsed_s", "wall_s")


def untimed(obj: Any) -> Any:
    """JSON with wall-clock measurements removed (they legitimately differ between runs)."""
    if isinstance(obj, dict):
        return {k: untimed(v) for k, v in obj.items() if not _is_timing(k)}
    if isinstance(obj, list):
        return [untimed(v) for v in obj]
    return obj


def output_files(root: Path, stage: str) -> dict[str, Path]:
    out = {}
    for o in STAGES[stage][1]:
        for p in sorted((root / o).rglob("*")):
            if p.is_file():
                out[p.relative_to(root).as_posix()] = p
    return out


def compare_outputs(a_root: Path, b_root: Path, stage: str) -> list[str]:
    """Differences between two runs' outputs of `stage`: data files byte for byte, JSON untimed."""
    # dvclive's timing plots hold only the steps the last process trained: a rerun that finds the
    # run finished (the kill came after the end) trains none and writes none.
    a, b = ({n: p for n, p in output_files(r, stage).items() if Path(n).name not in TIMING_FILES}
            for r in (a_root, b_root))
    diff = [f"only in reference: {n}" for n in sorted(a.keys() - b.keys())]
    diff += [f"only in resumed: {n}" for n in sorted(b.keys() - a.keys())]
    for name in sorted(a.keys() & b.keys()):
        x, y = a[name].read_bytes(), b[name].read_bytes()
        if x == y:
            continue
        if name.endswith(".json"):
            if untimed(orjson.loads(x)) == untimed(orjson.loads(y)):
                continue
        diff.append(f"differs: {name}")
    return diff
