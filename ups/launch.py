"""`python -m ups.launch train [ARGS]`: run `ups train` as train.gpus processes.

With `train.gpus` 1 this replaces itself with `python -m ups train ARGS`; above 1 with
`python -m torch.distributed.run --nproc_per_node=<gpus> -m ups train ARGS` (torchrun), one
node by default (`--standalone`). Several nodes: set UPS_NNODES, UPS_NODE_RANK and
UPS_RDZV_ENDPOINT (host:port of node 0) on every node and run the same command on each.
"""

from __future__ import annotations

import os
import sys

from ups.config import ConfigError, TrainConfig, load_section


def command(argv: list[str], gpus: int, env: dict[str, str]) -> list[str]:
    """The command line to exec for `ups <argv>` with `gpus` processes on this node."""
    if gpus <= 1 and int(env.get("UPS_NNODES", "1")) <= 1:
        return [sys.executable, "-m", "ups", *argv]
    launcher = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={gpus}"]
    nnodes = int(env.get("UPS_NNODES", "1"))
    if nnodes > 1:
        endpoint = env.get("UPS_RDZV_ENDPOINT")
        if not endpoint:
            raise ConfigError("UPS_RDZV_ENDPOINT (host:port of node 0) is required when UPS_NNODES > 1")
        launcher += [
            f"--nnodes={nnodes}",
            f"--node_rank={env.get('UPS_NODE_RANK', '0')}",
            "--rdzv_backend=c10d",
            f"--rdzv_endpoint={endpoint}",
            f"--rdzv_id={env.get('UPS_RDZV_ID', 'ups-train')}",
        ]
    else:
        launcher += ["--standalone", "--nnodes=1"]
    return [*launcher, "-m", "ups", *argv]


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
        cmd = command(argv, cfg.gpus, dict(os.environ))
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    if cfg.gpus > 1:  # before torchrun starts N processes that would each fail (or train on CPU)
        from ups.devices import resolve_device

        try:
            resolve_device(cfg.device, cfg.gpus)
        except RuntimeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    sys.stdout.flush()
    os.execv(cmd[0], cmd)
    return 0  # not reached


if __name__ == "__main__":
    raise SystemExit(main())
