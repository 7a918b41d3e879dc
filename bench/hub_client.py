"""Which client moves the bytes: huggingface_hub's download API or ups's own transfer loop?

    python -m bench.hub_client [--size-mb 8] [--out bench/results/hub_client.json]

Both run against tests/hub_server.py (the local stand-in for the hub, which answers the requests
each client makes: HEAD and GET /resolve, paths-info, tree) with the same scripted faults. What is
measured, for `hf_hub_download(local_dir=...)` / `HfFileSystem` and for `ups.dataset`:
- resume after a kill: a download SIGKILLed half way, then run again; bytes the server sent;
- faults in one call: 2 x 429, 2 x 503, one dropped connection, one corrupted body: did the
  call succeed, are the bytes right, GET requests made, the waits the client chose itself;
- one byte range (a tar member) with the connection dropped half way: bytes sent, requests;
- a 512-byte read (a tar header) through `HfFileSystem.open` with its default block size.
Waits are recorded, not slept (time.sleep is replaced in-process), so the run takes seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hub_server import REPO_ID, SHA, TOKEN, HubServer, HubState, hub_cfg, payload  # noqa: E402

RESULTS = REPO / "bench" / "results"
TAR = "audio/000001.tar"

_KILLED_CLIENT = r"""
import os, sys
from pathlib import Path
sys.path.insert(0, sys.argv[3])
client, d = sys.argv[1], Path(sys.argv[2])
from hub_server import REPO_ID, SHA, hub_cfg
if client == "hf_hub_download":
    from huggingface_hub import hf_hub_download
    hf_hub_download(REPO_ID, sys.argv[4], repo_type="dataset", revision=SHA, local_dir=d,
                    endpoint=os.environ["HF_ENDPOINT"], token=os.environ["HF_TOKEN"])
else:
    from ups.dataset import open_dataset
    with open_dataset(hub_cfg(d)).tar(1):
        pass
"""


def _env(url: str) -> dict[str, str]:
    return {**os.environ, "HF_ENDPOINT": url, "HF_TOKEN": TOKEN, "UPS_PROGRESS": "0",
            "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONPATH": str(REPO)}


def kill_and_resume(client: str, size: int) -> dict[str, Any]:
    """SIGKILL the download once the server has sent half the file; run it again to the end."""
    state = HubState(REPO_ID, {TAR: payload(size, 1)}, rate_bytes_per_s=size / 2.0)
    with tempfile.TemporaryDirectory() as d, HubServer(state) as url:
        cmd = [sys.executable, "-c", _KILLED_CLIENT, client, d, str(REPO / "tests"), TAR]
        proc = subprocess.Popen(cmd, env=_env(url), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.time() + 60
        while state.sent(TAR) < size // 2 and time.time() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        at_kill = state.sent(TAR)
        state.rate_bytes_per_s = 0.0
        rerun = subprocess.run(cmd, env=_env(url), capture_output=True, text=True, timeout=120)
        path = Path(d) / TAR if client == "hf_hub_download" else Path(d) / "cache" / TAR
        ok = rerun.returncode == 0 and path.read_bytes() == state.files[TAR]
        return {"file_bytes": size, "sent_before_kill": at_kill, "sent_in_all": state.sent(TAR),
                "sent_over_file_size": round(state.sent(TAR) / size, 3), "complete_and_correct": ok,
                "rerun_ranges": [r.range for r in state.gets(TAR)][1:]}


def _with_recorded_sleep(fn: Callable[[], Any]) -> tuple[Any, list[float]]:
    waits: list[float] = []
    real = time.sleep
    time.sleep = waits.append  # type: ignore[assignment]
    try:
        return fn(), waits
    finally:
        time.sleep = real  # type: ignore[assignment]


def one_call(client: str, faults: list[tuple], size: int) -> dict[str, Any]:
    """One download with `faults` scripted on its GETs; max_retries 5, backoff 0.01 s for ups."""
    state = HubState(REPO_ID, {TAR: payload(size, 2)})
    state.fault(TAR, *faults)
    with tempfile.TemporaryDirectory() as d, HubServer(state) as url:
        os.environ.update({"HF_ENDPOINT": url, "HF_TOKEN": TOKEN, "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
        ups_waits: list[float] = []

        def run() -> Path:
            if client == "hf_hub_download":
                from huggingface_hub import hf_hub_download
                return Path(hf_hub_download(REPO_ID, TAR, repo_type="dataset", revision=SHA,
                                            local_dir=d, endpoint=url, token=TOKEN))
            from ups.dataset import open_dataset
            ds = open_dataset(hub_cfg(Path(d), max_retries=5), sleep=ups_waits.append)
            with ds.tar(1) as p:
                return p

        try:
            path, waits = _with_recorded_sleep(run)
            error = None
            correct = hashlib.sha256(path.read_bytes()).digest() == \
                hashlib.sha256(state.files[TAR]).digest()
        except Exception as exc:  # the measurement: which errors escape the client
            error, correct, waits = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120]}", False, []
        return {"faults": [list(f) for f in faults], "error": error, "file_correct": correct,
                "get_requests": len(state.gets(TAR)),
                "head_requests": sum(r.method == "HEAD" for r in state.requests),
                "waits_s": waits if client == "hf_hub_download" else ups_waits}


def member_range(client: str, size: int) -> dict[str, Any]:
    """Bytes [size/4, 3*size/4) with the connection dropped after half of them."""
    start, n = size // 4, size // 2
    state = HubState(REPO_ID, {TAR: payload(size, 3)})
    state.fault(TAR, ("drop", n // 2))
    with tempfile.TemporaryDirectory() as d, HubServer(state) as url:
        os.environ["HF_ENDPOINT"] = url

        def run() -> bytes:
            if client == "HfFileSystem.cat_file":
                from huggingface_hub import HfFileSystem
                fs = HfFileSystem(endpoint=url, token=TOKEN)
                return fs.cat_file(f"datasets/{REPO_ID}@{SHA}/{TAR}", start=start, end=start + n)
            from ups.dataset import open_dataset
            ds = open_dataset(hub_cfg(Path(d)), sleep=lambda s: None)
            return ds.read_tar_range(1, start, n)

        data, waits = _with_recorded_sleep(run)
        return {"range_bytes": n, "correct": data == state.files[TAR][start:start + n],
                "sent": state.sent(TAR), "sent_over_range": round(state.sent(TAR) / n, 3),
                "ranges": [r.range for r in state.gets(TAR)], "client_waits_s": waits}


def header_read(size: int) -> dict[str, Any]:
    """A 512-byte read at two offsets through HfFileSystem.open (default block size)."""
    state = HubState(REPO_ID, {TAR: payload(size, 4)})
    with HubServer(state) as url:
        from huggingface_hub import HfFileSystem
        fs = HfFileSystem(endpoint=url, token=TOKEN)
        with fs.open(f"datasets/{REPO_ID}@{SHA}/{TAR}", "rb") as f:
            for at in (1000, size // 2):
                f.seek(at)
                f.read(512)
        return {"reads": 2, "bytes_asked": 1024, "bytes_sent": state.sent(TAR),
                "ranges": [r.range for r in state.gets(TAR)]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size-mb", type=float, default=8.0)
    ap.add_argument("--out", default=str(RESULTS / "hub_client.json"))
    args = ap.parse_args()
    size = int(args.size_mb * 1e6)
    import huggingface_hub

    faults = {"429_x2": [("status", 429)] * 2, "503_x2": [("status", 503)] * 2,
              "drop_once": [("drop", size // 3)], "corrupt_once": [("corrupt",)]}
    result: dict[str, Any] = {
        "benchmark": "hub_client", "huggingface_hub": huggingface_hub.__version__,
        "file_mb": args.size_mb,
        "kill_and_resume": {c: kill_and_resume(c, size) for c in ("hf_hub_download", "ups")},
        "faults": {name: {c: one_call(c, f, size) for c in ("hf_hub_download", "ups")}
                   for name, f in faults.items()},
        "member_range_with_drop": {c: member_range(c, size) for c in ("HfFileSystem.cat_file", "ups")},
        "header_read_hffilesystem_default_block": header_read(size),
        "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
