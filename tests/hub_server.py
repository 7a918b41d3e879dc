"""A tiny stand-in for the Hugging Face hub on 127.0.0.1, for download and dataset tests.

It answers the requests the dataset module and huggingface_hub's own download API make:
- `GET  /api/datasets/<repo>/revision/<rev>`   -> {"id", "sha"}   (revision resolution)
- `POST /api/datasets/<repo>/paths-info/<rev>` -> [{type, path, size, oid, lfs}] (expand=True)
- `GET  /datasets/<repo>/resolve/<rev>/<path>` -> the bytes, with `Range: bytes=N-` and
  `bytes=N-M` support
- `HEAD /datasets/<repo>/resolve/<rev>/<path>` -> the headers `hf_hub_download` and
  `get_hf_file_metadata` read (X-Repo-Commit, ETag / X-Linked-Etag, X-Linked-Size)
- `GET  /api/datasets/<repo>/tree/<rev>/<folder>` -> one folder's entries (`HfFileSystem`)

Faults are scripted per file path as a queue consumed one per GET: `("drop", n)` sends the
headers of a full answer and then only n bytes before closing; `("stall", n, s)` sends n bytes
and then hangs s seconds; `("status", code, retry_after[, headers])` answers an error;
`("corrupt"[, k])` flips byte k (default 0) of the body; `("redirect", url_prefix)` answers 302 to
`url_prefix + path`. `state.ignore_range` answers every GET with the whole file (200), as a server
without Range support does; `state.meta` describes files with other bytes than it serves (a mirror
whose metadata is stale); `state.latency_s` delays every answer. Every request is
recorded with its Range and Authorization headers. `state.cdn` makes every resolve answer a
redirect to the storage URL, as the hub does for LFS and Xet files; faults keyed `@cdn/<path>`
apply to the storage URL. Body bytes sent are counted per path and
connections are counted (a client that reuses connections opens few). Each handler times out
after a few seconds and the server thread is a daemon: it stops by itself.
"""

from __future__ import annotations

import hashlib
import json
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from ups.config import DatasetConfig

SHA = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Request:
    method: str
    path: str
    range: str | None
    authorization: str | None


@dataclass
class HubState:
    repo_id: str
    files: dict[str, bytes]
    sha: str = SHA
    lfs: bool = True  # report files as LFS (sha256) or as plain git blobs (sha1 blob id)
    rate_bytes_per_s: float = 0.0  # > 0: file bodies trickle out at this rate (kill tests)
    cdn: str | None = None  # set: every /resolve/ GET answers 302 to `cdn + path` (storage URL)
    ignore_range: bool = False
    meta: dict[str, bytes] = field(default_factory=dict)  # path -> the bytes paths-info describes
    latency_s: float = 0.0
    faults: dict[str, deque] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    bytes_sent: dict[str, int] = field(default_factory=dict)  # body bytes per file path
    connections: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def fault(self, path: str, *actions: tuple) -> None:
        self.faults.setdefault(path, deque()).extend(actions)

    def gets(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.method == "GET" and r.path.endswith("/" + path)]

    def resolutions(self) -> int:
        """Revision-resolution requests (`/api/datasets/<repo>/revision/<rev>`)."""
        return sum(r.method == "GET" and "/revision/" in r.path for r in self.requests)

    def sent(self, path: str | None = None) -> int:
        """Body bytes sent for one file path, or for all of them."""
        with self.lock:
            return self.bytes_sent.get(path, 0) if path else sum(self.bytes_sent.values())


def _info(path: str, data: bytes, lfs: bool) -> dict:
    blob = hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()  # noqa: S324
    out = {"type": "file", "path": path, "size": len(data), "oid": blob}
    if lfs:
        out["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                      "pointerSize": 134}
    return out


def _tree(state: HubState, folder: str) -> list[dict]:
    """The entries directly inside `folder` ("" = the root), as the hub's tree API lists them."""
    prefix = folder + "/" if folder else ""
    out: dict[str, dict] = {}
    for path, data in sorted(state.files.items()):
        if not path.startswith(prefix):
            continue
        head, sep, _ = path[len(prefix):].partition("/")
        if sep:
            out.setdefault(prefix + head, {"type": "directory", "path": prefix + head, "oid": "0" * 40})
        else:
            out[path] = _info(path, data, state.lfs)
    return list(out.values())


def make_handler(state: HubState):
    class Handler(BaseHTTPRequestHandler):
        timeout = 5
        protocol_version = "HTTP/1.1"

        def log_message(self, *args) -> None:  # keep test output quiet
            pass

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections += 1

        def _write(self, rel: str, data: bytes) -> None:
            with state.lock:  # counted first: the client may have all of it before write returns
                state.bytes_sent[rel] = state.bytes_sent.get(rel, 0) + len(data)
            self.wfile.write(data)

        def _record(self) -> None:
            with state.lock:
                state.requests.append(Request(self.command, unquote(urlsplit(self.path).path),
                                              self.headers.get("Range"),
                                              self.headers.get("Authorization")))

        def _json(self, obj, status: int = 200, retry_after: float | None = None,
                  headers: dict[str, str] | None = None) -> None:
            body = json.dumps(obj).encode()
            self.send_response(status)
            if retry_after is not None:
                self.send_header("Retry-After", str(retry_after))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            self._record()
            path = unquote(urlsplit(self.path).path)
            api = f"/api/datasets/{state.repo_id}/revision/"
            if path.startswith(api):
                self._json({"id": state.repo_id, "sha": state.sha})
                return
            tree = f"/api/datasets/{state.repo_id}/tree/{state.sha}"
            if path == tree or path.startswith(tree + "/"):
                self._json(_tree(state, path[len(tree):].strip("/")))
                return
            for prefix in (f"/datasets/{state.repo_id}/resolve/{state.sha}/", "/cdn/"):
                if path.startswith(prefix):
                    self._serve(path[len(prefix):], cdn=prefix == "/cdn/")
                    return
            self._json({"error": "not found"}, 404)

        def do_HEAD(self) -> None:  # noqa: N802
            """File metadata as the hub sends it (no redirect: the bytes are served here)."""
            self._record()
            path = unquote(urlsplit(self.path).path)
            prefix = f"/datasets/{state.repo_id}/resolve/{state.sha}/"
            rel = path[len(prefix):] if path.startswith(prefix) else None
            if rel not in state.files:
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            info = _info(rel, state.files[rel], state.lfs)
            self.send_response(200)
            self.send_header("X-Repo-Commit", state.sha)
            self.send_header("ETag", f'"{info["oid"]}"')
            if state.lfs:
                self.send_header("X-Linked-Etag", f'"{info["lfs"]["oid"]}"')
                self.send_header("X-Linked-Size", str(info["size"]))
            self.send_header("Accept-Ranges", "bytes")
            self.send_header("Content-Length", str(info["size"]))
            self.end_headers()

        def do_POST(self) -> None:  # noqa: N802
            self._record()
            n = int(self.headers.get("Content-Length") or 0)
            form = parse_qs(self.rfile.read(n).decode())
            path = unquote(urlsplit(self.path).path)
            if path != f"/api/datasets/{state.repo_id}/paths-info/{state.sha}":
                self._json({"error": "not found"}, 404)
                return
            with state.lock:
                queue = state.faults.get("@paths-info")  # faults for the metadata call
                action = queue.popleft() if queue else None
            if action and action[0] == "status":
                self._json({"error": "scripted"}, action[1], action[2] if len(action) > 2 else None,
                           action[3] if len(action) > 3 else None)
                return
            self._json([_info(p, state.meta.get(p, state.files[p]), state.lfs)
                        for p in form.get("paths", []) if p in state.files])

        def _serve(self, rel: str, cdn: bool) -> None:
            if rel not in state.files:
                self._json({"error": "not found"}, 404)
                return
            data = state.files[rel]
            with state.lock:
                queue = state.faults.get("@cdn/" + rel if cdn else rel)
                action = queue.popleft() if queue else None
            if action is None and not cdn and state.cdn:
                action = ("redirect", state.cdn)
            if state.latency_s:
                time.sleep(state.latency_s)
            if action and action[0] == "status":
                self.send_response(action[1])
                if len(action) > 2 and action[2] is not None:
                    self.send_header("Retry-After", str(action[2]))
                for k, v in (action[3] if len(action) > 3 else {}).items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            if action and action[0] == "redirect":
                self.send_response(302)
                self.send_header("Location", action[1] + rel)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            start, end = 0, len(data) - 1
            rng = None if state.ignore_range else self.headers.get("Range")
            if rng and rng.startswith("bytes="):
                first, _, last = rng[len("bytes="):].partition("-")
                start = int(first)
                if last:
                    end = min(int(last), len(data) - 1)
                if start >= len(data) or end < start:
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{end}/{len(data)}")
            else:
                self.send_response(200)
            body = data[start:end + 1]
            if action and action[0] == "corrupt" and body:
                k = action[1] if len(action) > 1 else 0
                body = body[:k] + bytes([body[k] ^ 0xFF]) + body[k + 1:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            if action and action[0] == "stall":  # n bytes, then hang until the client is gone
                self._write(rel, body[:action[1]])
                self.wfile.flush()
                time.sleep(action[2])
                self.close_connection = True
                return
            if action and action[0] == "drop":
                self._write(rel, body[:action[1]])
                self.wfile.flush()
                self.close_connection = True
                return
            if state.rate_bytes_per_s > 0:
                step = 16384
                for i in range(0, len(body), step):
                    self._write(rel, body[i:i + step])
                    self.wfile.flush()
                    time.sleep(step / state.rate_bytes_per_s)
                return
            self._write(rel, body)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:
        """A client that hung up mid-answer is what the fault tests make happen: no traceback."""
        if isinstance(sys.exc_info()[1], ConnectionError | TimeoutError):
            return
        super().handle_error(request, client_address)


class HubServer:
    """Context manager: `with HubServer(state) as url:` serves `state` on 127.0.0.1."""

    def __init__(self, state: HubState) -> None:
        self.state = state
        self.server = _Server(("127.0.0.1", 0), make_handler(state))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> str:
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- helpers shared by the dataset tests --------------------------------------------------------

REPO_ID = "MLCommons/unsupervised_peoples_speech"
TOKEN = "hf_SENTINEL_abc123"


def payload(n: int, seed: int = 0) -> bytes:
    """n deterministic pseudo-random bytes."""
    out = bytearray()
    block = hashlib.sha256(str(seed).encode()).digest()
    while len(out) < n:
        block = hashlib.sha256(block).digest()
        out += block
    return bytes(out[:n])


def hub_cfg(tmp_path: Path, **over) -> DatasetConfig:
    """A hub DatasetConfig with a cache under tmp_path and fast retries."""
    kw = dict(source="hub", local_root=str(tmp_path / "none"), repo_id=REPO_ID, revision=SHA,
              tar_cache_dir=str(tmp_path / "cache"), cache_budget_gb=1.0, download_workers=2,
              max_retries=3, retry_backoff_s=0.01, timeout_s=5.0)
    kw.update(over)
    return DatasetConfig(**kw)
