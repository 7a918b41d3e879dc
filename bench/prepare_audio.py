"""prepare-audio throughput: x real time per CPU core end to end vs MP3 decode alone, same run.

Builds a synthetic UPS-like corpus (44.1 kHz MP3s of 60 s, half stereo, 15 files = 15 min per
tar; `--distinct` files are encoded and reused under distinct keys, since encoding is slower than
the stage), selects every full 10 s chunk, and times (a) soundfile decode of the distinct files in
one process, (b) decode + mono + soxr HQ resample, (c) the whole `ups prepare-audio` command
(decode, cut, int16 shards, MFCC, markers), each in a fresh process with its peak RSS: 1 and 2
workers on `--hours` of audio (enough per worker that process start-up does not hide the second
worker), and 1 worker on 1/4 and 1/2 of it for the memory scale-up. The load average is recorded:
the 2-core machine is shared.

    python -m bench.prepare_audio [--hours 4] [--out bench/results/prepare_audio.json]
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import soundfile as sf
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import make_tar  # noqa: E402
from ups.atomic import write_json  # noqa: E402
from ups.audio import decode_mono_16k  # noqa: E402

FILE_S = 60.0
SR = 44100


def speechlike(duration_s: float, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * SR)) / SR
    f0 = 90 + 80 * rng.random() + 40 * np.sin(2 * np.pi * 0.5 * t)
    voiced = sum(np.sin(2 * np.pi * h * np.cumsum(f0) / SR) / h for h in range(1, 8))
    env = np.clip(np.sin(2 * np.pi * 2.5 * t + rng.random()), 0, None)
    x = 0.15 * voiced * env + 0.03 * rng.standard_normal(len(t))
    return np.stack([x * (1 - 0.2 * c) for c in range(channels)], axis=1).astype(np.float32)


def encode(n_distinct: int) -> list[bytes]:
    blobs = []
    for i in range(n_distinct):
        buf = io.BytesIO()
        sf.write(buf, speechlike(FILE_S, 1 + i % 2, i), SR, format="MP3")
        blobs.append(buf.getvalue())
    return blobs


def build(root: Path, blobs: list[bytes], n_files: int, files_per_tar: int) -> Path:
    rows = []
    for t in range(0, n_files, files_per_tar):
        tar = t // files_per_tar + 1
        members = {f"item{i}/file{i}.mp3": blobs[i % len(blobs)]
                   for i in range(t, min(n_files, t + files_per_tar))}
        make_tar(root / "sample" / "audio" / f"{tar:06d}.tar", members)
        for i in range(t, min(n_files, t + files_per_tar)):
            for c in range(int(FILE_S // 10)):
                rows.append((tar, f"item{i}/file{i}", c * 10.0, c * 10.0 + 10.0))
    rows.sort()
    pq.write_table(pa.table({
        "chunk_id": pa.array(range(len(rows)), pa.int64()),
        "tar": pa.array([r[0] for r in rows], pa.int32()),
        "key": [r[1] for r in rows], "start_s": [r[2] for r in rows], "end_s": [r[3] for r in rows],
        "language": ["en"] * len(rows),
        "split": ["valid" if i % 20 == 0 else "train" for i in range(len(rows))],
        "speech_ratio": [1.0] * len(rows)}), root / "chunks.parquet")
    return root


def loadavg() -> list[float]:
    return [float(v) for v in Path("/proc/loadavg").read_text().split()[:3]]


def run_stage(root: Path, out: Path, workers: int) -> dict:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"].update({"source": "local", "local_root": str(root / "sample")})
    params["prepare_audio"]["workers"] = workers
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    script = (
        "import resource, sys, time\n"
        "from ups.cli import main\n"
        "t = time.perf_counter()\n"
        f"rc = main(['prepare-audio', '--params', '{out}/params.yaml', '--chunks', "
        f"'{root}/chunks.parquet', '--audio-dir', '{out}/audio', '--features-dir', '{out}/features'])\n"
        "wall = time.perf_counter() - t\n"
        "a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)\n"
        "cpu = a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime\n"
        "print(f'RESULT {rc} {wall} {a.ru_maxrss} {b.ru_maxrss} {cpu}')\n")
    env = {**os.environ, "PYTHONPATH": str(REPO), "UPS_PROGRESS": "0", "OMP_NUM_THREADS": "1",
           "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True,
                         text=True, check=True)
    line = [ln for ln in res.stdout.splitlines() if ln.startswith("RESULT")][-1].split()
    assert line[1] == "0", res.stderr[-2000:]
    return {"wall_s": float(line[2]), "cpu_s": float(line[5]),
            "peak_rss_mb": max(int(line[3]), int(line[4])) / 1024}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--hours", type=float, default=4.0)
    ap.add_argument("--distinct", type=int, default=20)
    ap.add_argument("--files-per-tar", type=int, default=15)
    ap.add_argument("--out", default=str(REPO / "bench/results/prepare_audio.json"))
    args = ap.parse_args()
    n_files = int(args.hours * 3600 / FILE_S)
    blobs = encode(args.distinct)
    body: dict = {"machine": {"cpus": os.cpu_count()},
                  "corpus": {"files": n_files, "distinct_files": len(blobs), "file_s": FILE_S,
                             "audio_hours": n_files * FILE_S / 3600, "sample_rate": SR, "chunks_s": 10.0,
                             "files_per_tar": args.files_per_tar}}
    load = loadavg()
    t = time.process_time()
    for b in blobs:
        sf.read(io.BytesIO(b), dtype="float32", always_2d=True)
    decode_x = len(blobs) * FILE_S / (time.process_time() - t)
    t = time.process_time()
    for b in blobs:
        decode_mono_16k(b, quality="HQ")
    body["decode_only_x_real_time_per_core"] = decode_x
    body["decode_mono_resample_hq_x_real_time_per_core"] = len(blobs) * FILE_S / (time.process_time() - t)
    body["decode_loadavg_before"] = load
    with tempfile.TemporaryDirectory() as tmp:
        results = {}
        root = build(Path(tmp) / "full", blobs, n_files, args.files_per_tar)
        audio_s = n_files * FILE_S
        for workers in (1, 2):
            out = Path(tmp) / f"out{workers}"
            out.mkdir()
            load = loadavg()
            r = run_stage(root, out, workers)
            shutil.rmtree(out)
            r["loadavg_before"] = load
            r["x_real_time"] = audio_s / r["wall_s"]
            r["x_real_time_per_core_wall"] = audio_s / r["wall_s"] / workers
            r["x_real_time_per_cpu_second"] = audio_s / r["cpu_s"]
            results[f"workers_{workers}"] = r
            print(workers, r, flush=True)
        shutil.rmtree(root)
        scale = {"hours": [], "peak_rss_mb": [], "wall_s": [], "loadavg_before": []}
        for frac in (0.25, 0.5):
            n = int(n_files * frac)
            root = build(Path(tmp) / f"part{n}", blobs, n, args.files_per_tar)
            out = Path(tmp) / f"scale{n}"
            out.mkdir()
            scale["loadavg_before"].append(loadavg())
            r = run_stage(root, out, 1)
            shutil.rmtree(out)
            shutil.rmtree(root)
            scale["hours"].append(n * FILE_S / 3600)
            scale["peak_rss_mb"].append(r["peak_rss_mb"])
            scale["wall_s"].append(r["wall_s"])
        scale["hours"].append(audio_s / 3600)
        scale["peak_rss_mb"].append(results["workers_1"]["peak_rss_mb"])
        scale["wall_s"].append(results["workers_1"]["wall_s"])
        scale["loadavg_before"].append(results["workers_1"]["loadavg_before"])
    slope = float(np.polyfit(scale["hours"], scale["peak_rss_mb"], 1)[0])
    scale["slope_mb_per_hour"] = slope
    scale["peak_rss_mb_at_100_h_linear_extrapolation"] = scale["peak_rss_mb"][-1] + slope * (
        100 - scale["hours"][-1])
    w1, w2 = results["workers_1"], results["workers_2"]
    body.update({
        "end_to_end": results,
        "end_to_end_per_cpu_second_over_decode_only": w1["x_real_time_per_cpu_second"] / decode_x,
        "end_to_end_wall_1_worker_over_decode_only": w1["x_real_time"] / decode_x,
        "speedup_2_workers": w2["x_real_time"] / w1["x_real_time"],
        "memory_scale_up": scale,
    })
    write_json(args.out, body)
    print(yaml.safe_dump(body, sort_keys=False))


if __name__ == "__main__":
    main()
