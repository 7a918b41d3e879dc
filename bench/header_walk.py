"""The header walk at scale: requests per second and minutes for a 100 h run, baseline vs async.

    python -m bench.header_walk [--latency-ms 50 150] [--members 120] [--out bench/results/header_walk.json]

A local HTTP server (`--serve`, an asyncio process of its own) plays the hub: it answers
paths-info, redirects each `/resolve/` to a storage URL, and serves ranged reads of virtual tars
(ustar headers at their offsets, zeros as member data: members of 1.5-15 MB, the size of 1-10 min
MP3s) after `--latency-ms` of injected delay per request. On the same server, in one run:
- `threads` (the baseline): 16 walks at once (4 per download worker, 4 workers) on threads, each
  read a blocking request through huggingface_hub's httpx2 client (`HubDataset.read_tar_range`),
  every tar walked to its end;
- `async`: `ups.header_walk.walk_tars` as index-members runs it, `dataset.header_walks` (256)
  walks at once on one asyncio loop with aiohttp.
Each walks `--members` members in each of its tars (16 tars for `threads`, 256 for `async`), long
enough for a steady rate. Recorded per run: requests, wall seconds, client CPU seconds (and per
request), the server's CPU seconds, requests per second; the indices are checked against the
layout the server serves. `clients` compares the HTTP clients alone (3,000 ranged 2 KiB GETs, 64
at once, no delay): huggingface_hub's httpx2 client from threads, its async client, aiohttp. The
100 h walk (400 tars touched, a figure the selection's tar cap sets; 250, 1,000 and 3,000 members
a tar) is then timed from the measured rates: a run takes the longer of requests / rate and one
tar's members x latency (its reads are sequential).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import datetime
import hashlib
import json
import os
import resource
import subprocess
import sys
import tarfile
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hub_server import REPO_ID, SHA, TOKEN, hub_cfg  # noqa: E402

RESULTS = REPO / "bench" / "results"
THREADS = 16  # the baseline: a thread pool of 16 walks on the hub library client (4 per download worker)
TARS_100H = 400


# --------------------------------------------------------------------------------------------
# The server: virtual tars behind a hub-like API, with injected latency
# --------------------------------------------------------------------------------------------

class VirtualTar:
    """A tar of `n` members of 1.5-15 MB whose bytes are computed, never stored."""

    def __init__(self, tar: int, n: int) -> None:
        self.tar, self.offsets, self.sizes, offset = tar, [], [], 0
        for k in range(n):
            h = hashlib.sha256(f"{tar}/{k}".encode()).digest()
            size = 1_500_000 + int.from_bytes(h[:4], "big") % 13_500_000
            self.offsets.append(offset)
            self.sizes.append(size)
            offset += 512 + -(-size // 512) * 512
        self.size = offset + 1024  # two zero blocks

    def name(self, k: int) -> str:
        return f"item{self.tar}_{k // 7}/file {k}.mp3"

    def header(self, k: int) -> bytes:
        info = tarfile.TarInfo(self.name(k))
        info.size = self.sizes[k]
        return info.tobuf(tarfile.USTAR_FORMAT)

    def read(self, a: int, b: int) -> bytes:
        """Bytes [a, b)."""
        out = bytearray(b - a)
        k = max(0, bisect.bisect_right(self.offsets, a) - 1)
        while k < len(self.offsets) and self.offsets[k] < b:
            lo = self.offsets[k]
            if lo + 512 > a:
                hdr = self.header(k)
                s, e = max(a, lo), min(b, lo + 512)
                out[s - a:e - a] = hdr[s - lo:e - lo]
            k += 1
        return bytes(out)


def _tar_path(t: int) -> str:
    return f"audio/{t:06d}.tar" if t <= 5000 else f"audio2/{t:06d}.tar"


async def _serve(port: int, latency_s: float, members: int) -> None:
    from urllib.parse import parse_qs, unquote

    tars: dict[str, VirtualTar] = {}

    def tar_of(path: str) -> VirtualTar:
        if path not in tars:
            tars[path] = VirtualTar(int(Path(path).stem), members)
        return tars[path]

    def answer(status: str, headers: dict[str, str], body: bytes = b"") -> bytes:
        head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Length": str(len(body))}.items())
        return f"HTTP/1.1 {status}\r\n{head}\r\n".encode() + body

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                hdrs = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ln)}
                body = await reader.readexactly(int(hdrs.get("content-length", 0) or 0))
                await asyncio.sleep(latency_s)
                path = unquote(target.split("?")[0])
                resolve = f"/datasets/{REPO_ID}/resolve/{SHA}/"
                if method == "POST" and "/paths-info/" in path:
                    paths = parse_qs(body.decode()).get("paths", [])
                    infos = [{"type": "file", "path": p, "size": tar_of(p).size, "oid": "0" * 40,
                              "lfs": {"oid": hashlib.sha256(p.encode()).hexdigest(),
                                      "size": tar_of(p).size, "pointerSize": 134}} for p in paths]
                    out = answer("200 OK", {"Content-Type": "application/json"}, json.dumps(infos).encode())
                elif path.startswith(resolve):
                    out = answer("302 Found", {"Location": "/cdn/" + path[len(resolve):]})
                elif path.startswith("/cdn/"):
                    vt = tar_of(path[len("/cdn/"):])
                    first, _, last = hdrs["range"].split("=", 1)[1].partition("-")
                    a, b = int(first), min(int(last) + 1 if last else vt.size, vt.size)
                    out = answer("206 Partial Content", {"Content-Range": f"bytes {a}-{b - 1}/{vt.size}"},
                                 vt.read(a, b))
                else:
                    out = answer("404 Not Found", {"Content-Type": "application/json"}, b"{}")
                writer.write(out)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=4096)
    print(server.sockets[0].getsockname()[1], flush=True)
    async with server:
        await server.serve_forever()


class Server:
    """The server process: `with Server(latency_s, members) as url`; `.cpu_s()` its CPU time."""

    def __init__(self, latency_s: float, members: int) -> None:
        self.args = [sys.executable, "-m", "bench.header_walk", "--serve", str(latency_s), str(members)]

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(self.args, cwd=REPO, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        return f"http://127.0.0.1:{int(self.proc.stdout.readline())}"

    def cpu_s(self) -> float:
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def __exit__(self, *exc: object) -> None:
        self.proc.terminate()
        self.proc.wait()


# --------------------------------------------------------------------------------------------
# The two ways to walk
# --------------------------------------------------------------------------------------------

def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _dataset(work: Path, walks: int) -> Any:
    from ups.dataset import open_dataset

    return open_dataset(hub_cfg(work, header_walks=walks, max_retries=3, retry_backoff_s=0.05,
                                timeout_s=60.0))


def _threads(work: Path, tars: list[int]) -> dict[int, Any]:
    from ups import member_index

    ds = _dataset(work, THREADS)
    ds.tar_identities(tars)
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        futures = {t: pool.submit(member_index.for_tar, ds, t) for t in tars}
        return {t: f.result()[0] for t, f in futures.items()}


def _async(work: Path, tars: list[int], walks: int) -> dict[int, Any]:
    from ups.header_walk import WalkJob, walk_tars

    ds = _dataset(work, walks)
    idents = ds.tar_identities(tars)
    got, errors = walk_tars(ds, [WalkJob(t, idents[t]) for t in tars], walks=walks, save=lambda i: None)
    assert not errors, errors
    return got


def _measure(way: str, url: str, server: Server, tars: list[int], members: int, walks: int) -> dict[str, Any]:
    os.environ.update({"HF_ENDPOINT": url, "HF_TOKEN": TOKEN})
    with tempfile.TemporaryDirectory() as d:
        s0, c0, t0 = server.cpu_s(), _cpu(), time.perf_counter()
        got = _threads(Path(d), tars) if way == "threads" else _async(Path(d), tars, walks)
        wall, cpu, server_cpu = time.perf_counter() - t0, _cpu() - c0, server.cpu_s() - s0
    for t, index in got.items():  # the same layout a blocking walk of the same bytes gives
        vt = VirtualTar(t, members)
        assert index.ok and index.complete and len(index.entries) == members, (t, index.status)
        assert [(e.name, e.offset, e.size) for e in index.entries] == [
            (vt.name(k), vt.offsets[k] + 512, vt.sizes[k]) for k in range(members)]
    requests = sum(i.requests for i in got.values())
    return {"tars": len(tars), "walks_at_once": min(walks, len(tars)), "requests": requests,
            "wall_s": round(wall, 2), "client_cpu_s": round(cpu, 2), "server_cpu_s": round(server_cpu, 2),
            "client_cpu_ms_per_request": round(1e3 * cpu / requests, 3),
            "requests_per_s": round(requests / wall, 1),
            # what one core could sustain if the server were elsewhere (the hub): no measurement
            "client_cpu_bound_requests_per_s": round(requests / cpu, 1)}


def _clients(url: str, n: int = 3000, at_once: int = 64) -> dict[str, Any]:
    """Client CPU per 2 KiB ranged GET, `at_once` in flight, no injected delay: huggingface_hub's
    httpx2 client from threads and its async client (get_async_session), and aiohttp."""
    from huggingface_hub import get_async_session, get_session

    target = f"{url}/cdn/audio/000001.tar"

    def headers(i: int) -> dict[str, str]:
        return {"Range": f"bytes={i * 4096}-{i * 4096 + 2047}", "Accept-Encoding": "identity"}

    def threads() -> None:
        session = get_session()

        def get(i: int) -> bytes:
            with session.stream("GET", target, headers=headers(i)) as r:
                return b"".join(r.iter_raw())

        with ThreadPoolExecutor(at_once) as pool:
            list(pool.map(get, range(n)))

    async def run_async(kind: str) -> None:
        import aiohttp

        slots = asyncio.Semaphore(at_once)
        if kind == "aiohttp":
            session: Any = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=at_once),
                                                 auto_decompress=False)
        else:
            session = get_async_session()

        async def get(i: int) -> bytes:
            async with slots:
                if kind == "aiohttp":
                    async with session.get(target, headers=headers(i)) as r:
                        return await r.read()
                async with session.stream("GET", target, headers=headers(i)) as r:
                    return b"".join([c async for c in r.aiter_raw()])

        await asyncio.gather(*(get(i) for i in range(n)))
        if kind == "aiohttp":
            await session.close()

    out = {}
    for name, fn in (("httpx2_threads", threads), ("httpx2_async", lambda: asyncio.run(run_async("httpx2"))),
                     ("aiohttp", lambda: asyncio.run(run_async("aiohttp")))):
        c0, t0 = _cpu(), time.perf_counter()
        fn()
        out[name] = {"client_cpu_ms_per_request": round(1e3 * (_cpu() - c0) / n, 3),
                     "wall_s": round(time.perf_counter() - t0, 2)}
    return {"requests": n, "at_once": at_once, **out}


def _minutes(rate: float, latency_s: float, members: int) -> float:
    """A 100 h walk: TARS_100H tars of `members` each, at `rate` requests/s; never shorter than
    one tar's sequential reads."""
    requests = TARS_100H * (members + 1)
    return round(max(requests / rate, (members + 1) * latency_s) / 60, 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--latency-ms", type=float, nargs="+", default=[50.0, 150.0])
    ap.add_argument("--members", type=int, default=120, help="members walked in each tar")
    ap.add_argument("--walks", type=int, default=256, help="dataset.header_walks of the async way")
    ap.add_argument("--out", default=str(RESULTS / "header_walk.json"))
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        asyncio.run(_serve(0, float(args.serve[0]), int(args.serve[1])))
        return
    os.environ.setdefault("UPS_PROGRESS", "0")
    load0 = os.getloadavg()
    runs: dict[str, Any] = {}
    for ms in args.latency_ms:
        server = Server(ms / 1e3, args.members)
        with server as url:
            runs[f"{ms:g}ms"] = {}
            for way, n in (("threads", THREADS), ("async", args.walks)):
                runs[f"{ms:g}ms"][way] = _measure(way, url, server, list(range(1, n + 1)), args.members,
                                                 args.walks)
                print(ms, way, runs[f"{ms:g}ms"][way], flush=True)
    with Server(0.0, args.members) as url:
        os.environ.update({"HF_ENDPOINT": url, "HF_TOKEN": TOKEN})
        clients = _clients(url)
    print("clients", clients, flush=True)
    extrapolated = {}
    for ms in args.latency_ms:
        r = runs[f"{ms:g}ms"]
        extrapolated[f"{ms:g}ms"] = {
            str(m): {way: _minutes(r[way]["requests_per_s"], ms / 1e3, m) for way in ("threads", "async")}
            for m in (250, 1000, 3000)}
    for ms in args.latency_ms:
        r = runs[f"{ms:g}ms"]
        r["async_over_threads"] = round(r["async"]["requests_per_s"] / r["threads"]["requests_per_s"], 1)
    result = {
        "benchmark": "header_walk",
        "date": datetime.date.today().isoformat(),
        "members_walked_per_tar": args.members,
        "runs": runs,
        "clients": clients,
        "minutes_for_100h": {"tars": TARS_100H, "by_members_per_tar_and_latency": extrapolated,
                             "how": "max(requests / measured requests_per_s, one tar's reads x "
                                    "latency); every tar walked to its end (a walk stops after its "
                                    "last wanted member, so this is the most it takes)"},
        "machine": {"cpus": os.cpu_count(), "loadavg_before": load0, "loadavg_after": os.getloadavg(),
                    "note": "the server runs on the same machine and its CPU is counted apart"},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
