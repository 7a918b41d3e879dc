"""`make plan HOURS=N` / `ups plan --hours N`: what a run will download, the disk each stage will
need and how long it will take, before any audio is fetched.

It sets `select.hours` in params.yaml (what `make train HOURS=N`, a `dvc exp run -S`, does too),
runs `dvc repro` up to the selection (fetch-meta, the indices, select: metadata only) and reads
what those stages wrote. The download is given both ways: whole tars (their sizes from the
source's metadata: the hub's paths-info, or stat on a mirror) and member by member (select's
estimate from file durations, or the exact member sizes when index-members has indexed this
selection). Outputs not made yet are estimated from their formats (16 kHz int16 PCM, 50 Hz
float32 MFCC, 50 Hz int16 labels); times from the recorded benchmarks in bench/results/*.json,
which were measured on this project's 2-core machine.
"""

from __future__ import annotations

import logging
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson

from ups.frames import SAMPLE_RATE

log = logging.getLogger(__name__)

GB = 1e9
FRAME_RATE = 50  # HuBERT frames (and labels, features) per second of audio
PCM_BYTES_PER_S = SAMPLE_RATE * 2  # int16 mono
MODEL_PARAMS = {"facebook/hubert-base-ls960": 94.4e6, "facebook/hubert-large-ll60k": 316.6e6}
REPRO_TARGETS = ("select",)
BENCH_DIRS = (Path(__file__).resolve().parents[1] / "bench" / "results",)


class PlanError(RuntimeError):
    """The plan cannot be made (a stage failed, a parameter is missing)."""


# --------------------------------------------------------------------------------------------
# params.yaml: one scalar set in place, comments kept
# --------------------------------------------------------------------------------------------

def set_param(path: Path, section: str, key: str, value: float | int | str) -> bool:
    """Set `section.key` to `value` in a params.yaml, editing that one line (comments and layout
    stay). Returns True when the file changed. Raises PlanError when the key is not there."""
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    in_section = False
    pattern = re.compile(rf"^(\s+{re.escape(key)}:\s*)([^#\n]*?)(\s*#.*)?(\n?)$")
    for i, line in enumerate(lines):
        if re.match(r"^\S", line) and not line.startswith("#"):
            in_section = line.split(":", 1)[0].strip() == section
            continue
        if in_section and (m := pattern.match(line)):
            old = m.group(2).strip()
            new = repr(value) if isinstance(value, float) else str(value)
            if old == new or _same_number(old, value):
                return False
            comment = (m.group(3) or "").lstrip()
            if comment:  # keep the comment's column where the new value leaves room
                col = len(line.rstrip("\n")) - len(comment)
                new += " " * max(1, col - len(m.group(1)) - len(new)) + comment
            lines[i] = m.group(1) + new + m.group(4)
            path.write_text("".join(lines), encoding="utf-8")
            return True
    raise PlanError(f"{path} has no {section}.{key} to set")


def _same_number(text: str, value: float | int | str) -> bool:
    try:
        return float(text) == float(value)
    except ValueError:
        return False


# --------------------------------------------------------------------------------------------
# Figures
# --------------------------------------------------------------------------------------------

def _read(path: Path) -> dict[str, Any] | None:
    try:
        data = orjson.loads(path.read_bytes())
    except (OSError, orjson.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def _bench(name: str, project: Path) -> dict[str, Any] | None:
    for d in (project / "bench" / "results", *BENCH_DIRS):
        if (data := _read(d / f"{name}.json")) is not None:
            return data
    return None


def _tree_bytes(path: Path) -> int:
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else 0


def _decoded_seconds(chunks: Path) -> float:
    """Audio prepare-audio decodes: each chosen file up to the end of its last chunk."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    t = pq.read_table(chunks, columns=["tar", "key", "end_s"])
    if t.num_rows == 0:
        return 0.0
    g = t.group_by(["tar", "key"]).aggregate([("end_s", "max")])
    return float(pc.sum(g["end_s_max"]).as_py())


# --------------------------------------------------------------------------------------------
# The download: what is fetched, the hub requests it takes, how long (pure functions)
# --------------------------------------------------------------------------------------------

# The hub's rate limits per 5-minute window for a free account (huggingface.co/docs/hub/rate-limits):
# "API" (metadata: paths-info) and "resolvers" (every URL with /resolve/, the file downloads)
HUB_PER_5MIN = {"api": 1000, "resolve": 5000}
HUB_WINDOW_S = 300.0
PATHS_INFO_BATCH = 50  # tars per paths-info call (ups/dataset.py)


def hub_requests(fetch: str, n_tars: int, per_5min: dict[str, int]) -> dict[str, Any]:
    """The hub requests the run makes after select, per bucket and stage, against the budgets.

    Counted: one paths-info (API) call per 50 tars in each stage that reads the tars' metadata
    (sizes and sha256: index-members and prepare-audio with members; plan and prepare-audio
    with whole tars) and one /resolve/ per tar in each stage that reads a tar (a tar's later
    reads go to the storage URL it redirected to: ups/download.py). Header reads and member
    fetches go to that storage URL and are not counted against either budget."""
    batches = math.ceil(n_tars / PATHS_INFO_BATCH)
    stages = {"members": {"api": {"index-members": batches, "prepare-audio": batches},
                          "resolve": {"index-members": n_tars, "prepare-audio": n_tars}},
              "tars": {"api": {"plan": batches, "prepare-audio": batches},
                       "resolve": {"prepare-audio": n_tars}}}[fetch]
    out: dict[str, Any] = {}
    for bucket, by_stage in stages.items():
        calls = sum(by_stage.values())
        out[bucket] = {"calls": calls, "by_stage": by_stage, "per_5min": per_5min[bucket],
                       "least_time_s": rate_floor_s(calls, per_5min[bucket])}
    return out


def rate_floor_s(calls: int, per_5min: int) -> float:
    """The least wall time that `calls` take under a budget of `per_5min` per 5-minute window:
    none within one window, a full window for each further one."""
    return HUB_WINDOW_S * max(0, math.ceil(calls / per_5min) - 1)


def transfer_times(download: dict[str, Any], *, mb_per_s: float, latency_s: float, walks: int,
                   member_streams: int) -> dict[str, dict[str, Any]]:
    """Seconds of the header walk (`member_index.walk_estimate_s`: latency-bound, `walks` tars at
    a time, one tar's reads in sequence, one core of client CPU) and of the transfer (bandwidth,
    plus one request latency per member over `member_streams` in flight)."""
    from ups.member_index import walk_estimate_s

    out: dict[str, dict[str, Any]] = {}
    if "header_walk" in download:
        walk = download["header_walk"]
        reads, longest = walk["requests"], walk.get("max_tar_requests", 0)
        out["index-members"] = {
            "s": walk_estimate_s(reads, longest, latency_s, walks, download.get("n_tars", 1)),
            "how": f"{reads} header reads (one per member of each tar touched, at most), "
                   f"{latency_s * 1e3:g} ms each (--latency-ms), {walks} tars at a time "
                   f"(dataset.header_walks), the longest tar's {longest} one after another"}
    fetched = download["bytes"]
    seconds = fetched / (mb_per_s * 1e6) if mb_per_s > 0 else None
    how = f"{fetched / GB:.1f} GB at {mb_per_s:g} MB/s (--mb-per-s)"
    if "members" in download and seconds is not None:
        n = download["members"]["n_members"]
        seconds += n * latency_s / member_streams
        how += f" + {n} member requests, {member_streams} at a time"
    out["download"] = {"s": seconds, "how": how}
    return out


def _members_download(project: Path, report: dict[str, Any]) -> dict[str, Any]:
    """Member fetches of this selection: the tars touched, their header walk and the members;
    index-members' exact figures when it indexed this very chunks.parquet, else select's
    estimates (files per tar from the VAD index, file durations x mp3_bytes_per_second)."""
    import hashlib

    est = report["download"]["members"]
    walk = est["header_walk"]
    header: dict[str, Any] = {"requests": int(walk["requests_estimate"]),
                              "bytes": int(walk["bytes_estimate"]),
                              "members_per_tar": float(walk["members_per_tar"]),
                              "max_tar_requests": int(walk.get("max_tar_requests", 0)),
                              "how": "estimate (files per tar of the VAD index)"}
    members: dict[str, Any] = {"n_members": int(est["n_files"]), "bytes": int(est["bytes_estimate"]),
                               "how": "estimate (select.mp3_bytes_per_second)"}
    idx = _read(project / "data" / "index" / "members" / "report.json")
    chunks = project / "data" / "select" / "chunks.parquet"
    if idx is not None and idx.get("chunks_sha256") == hashlib.sha256(chunks.read_bytes()).hexdigest():
        m, w = idx["download"]["members"], idx["header_walk"]
        members.update(n_members=int(m["n_members"]), bytes=int(m["bytes"]), how="exact (index-members)")
        header.update(requests=int(w["requests"]), bytes=int(w["bytes"]),
                      how="exact (index-members' walks)")
    out: dict[str, Any] = {"n_tars": int(est["n_tars"]), "header_walk": header, "members": members}
    out["bytes"] = members["bytes"] + header["bytes"]
    return out


def _tars_download(ds_cfg: Any, report: dict[str, Any]) -> dict[str, Any]:
    """Whole-tar fetches of this (tar-limited) selection: the chosen tars at their real sizes."""
    from ups.dataset import open_dataset

    tars = [int(t) for t in report["tars"]]
    sizes = open_dataset(ds_cfg).tar_sizes(tars) if tars else {}
    total = sum(sizes.values())
    return {"n_tars": len(tars), "tars": {"bytes": total, "how": "exact (tar sizes)"}, "bytes": total}


def _disk(project: Path, params: dict[str, Any], fetch: str, download: dict[str, Any],
          audio_s: float) -> dict[str, dict[str, Any]]:
    """Disk per stage: measured for the stages that ran, from the output formats for the rest."""
    from ups.train_state import KEEP  # states kept on disk (imports torch: here, not at the top)

    data = project / "data"
    feat_dim = 3 * int(params["features"]["mfcc"]["num_ceps"])
    n_params = MODEL_PARAMS.get(str(params["train"]["init"]))
    budget = float(params["dataset"]["cache_budget_gb"]) * GB
    workers = int(params["dataset"]["download_workers"])
    return {
        "fetch-meta": {"bytes": _tree_bytes(data / "meta"), "how": "measured"},
        "index-vad": {"bytes": _tree_bytes(data / "index" / "vad"), "how": "measured"},
        "index-lang": {"bytes": _tree_bytes(data / "index" / "lang"), "how": "measured"},
        "select": {"bytes": _tree_bytes(data / "select"), "how": "measured"},
        "tar cache (prepare-audio)": (
            {"bytes": int(min(download["bytes"], budget)),
             "how": f"the chosen tars, at most dataset.cache_budget_gb={budget / GB:g}; deleted LRU"}
            if fetch == "tars" else
            {"bytes": 0, "how": f"none: members are held in memory, {workers} + 1 at a time per worker "
                                "(a damaged tar is fetched whole)"}),
        "prepare-audio": {"bytes": int(audio_s * (PCM_BYTES_PER_S + FRAME_RATE * feat_dim * 4)),
                          "how": "16 kHz int16 shards + 50 Hz float32 MFCC"},
        "assign-labels": {"bytes": int(audio_s * FRAME_RATE * 2), "how": "50 Hz int16 labels"},
        # the export plus KEEP states of weights and 2 AdamW moments; one more while a new one
        # is written (the oldest goes once it is complete)
        "train": {"bytes": None if n_params is None else int(n_params * 4 * (1 + 3 * (KEEP + 1))),
                  "how": f"model export + {KEEP} states (weights, 2 AdamW moments; one more while "
                         "a state is written), fp32"
                  if n_params else f"train.init {params['train']['init']!r}: size unknown"},
    }


def _compute_times(project: Path, params: dict[str, Any], hours: float,
                   decoded_s: float) -> dict[str, dict[str, Any]]:
    """prepare-audio, fit-kmeans and assign-labels from the recorded benchmarks."""
    out: dict[str, dict[str, Any]] = {}
    audio_s = hours * 3600
    workers = int(params["prepare_audio"]["workers"])
    if (pa := _bench("prepare_audio", project)) is not None:
        x = float(pa["end_to_end"]["workers_1"]["x_real_time_per_core_wall"])
        out["prepare-audio"] = {"s": decoded_s / (x * workers),
                                "how": f"{decoded_s / 3600:.1f} h decoded at {x:.0f}x real time "
                                       f"per worker, {workers} worker(s)"}
    if (km := _bench("kmeans", project)) is not None:
        frames = min(float(params["kmeans"]["sample_hours"]), hours) * 3600 * FRAME_RATE
        per_frame = km["fit"]["seconds"] / km["frames"]
        out["fit-kmeans"] = {"s": frames * per_frame,
                             "how": f"{frames / 1e6:.1f} M frames at the bench's "
                                    f"{km['frames'] / km['fit']['seconds'] / 1e6:.2f} M frames/s"}
        fps = km["assign"]["k100_threads1"]["frames_per_s_per_core"]
        out["assign-labels"] = {"s": audio_s * FRAME_RATE / fps,
                                "how": f"{audio_s * FRAME_RATE / 1e6:.1f} M frames at "
                                       f"{fps / 1e6:.2f} M frames/s (k=100, one core)"}
    out["train"] = {"s": None, "how": "no GPU benchmark recorded yet "
                                      "(python -m bench.train --device cuda --model base)"}
    return out


def build(project: Path, params: dict[str, Any], *, mb_per_s: float, latency_s: float = 0.05,
          hub_per_5min: dict[str, int] | None = None) -> dict[str, Any]:
    """The plan as numbers, from the outputs of the stages up to select (already run)."""
    from ups.config import DatasetConfig, from_dict
    from ups.dataset import pinned_config

    meta_dir, select_dir = project / "data" / "meta", project / "data" / "select"
    report = _read(select_dir / "report.json")
    if report is None or _read(meta_dir / "fetch_meta.json") is None:
        raise PlanError(f"no selection report under {select_dir} (or no {meta_dir}/fetch_meta.json)")
    ds_cfg = pinned_config(from_dict(DatasetConfig, params["dataset"], "dataset"),
                           meta_dir / "fetch_meta.json")
    fetch = ds_cfg.fetch
    if report["download"]["fetch"] != fetch:
        raise PlanError(f"data/select was made with dataset.fetch {report['download']['fetch']}, "
                        f"params.yaml says {fetch}: run without --no-repro")
    download = _members_download(project, report) if fetch == "members" else _tars_download(ds_cfg, report)
    hours = float(report["selected_hours"])
    decoded_s = _decoded_seconds(select_dir / "chunks.parquet")
    hub = (hub_requests(fetch, download["n_tars"], hub_per_5min or HUB_PER_5MIN)
           if ds_cfg.source == "hub" else None)
    time_s = transfer_times(download, mb_per_s=mb_per_s, latency_s=latency_s,
                            walks=ds_cfg.header_walks,
                            member_streams=ds_cfg.download_workers * int(params["prepare_audio"]["workers"]))
    time_s.update(_compute_times(project, params, hours, decoded_s))
    return {
        "select_hours": float(params["select"]["hours"]), "selected_hours": hours,
        "target_reached": bool(report.get("target_reached_within_1pct")),
        "n_chunks": int(report["n_chunks"]), "decoded_hours": decoded_s / 3600,
        "fetch": fetch, "download": download, "hub": hub,
        "disk": _disk(project, params, fetch, download, hours * 3600), "time": time_s,
        "source": ds_cfg.source, "schedule": _schedule(params, report),
    }


def _schedule(params: dict[str, Any], report: dict[str, Any]) -> dict[str, Any]:
    """The training schedule on each GPU row, from the selection's train hours."""
    from ups.schedule import plan_rows

    t = params["train"]
    split_hours = report.get("split_hours") or {}
    train_chunks = int(round(float(split_hours.get("train", report["selected_hours"])) * 360))
    processes = int(t.get("gpus", 1)) * int(t.get("nodes", 1))
    rows = plan_rows(train_chunks, gpus=processes, batch_size=t.get("batch_size", "auto"),
                     grad_accum=t.get("grad_accum", "auto"), epochs=int(t.get("epochs", 4)),
                     max_steps=t.get("max_steps"), warmup=t.get("warmup_steps", 0.08))
    return {"train_chunks": train_chunks, "processes": processes,
            "learning_rate": float(t.get("learning_rate", 0.0)),
            "lr_schedule": t.get("lr_schedule", "linear"), "rows": rows}


def _gb(n: float | None) -> str:
    return "?" if n is None else f"{n / GB:.2f} GB" if n >= 1e7 else f"{n / 1e6:.2f} MB"


def _dur(s: float | None) -> str:
    if s is None:
        return "?"
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.1f} min" if s >= 60 else f"{s:.0f} s"


def _format_download(plan: dict[str, Any]) -> list[str]:
    d = plan["download"]
    out = [f"Download (dataset.fetch: {plan['fetch']}): {_gb(d['bytes'])} from {d['n_tars']} tars"]
    if plan["fetch"] == "members":
        w, m = d["header_walk"], d["members"]
        out += [f"  header walk  {w['requests']} ranged reads, {_gb(w['bytes'])} "
                f"(~{w['members_per_tar']:.0f} members a tar), {w['how']}",
                f"  members      {m['n_members']} files, {_gb(m['bytes'])}, {m['how']}",
                "  (whole tars would choose other tars: -S dataset.fetch=tars plans that run)"]
    else:
        out.append(f"  tars         {d['n_tars']} whole tars, {_gb(d['tars']['bytes'])}, {d['tars']['how']}")
    hub = plan.get("hub")
    if not hub:
        return [*out, "", f"Hub requests: none (dataset.source: {plan['source']})"]
    out += ["", "Hub requests after select (free account's budget per 5 min, "
                "huggingface.co/docs/hub/rate-limits; --api-calls-per-5min, --resolves-per-5min):"]
    for bucket, what in (("api", "API (paths-info, one per 50 tars a stage)"),
                         ("resolve", "/resolve/ (one per tar a stage)")):
        b = hub[bucket]
        stages = ", ".join(f"{k} {v}" for k, v in b["by_stage"].items())
        floor = (f"at least {_dur(b['least_time_s'])} by the limit" if b["least_time_s"] > 0
                 else "within one window")
        out.append(f"  {what:<44} {b['calls']:>7} of {b['per_5min']} ({stages}): {floor}")
    return out


def format_plan(plan: dict[str, Any]) -> str:
    reached = ("target reached" if plan["target_reached"]
               else "SHORT of the target (see data/select/report.json)")
    out = [f"Plan for select.hours={plan['select_hours']:g}: {plan['selected_hours']:.2f} h in "
           f"{plan['n_chunks']} chunks, {reached}",
           f"Source audio decoded: {plan['decoded_hours']:.1f} h", "", *_format_download(plan)]
    out += ["", "Disk per stage:"]
    out += [f"  {k:<26} {_gb(v['bytes']):>10}  {v['how']}" for k, v in plan["disk"].items()]
    total = sum(v["bytes"] or 0 for v in plan["disk"].values())
    out.append(f"  {'total':<26} {_gb(total):>10}  (the DVC cache holds outputs again unless it links)")
    out += ["", "Time (transfers at --latency-ms and --mb-per-s; the rest from bench/results, a 2-core "
                "machine without GPU):"]
    out += [f"  {k:<26} {_dur(v['s']):>10}  {v['how']}" for k, v in plan["time"].items()]
    sch = plan.get("schedule")
    if sch:
        out += ["", f"Training schedule ({sch['train_chunks']} train chunks, {sch['processes']} "
                    f"processes, peak LR {sch['learning_rate']:g}, {sch['lr_schedule']}; the GPU "
                    "decides an auto batch):"]
        for r in sch["rows"]:
            flag = "" if r["ok"] else "  <- refused: warmup >= total (train.warmup_steps)"
            out.append(f"  {r['gpu']:<28} global batch {r['global_batch']:>5} "
                       f"({r['hours_per_step']:.2f} h/step), {r['steps_per_epoch']} steps/epoch, "
                       f"{r['total_steps']} steps, warmup {r['warmup_steps']}{flag}")
    out += ["", "Nothing has been downloaded. `make train HOURS=...` with the same hours starts it."]
    return "\n".join(out)


def run(project: Path, hours: float, *, params_path: Path, mb_per_s: float, repro: bool = True,
        as_json: bool = False, latency_ms: float = 50.0, hub_per_5min: dict[str, int] | None = None) -> int:
    import yaml

    if hours <= 0:
        raise PlanError(f"HOURS must be > 0, got {hours:g}")
    if set_param(params_path, "select", "hours", float(hours)):
        log.info("plan: select.hours set to %g in %s (as `dvc exp run -S` does)", hours, params_path)
    if repro:
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        res = subprocess.run([sys.executable, "-m", "dvc", "repro", *REPRO_TARGETS], cwd=project,
                             env=env)
        if res.returncode != 0:
            raise PlanError(f"dvc repro {' '.join(REPRO_TARGETS)} failed (exit {res.returncode})")
    params = yaml.safe_load(params_path.read_text(encoding="utf-8"))
    plan = build(project, params, mb_per_s=mb_per_s, latency_s=latency_ms / 1e3,
                 hub_per_5min=hub_per_5min)
    if as_json:
        sys.stdout.write(orjson.dumps(plan, option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(format_plan(plan))
    return 0
