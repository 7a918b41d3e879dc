"""`make bench` / `python -m bench`: every benchmark in turn, results in bench/results/*.json.

`--quick` runs each at a reduced size (minutes, not an hour) and writes to bench/results/quick/
so the recorded full-size figures are not overwritten; the JSONs record the size used.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"

FULL: list[list[str]] = [
    ["index_vad"], ["select"], ["select", "--fetch", "members"], ["prepare_audio"], ["kmeans"],
    ["labels"], ["train"], ["members"], ["header_walk"], ["hub_client"], ["data_order"],
]
QUICK: list[list[str]] = [
    ["index_vad", "--files", "200000", "--repeats", "1", "--naive-mb", "50"],
    ["select", "--files", "200000", "--hours", "10"],
    ["select", "--files", "200000", "--hours", "10", "--fetch", "members"],
    ["members"], ["header_walk", "--members", "30", "--walks", "64"], ["hub_client", "--size-mb", "2"],
    ["prepare_audio", "--hours", "0.5"],
    ["kmeans", "--frames", "1000000", "--baseline-frames", "200000"],
    ["labels", "--chunks", "4", "--frames", "100000", "--n-init", "3", "--assign-frames", "100000"],
    ["train", "--steps", "10", "--chunks", "32"],
    ["data_order", "--hours", "10"],
]


def main() -> int:
    ap = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    ap.add_argument("--quick", action="store_true", help="reduced sizes, results in results/quick/")
    ap.add_argument("only", nargs="*", help="benchmark names to run (default: all)")
    args = ap.parse_args()
    failed = []
    for spec in QUICK if args.quick else FULL:
        name, extra = spec[0], spec[1:]
        if args.only and name not in args.only:
            continue
        if args.quick:
            out = RESULTS / "quick" / f"{name}{'_members' if 'members' in extra else ''}.json"
            out.parent.mkdir(parents=True, exist_ok=True)
            extra = [*extra, "--out", str(out)]
        print(f"== bench.{name} {' '.join(extra)}", flush=True)
        if subprocess.run([sys.executable, "-m", f"bench.{name}", *extra]).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
