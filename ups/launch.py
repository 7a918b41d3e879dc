"""`python -m ups.launch train [ARGS]`: run `ups train` as train.nodes x train.gpus processes.

- one node, `train.gpus` 1: replaces itself with `python -m ups train ARGS`;
- one node, more: `python -m torch.distributed.run --standalone --nproc_per_node=<gpus> -m ups train`;
- `train.nodes` > 1: the same command on every node at the same time, with `UPS_RDZV_ENDPOINT`
  (host:port on the first node) set on each. torchrun's c10d rendezvous, hosted there by the
  first node's agent, numbers the nodes, so no node rank is needed. `UPS_RDZV_ID` names the
  rendezvous (default `ups-train`; scripts/slurm/train.sbatch uses the job id) so that two jobs
  that happen to share an endpoint never join each other.

scripts/slurm/train.sbatch sets the endpoint from `scontrol show hostnames`; `make train NODES=N`
prints the per-node commands. `UPS_TRAIN_DEVICE=cuda`, when set, insists on a GPU whatever
train.device says: scripts/slurm/train.sbatch sets it for a job that has GPUs, so a node
without a usable one fails here, while params.yaml (and the next submission) keeps its value.
Under `srun`, a step that does not run exactly one task on each of `train.nodes` nodes is refused
before anything starts: two independent trainings writing one state directory, or a rendezvous
that waits forever for a missing node, are worse than an error.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping

from ups.config import ConfigError, TrainConfig, load_section


def command(argv: list[str], gpus: int, nodes: int, env: Mapping[str, str]) -> list[str]:
    """The command line to exec for `ups <argv>` with `gpus` processes on each of `nodes` nodes."""
    if gpus <= 1 and nodes <= 1:
        return [sys.executable, "-m", "ups", *argv]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}"]
    if nodes > 1:
        endpoint = env.get("UPS_RDZV_ENDPOINT")
        if not endpoint:
            raise ConfigError(f"train.nodes is {nodes}: set UPS_RDZV_ENDPOINT=host:port (the first node) "
                              "on every node (scripts/slurm/train.sbatch does), or train.nodes: 1 "
                              "for one machine")
        launcher += [
            f"--nnodes={nodes}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            f"--rdzv_id={env.get('UPS_RDZV_ID') or 'ups-train'}",
        ]
    else:
        launcher += ["--standalone", "--nnodes=1"]
    return [*launcher, "-m", "ups", *argv]


def check_slurm_step(nodes: int, env: Mapping[str, str]) -> None:
    """Inside an srun step: one task per node, on train.nodes nodes (see the module docstring)."""
    if "SLURM_STEP_NUM_NODES" not in env:
        return
    step_nodes = int(env["SLURM_STEP_NUM_NODES"])
    step_tasks = int(env.get("SLURM_STEP_NUM_TASKS", step_nodes))
    if step_tasks != step_nodes:
        raise ConfigError(f"this srun step runs {step_tasks} tasks on {step_nodes} node(s): run one task "
                          "per node (srun --ntasks-per-node=1); each starts train.gpus processes")
    if step_nodes != nodes:
        raise ConfigError(f"train.nodes is {nodes} but this srun step spans {step_nodes} node(s) "
                          "(SLURM_STEP_NUM_NODES)")


def required_device(device: str, env: Mapping[str, str]) -> str:
    """train.device, or UPS_TRAIN_DEVICE when the job sets it (see the module docstring)."""
    override = env.get("UPS_TRAIN_DEVICE", "")
    if not override:
        return device
    if override != "cuda":
        raise ConfigError(f"UPS_TRAIN_DEVICE must be cuda or unset, got {override!r}")
    return override


def _params_path(argv: list[str]) -> str:
    for i, a in enumerate(argv):
        if a == "--params" and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith("--params="):
            return a.split("=", 1)[1]
    return "params.yaml"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] != "train":
        print("usage: python -m ups.launch train [ups train options]", file=sys.stderr)
        return 2
    try:
        cfg = load_section(TrainConfig, "train", _params_path(argv))
        check_slurm_step(cfg.nodes, os.environ)
        cmd = command(argv, cfg.gpus, cfg.nodes, os.environ)
        device = required_device(cfg.device, os.environ)
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if cfg.gpus > 1 or device == "cuda":  # before torchrun starts N processes that would fail
        from ups.devices import resolve_device

        try:
            resolve_device(device, cfg.gpus)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
