"""Member-level fetches vs whole tars on the bundled sample corpus, against the local hub stand-in.

    python -m bench.members [--hours 0.4] [--out bench/results/members.json]

The sample's metadata goes through index-vad, index-lang and select (dataset.fetch members, the
demo's selection parameters); its three tars are served by tests/hub_server.py, which redirects
every `/resolve/` request to a storage URL as the hub does for LFS and Xet files. prepare-audio
then runs twice on the same chunks.parquet, once with `dataset.fetch: tars` and once with
`members` (index-members first). Recorded per strategy: body bytes the server sent and GET
requests (`resolve`: the hub's rate-limited endpoint; `storage`: the redirect targets), split into
the header walk and the member fetches; whether the two runs wrote the same
bytes (shards, features, markers, report). Wall times are on 127.0.0.1 and say nothing about a
real network; bytes and requests do, and docs/dataset.md extrapolates them to 100 h with the
full-size select benchmarks (bench/results/select.json, select_members.json).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from hub_server import REPO_ID, SHA, TOKEN, HubServer, HubState  # noqa: E402

RESULTS = REPO / "bench" / "results"
SAMPLE = REPO / "sample"


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _select(work: Path, hours: float) -> Path:
    from ups.config import IndexLangConfig, IndexVadConfig, SelectConfig
    from ups.stages import index_lang, index_vad, select

    idx = work / "index"
    index_vad.run(IndexVadConfig(), vad_jsonl=SAMPLE / "vad_results.jsonl", out_dir=idx / "vad")
    index_lang.run(IndexLangConfig(test_fraction=0.5), lid_jsonl=SAMPLE / "lang_id_results.jsonl",
                   out_dir=idx / "lang")
    cfg = SelectConfig(hours=hours, hours_table="computed", max_tars=0, max_file_fraction=0.1,
                       max_tar_fraction=0.6, valid_fraction=0.15)
    select.run(cfg, index_dir=idx, out_dir=work / "select", fetch="members")
    return work / "select"


def _run(work: Path, state: HubState, fetch: str, chunks: Path) -> dict[str, Any]:
    from ups.config import DatasetConfig, MfccParams, PrepareAudioConfig
    from ups.stages import index_members, prepare_audio

    out = work / fetch
    ds = DatasetConfig(source="hub", local_root=str(SAMPLE), repo_id=REPO_ID, revision=SHA,
                       tar_cache_dir=str(work / "cache" / fetch), cache_budget_gb=1.0,
                       download_workers=4, max_retries=3, retry_backoff_s=0.01, timeout_s=30.0,
                       fetch=fetch)  # type: ignore[arg-type]
    res: dict[str, Any] = {}
    n0, b0 = len(state.requests), state.sent()
    t = time.perf_counter()
    members_dir = None
    if fetch == "members":
        members_dir = out / "index"
        rep = index_members.run(ds, chunks=chunks, fetch_meta=work / "none.json", out_dir=members_dir)
        res["header_walk"] = {**_gets(state, n0), "bytes": state.sent() - b0,
                              "wall_s": round(time.perf_counter() - t, 3),
                              "status": rep["status"]}
    n1, b1, t1 = len(state.requests), state.sent(), time.perf_counter()
    summary = prepare_audio.run(PrepareAudioConfig(workers=1), MfccParams(), ds, chunks=chunks,
                                audio_dir=out / "audio", features_dir=out / "features",
                                report=out / "audio" / "report.json",
                                fetch_meta=work / "none.json", members_dir=members_dir)
    res["fetch"] = {**_gets(state, n1), "bytes": state.sent() - b1,
                    "wall_s": round(time.perf_counter() - t1, 3)}
    res["total"] = {**_gets(state, n0), "bytes": state.sent() - b0}
    res["tar_cache_bytes_on_disk"] = sum(p.stat().st_size for p in (work / "cache" / fetch).rglob("*.tar"))
    res["download_bytes_report"] = summary["download_bytes"]
    res["n_chunks_written"] = summary["n_chunks_written"]
    return res


def _gets(state: HubState, since: int) -> dict[str, int]:
    gets = [r for r in state.requests[since:] if r.method == "GET" and r.path.endswith(".tar")]
    resolve = sum("/resolve/" in r.path for r in gets)
    return {"requests": len(gets), "resolve_requests": resolve, "storage_requests": len(gets) - resolve}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--hours", type=float, default=0.4)
    ap.add_argument("--out", default=str(RESULTS / "members.json"))
    args = ap.parse_args()
    os.environ.setdefault("UPS_PROGRESS", "0")
    import pyarrow.parquet as pq

    files = {p.relative_to(SAMPLE).as_posix(): p.read_bytes() for p in sorted(SAMPLE.glob("audio*/*.tar"))}
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        sel = _select(work, args.hours)
        chunks = sel / "chunks.parquet"
        report = json.loads((sel / "report.json").read_text())
        state = HubState(REPO_ID, files)
        with HubServer(state) as url:
            state.cdn = url.replace("127.0.0.1", "localhost") + "/cdn/"
            os.environ.update({"HF_ENDPOINT": url, "HF_TOKEN": TOKEN})
            runs = {fetch: _run(work, state, fetch, chunks) for fetch in ("tars", "members")}
        same = {part: _tree(work / "tars" / part) == _tree(work / "members" / part)
                for part in ("audio", "features")}
        t = pq.read_table(chunks)
        m, w = runs["members"]["total"], runs["tars"]["total"]
        result = {
            "benchmark": "members",
            "corpus": {"tars": len(files), "tar_bytes": sum(len(b) for b in files.values()),
                       "files_in_tars": 34},
            "selection": {"hours": report["selected_hours"], "n_chunks": t.num_rows,
                          "n_files": report["n_files"], "n_tars": report["n_tars"],
                          "estimate": report["download"]},
            "tars": runs["tars"], "members": runs["members"],
            "members_over_tars": {"bytes": round(m["bytes"] / w["bytes"], 4),
                                  "requests": round(m["requests"] / w["requests"], 2)},
            "same_output_bytes": same,
            "machine": {"cpus": os.cpu_count(), "loadavg": os.getloadavg()},
        }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
