"""What a run on several machines needs besides torchrun: scripts/slurm/*.sbatch and `make train NODES=N`.

DVC keeps one lock per repository; two `dvc repro` (or `dvc exp run`) in one checkout fail on it
("... is busy"), and a stage that several machines run at once is not one `dvc repro` anyway. So
the stage that runs everywhere (train on every node, prepare-audio or assign-labels in every
array task) runs its own command from dvc.yaml, without DVC, and one process records the result
once at the end with `dvc commit -f <stage>`:

    python -m ups.slurm run-stage NAME      exec NAME's cmd from dvc.yaml, as `dvc repro` would
    python -m ups.slurm set-params K=V ...  set params.yaml values in place, like `dvc exp run -S`
    python -m ups.slurm plan --nodes N --gpus G [--rdzv HOST:PORT] [K=V ...]
                                            the per-node commands, for machines without Slurm
    python -m ups.slurm gpus                the GPUs this Slurm job has on each node (0: none)
    python -m ups.slurm slurm-options [--job RECORD]
                                            sbatch options from conf/slurm.env (UPS_SLURM_*),
                                            the job's own (`scontrol show job -o`) winning

`set-params` parses each value as YAML (as `-S` does), keeps the file's comments, refuses a key
params.yaml does not have, and checks every section with its typed config before anything runs:
a typo fails in a second, not after hours of data preparation.
"""

from __future__ import annotations

import argparse
import io
import os
import re
import shlex
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ups import config
from ups.atomic import write_bytes
from ups.config import ConfigError

# The sections `set-params` validates (the same classes the stages load).
SECTIONS: dict[str, type] = {
    "dataset": config.DatasetConfig, "fetch_meta": config.FetchMetaConfig,
    "index_vad": config.IndexVadConfig, "index_lang": config.IndexLangConfig,
    "select": config.SelectConfig, "features": config.FeaturesConfig,
    "prepare_audio": config.PrepareAudioConfig, "kmeans": config.KmeansConfig,
    "assign_labels": config.AssignLabelsConfig, "train": config.TrainConfig,
    "evaluate": config.EvaluateConfig,
}


# --- a stage's own command -------------------------------------------------------------------

def stage_command(dvc_yaml: Path, name: str) -> tuple[str, Path]:
    """(shell command, working directory) of stage `name`, as `dvc repro` would run it."""
    stages = (yaml.safe_load(dvc_yaml.read_text(encoding="utf-8")) or {}).get("stages", {})
    if name not in stages:
        raise ConfigError(f"{dvc_yaml} has no stage {name!r} (stages: {', '.join(stages)})")
    cmd = stages[name]["cmd"]
    if isinstance(cmd, list):
        cmd = " && ".join(cmd)
    return str(cmd), dvc_yaml.parent / stages[name].get("wdir", ".")


# --- the GPUs of a Slurm job ------------------------------------------------------------------

def _count(spec: str) -> int | None:
    """GPUs in a Slurm count: "8", "a100:8", "gpu:a100:8", "gres/gpu:2", "a100:4,v100:2" -> 6."""
    total = 0
    for part in spec.split(","):
        last = part.strip().rsplit(":", 1)[-1].split("(")[0]
        if not last.isdigit():
            return None
        total += int(last)
    return total


def _listed(ids: str) -> int:
    """GPUs in an index list: "0,1,3" -> 3, "0-3" -> 4."""
    n = 0
    for part in filter(None, (p.strip() for p in ids.split(","))):
        lo, _, hi = part.partition("-")
        n += int(hi) - int(lo) + 1 if hi else 1
    return n


def gpus_on_node(env: Mapping[str, str]) -> int:
    """The GPUs a Slurm job has on each node, however it asked for them.

    `--gpus-per-node`, `--gres=gpu:N` and `--gpus=N` each set different variables; Slurm sets
    SLURM_GPUS_ON_NODE for all three (20.11 and newer), so it comes first. The others cover older
    releases and sites whose prolog rewrites the request: a per-node count, the GPU ids bound to
    the job, then a job-wide count split over the nodes.
    """
    if env.get("SLURM_GPUS_ON_NODE", "").strip().isdigit():
        return int(env["SLURM_GPUS_ON_NODE"])
    for key in ("SLURM_GPUS_PER_NODE", "SLURM_TRES_PER_NODE"):
        spec = env.get(key, "")
        if key == "SLURM_TRES_PER_NODE":  # "gres/gpu:2,gres/shard:1": the gpu entries only
            spec = ",".join(p for p in spec.split(",") if "gpu" in p)
        n = _count(spec) if spec else None
        if n is not None:
            return n
    for key in ("SLURM_JOB_GPUS", "SLURM_STEP_GPUS"):
        if re.fullmatch(r"[0-9,\-]+", env.get(key, "")):
            return _listed(env[key])
    spec = env.get("SLURM_GPUS", "")
    total = _count(spec) if spec else None
    if total is not None:
        nodes = int(env.get("SLURM_JOB_NUM_NODES", "1") or 1)
        if total % nodes:
            raise ConfigError(f"--gpus={total} does not split evenly over {nodes} nodes: ask for "
                              "--gpus-per-node instead (one process per GPU, the same on every node)")
        return total // nodes
    return 0


# --- site options ------------------------------------------------------------------------------

# (conf/slurm.env variable, field of `scontrol show job -o`, sbatch option)
SITE_OPTIONS = (
    ("UPS_SLURM_ACCOUNT", "Account", "--account"),
    ("UPS_SLURM_PARTITION", "Partition", "--partition"),
    ("UPS_SLURM_QOS", "QOS", "--qos"),
    ("UPS_SLURM_CONSTRAINT", "Features", "--constraint"),
    ("UPS_SLURM_MEM", "MinMemoryNode", "--mem"),
    ("UPS_SLURM_TIME", "TimeLimit", "--time"),
)
_UNSET = {"", "(null)", "N/A", "UNLIMITED", "Partition_Limit"}


def job_fields(record: str) -> dict[str, str]:
    """`scontrol show job -o <id>` as a dict (one line of Key=Value words)."""
    return dict(w.split("=", 1) for w in record.split() if "=" in w)


def site_options(env: Mapping[str, str], record: str = "") -> list[str]:
    """The sbatch options every job of a run gets: what the running job itself got (so `-A x
    --time=... --mem=...` given to the prepare job reach its arrays), else conf/slurm.env."""
    fields = job_fields(record)
    out = []
    for var, field, flag in SITE_OPTIONS:
        value = fields.get(field, "")
        if field == "MinMemoryNode" and value in _UNSET and fields.get("MinMemoryCPU", "") not in _UNSET:
            out.append(f"--mem-per-cpu={fields['MinMemoryCPU']}")
            continue
        if value in _UNSET or (field == "MinMemoryNode" and value in ("0", "0M")):
            value = env.get(var, "").strip()
        if value:
            out.append(f"{flag}={value}")
    return out


# --- parameters set in place -----------------------------------------------------------------

def _parse(assignment: str) -> tuple[list[str], Any]:
    key, sep, value = assignment.partition("=")
    if not sep or not key:
        raise ConfigError(f"expected KEY=VALUE (e.g. train.nodes=2), got {assignment!r}")
    return key.split("."), yaml.safe_load(value)


def set_params(path: Path, assignments: list[str]) -> None:
    """Set `section.key=value` pairs in params.yaml, keeping its comments; validate, then write."""
    from ruamel.yaml import YAML

    rt = YAML(typ="rt")
    rt.width = 4096  # never re-wrap a long comment
    rt.representer.add_representer(type(None),
                                   lambda r, _: r.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(path.read_text(encoding="utf-8"))
    for assignment in assignments:
        keys, value = _parse(assignment)
        node = doc
        for i, k in enumerate(keys):
            if not hasattr(node, "keys") or k not in node:
                raise ConfigError(f"{'.'.join(keys[:i + 1])} is not a parameter in {path}")
            if i == len(keys) - 1:
                node[k] = value
            node = node[k]
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = buf.getvalue()
    params = yaml.safe_load(text)
    for section, cls in SECTIONS.items():
        if section in params:
            config.from_dict(cls, params[section], section)
    write_bytes(path, text.encode("utf-8"))


# --- the plan for machines without Slurm -----------------------------------------------------

def plan(nodes: int, gpus: int, rdzv: str, assignments: list[str]) -> list[str]:
    """The commands, one per line, of a `nodes` x `gpus` run without a scheduler."""
    sets = " ".join(shlex.quote(a) for a in [*assignments, f"train.nodes={nodes}", f"train.gpus={gpus}"])
    node_cmd = f"UPS_RDZV_ENDPOINT={shlex.quote(rdzv)} python -m ups.slurm run-stage train"
    return [
        f"# {nodes} nodes x {gpus} processes: run these yourself, or submit scripts/slurm/train.sbatch.",
        "# Every node needs this repository, data/ and the DVC cache at the same path (a shared file",
        "# system), and its venv first on PATH (source .venv/bin/activate).",
        "# 1. once, on the first node: the parameters, then the data stages (DVC's lock, one node):",
        f"python -m ups.slurm set-params {sets} && dvc repro assign-labels",
        f"# 2. on every node at the same time; {rdzv} (the first node) hosts the rendezvous:",
        *(f"{node_cmd}   # node {i}" for i in range(nodes)),
        "# 3. once, on the first node, after every node has finished: record the model in dvc.lock:",
        "dvc commit -f train",
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ups.slurm", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("run-stage", help="exec a stage's cmd from dvc.yaml, without DVC")
    p.add_argument("stage")
    p.add_argument("--dvc-yaml", default="dvc.yaml")
    p = sub.add_parser("set-params", help="set params.yaml values in place (like dvc exp run -S)")
    p.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    p.add_argument("--params", default="params.yaml")
    p = sub.add_parser("plan", help="print the per-node commands of a multi-node run")
    p.add_argument("--nodes", type=int, required=True)
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--rdzv", default="<first-node>:29500", help="host:port of the first node")
    p.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    sub.add_parser("gpus", help="print the GPUs this Slurm job has on each node (0: none)")
    p = sub.add_parser("slurm-options", help="print the site's sbatch options, one per line")
    p.add_argument("--job", default="", help="`scontrol show job -o` of the running job")
    args = parser.parse_args(argv)
    try:
        if args.command == "run-stage":
            cmd, wdir = stage_command(Path(args.dvc_yaml), args.stage)
            print(f"ups.slurm: {args.stage}: {cmd}", file=sys.stderr, flush=True)
            os.chdir(wdir)
            os.execv("/bin/sh", ["/bin/sh", "-c", cmd])
        elif args.command == "gpus":
            print(gpus_on_node(os.environ))
        elif args.command == "slurm-options":
            for option in site_options(os.environ, args.job):
                print(option)
        elif args.command == "set-params":
            set_params(Path(args.params), args.assignments)
        else:
            print("\n".join(plan(args.nodes, args.gpus, args.rdzv, args.assignments)))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
