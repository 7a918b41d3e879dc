"""Training throughput (audio-seconds per second) and model FLOP utilisation.

CPU (default): the trainer (length-bucketed batches cropped to their shortest, DataLoader
worker) against a plain fp32 loop without bucketing (random batches zero-padded to their
longest, data preloaded in memory) on the same synthetic corpus of 2-10 s chunks, same model,
same batch size, in the same run. Throughput counts real audio only (padding is not audio).
MFU = achieved model FLOP/s / peak, with the CPU's peak taken as the best fp32 matmul rate
measured in the same run.

`--compare SRC` also times the trainer of another source tree (a checkout of an earlier
commit) on the same corpus and config, alternating the two (A B A B) so both see the same
machine load, each run in a fresh process for both trees, and records the ratio: how a change
to the trainer moved its speed.

GPU: `python -m bench.train --device cuda --model base` times HuBERT-base (random weights,
bf16) through the trainer with the auto batch table on 10 s chunks (`--compile` for
torch.compile), plus the data loader alone, and reports MFU against the GPU's dense bf16 peak
(H100 SXM 989 TFLOP/s, H200 989, A100 312). `make gpu-check` runs it (bench/gpu.py).

Results: bench/results/train_<device>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.train_fixtures import write_corpus  # noqa: E402
from ups.config import TrainConfig, from_dict  # noqa: E402
from ups.hubert_model import base_config_dict, flops_per_audio_second  # noqa: E402
from ups.tiny_model import write_tiny_hubert  # noqa: E402

SMALL = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "conv_dim": [128] * 7,
    "num_conv_pos_embeddings": 64,
    "num_conv_pos_embedding_groups": 8,
}
PEAK_BF16 = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12, "A10": 125e12}


def cpu_peak_flops() -> float:
    best = 0.0
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    for _ in range(3):
        t = time.perf_counter()
        for _ in range(10):
            a @ b
        best = max(best, 10 * 2 * 1024**3 / (time.perf_counter() - t))
    return best


def logged_rates(live_dir: Path) -> list[float]:
    """The trainer's audio-s/s at each log step, from dvclive (timings are not in the state)."""
    lines = (live_dir / "plots" / "metrics" / "train" / "audio_s_per_s.tsv").read_text().splitlines()
    col = lines[0].split("\t").index("audio_s_per_s")
    return [float(line.split("\t")[col]) for line in lines[1:]]


def trainer_rate(cfg: TrainConfig, corpus: dict, work: Path, warmup_logs: int = 1) -> float:
    from ups.stages import train

    train.run(
        cfg,
        audio_dir=corpus["audio"],
        labels_dir=corpus["labels"],
        model_dir=work / "model",
        state_dir=work / "state",
        live_dir=work / "live",
    )
    return statistics.median(logged_rates(work / "live")[warmup_logs:])  # first logs: warm-up


_OTHER_TREE = """
import json, sys
cfg, corpus, work = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
sys.path.insert(0, sys.argv[4])
import ups
assert ups.__file__.startswith(sys.argv[4]), ups.__file__
from pathlib import Path
from ups.config import TrainConfig, from_dict
from ups.stages import train
train.run(from_dict(TrainConfig, cfg, "train"), audio_dir=Path(corpus["audio"]),
          labels_dir=Path(corpus["labels"]), model_dir=Path(work) / "model",
          state_dir=Path(work) / "state", live_dir=Path(work) / "live")
"""


def tree_rate(src: Path, cfg: dict, corpus: dict, work: Path) -> float:
    """The trainer of source tree `src` on the same corpus and config, in its own process."""
    import subprocess

    corpus_s = json.dumps({k: str(v) for k, v in corpus.items()})
    subprocess.run([sys.executable, "-c", _OTHER_TREE, json.dumps(cfg), corpus_s, str(work), str(src)],
                   cwd=src, check=True, capture_output=True)
    return statistics.median(logged_rates(work / "live")[1:])


def plain_rate(init: Path, corpus: dict, batch_size: int, steps: int, n_clusters: int) -> float:
    """A plain loop: preloaded data, random batches padded to their longest, fp32, no bucketing."""
    from collections import Counter

    from ups.frames import n_cnn_frames
    from ups.hubert_model import ModelSetup, load_hubert
    from ups.masking import compute_mask, frame_valid
    from ups.pretraining import PretrainingHead, PretrainModel, masked_prediction_sums
    from ups.train_data import LabelIndex, list_shards, read_shard

    labels = LabelIndex(corpus["labels"] / "train")
    data = [
        (pcm, labels.get(c))
        for p in list_shards(corpus["audio"] / "train")
        for c, pcm in read_shard(p, Counter())
    ]
    torch.manual_seed(0)
    hubert, _ = load_hubert(ModelSetup(str(init), 0.8, 10, 2, None, "sdpa"))
    model = PretrainModel(hubert, PretrainingHead(hubert.config.hidden_size, n_clusters, final_dim=256), 0.1)
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5)
    rng = np.random.default_rng(0)
    audio_s, elapsed = 0.0, 0.0
    for step in range(steps):
        idx = rng.choice(len(data), batch_size, replace=False)
        batch = [data[i] for i in idx]
        n = max(len(b[0]) for b in batch)
        x = np.zeros((batch_size, n), dtype=np.float32)
        frames = [n_cnn_frames(len(b[0])) for b in batch]
        lab = np.zeros((batch_size, n_cnn_frames(n)), dtype=np.int64)
        for i, (pcm, lb) in enumerate(batch):
            x[i, : len(pcm)] = pcm / 32768.0
            lab[i, : len(lb)] = lb
        mask = torch.from_numpy(compute_mask(frames, n_cnn_frames(n), mask_prob=0.8, mask_length=10, rng=rng))
        valid = torch.from_numpy(frame_valid(frames, n_cnn_frames(n)))
        t = time.perf_counter()
        logits, _ = model(torch.from_numpy(x), None, mask)
        s = masked_prediction_sums(logits, torch.from_numpy(lab), mask, valid)
        (s.objective / s.n_masked).backward()
        opt.step()
        opt.zero_grad()
        if step > 0:  # first step: warm-up
            elapsed += time.perf_counter() - t
            audio_s += sum(len(b[0]) for b in batch) / 16000
    return audio_s / elapsed


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    p.add_argument("--model", default="small", choices=["small", "base"])
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--chunks", type=int, default=96)
    p.add_argument("--batch-size", default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--compare", default=None, metavar="SRC",
                   help="also time the trainer of this source tree (CPU), alternating with this one")
    p.add_argument("--repeats", type=int, default=2, help="runs of each trainer with --compare")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    work = Path(
        tempfile.mkdtemp(prefix="bench-train-")
    )
    try:
        seconds = (2.0, 10.0) if args.device == "cpu" else (10.0, 10.0)  # GPU: UPS's 10 s chunks
        corpus = write_corpus(work / "corpus", n_train=args.chunks, n_valid=4, n_shards=8, seconds=seconds)
        arch = SMALL if args.model == "small" else base_config_dict()
        init = write_tiny_hubert(work / "init", seed=0, **arch)
        from transformers import HubertConfig

        flops = flops_per_audio_second(HubertConfig.from_pretrained(init), 10.0)
        if args.device == "cpu":
            bs = int(args.batch_size or 4)
            cfg_dict = {
                "init": str(init),
                "device": "cpu",
                "batch_size": bs,
                "grad_accum": 1,
                "num_workers": 1,
                "max_steps": args.steps,
                "warmup_steps": 1,
                "log_every_steps": 5,
                "valid_every_steps": 10**6,
                "save_every_steps": 10**6,
                "max_sample_seconds": 10.0,
            }
            cfg = from_dict(TrainConfig, cfg_dict, "train")
            compared: dict = {}
            if args.compare:
                ours, theirs = [], []
                for k in range(args.repeats):
                    # both trees in a fresh process each: the same harness on both sides
                    ours.append(tree_rate(ROOT, cfg_dict, corpus, work / f"run{k}"))
                    src = Path(args.compare).resolve()
                    theirs.append(tree_rate(src, cfg_dict, corpus, work / f"other{k}"))
                rate = statistics.median(ours)
                compared = {
                    "compared_tree": args.compare,
                    "trainer_audio_s_per_s_runs": ours,
                    "compared_trainer_audio_s_per_s_runs": theirs,
                    "compared_trainer_audio_s_per_s": statistics.median(theirs),
                    "speedup_vs_compared_trainer": rate / statistics.median(theirs),
                }
            else:
                rate = trainer_rate(cfg, corpus, work / "run")
            base = plain_rate(init, corpus, bs, args.steps, 5)
            peak = cpu_peak_flops()
            result = {
                **compared,
                "load_average": os.getloadavg(),
                "device": f"cpu: {platform.machine()}, {torch.get_num_threads()} threads",
                "model": args.model,
                "params_model": arch,
                "batch_size": bs,
                "steps": args.steps,
                "chunk_seconds": [2.0, 10.0],
                "flops_per_audio_second": flops,
                "trainer_audio_s_per_s": rate,
                "plain_fp32_unbucketed_audio_s_per_s": base,
                "speedup_vs_plain": rate / base,
                "cpu_peak_fp32_flops_measured": peak,
                "trainer_mfu_vs_measured_peak": rate * flops / peak,
                "plain_mfu_vs_measured_peak": base * flops / peak,
            }
        else:
            name = torch.cuda.get_device_name(0)
            cfg = from_dict(
                TrainConfig,
                {
                    "init": str(init),
                    "device": "cuda",
                    "batch_size": int(args.batch_size) if args.batch_size else "auto",
                    "grad_accum": 1,
                    "num_workers": 6,
                    "max_steps": args.steps,
                    "warmup_steps": 1,
                    "log_every_steps": 5,
                    "valid_every_steps": 10**6,
                    "save_every_steps": 10**6,
                    "compile": args.compile,
                },
                "train",
            )
            rate = trainer_rate(cfg, corpus, work / "run", warmup_logs=2 if args.compile else 1)
            loader = loader_rate(cfg, corpus)
            peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
            result = {
                "device": name,
                "model": args.model,
                "compile": args.compile,
                "batch_size": cfg.batch_size,
                "steps": args.steps,
                "flops_per_audio_second": flops,
                "trainer_audio_s_per_s": rate,
                "loader_audio_s_per_s": loader,
                "loader_over_gpu": loader / rate,
                "peak_bf16_flops": peak,
                "mfu": rate * flops / peak if peak else None,
            }
        out = Path(args.out or ROOT / "bench" / "results" / f"train_{args.device}.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
        print(json.dumps(result, indent=2, sort_keys=True))
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def loader_rate(cfg: TrainConfig, corpus: dict) -> float:
    """Audio-seconds per second the DataLoader delivers on its own (CPU side of the pipeline)."""
    from ups.batch_table import resolve_batch
    from ups.stages.train import _loader
    from ups.train_data import EMPTY, BatchSpec, ShardBatches

    mem = torch.cuda.get_device_properties(0).total_memory / 2**30 if torch.cuda.is_available() else None
    bs, _ = resolve_batch(cfg.batch_size, 1, mem)
    spec = BatchSpec(
        bs,
        cfg.max_sample_seconds,
        cfg.min_sample_seconds,
        cfg.crop,
        cfg.mask_prob,
        cfg.mask_length,
        cfg.min_masks,
        cfg.normalize_audio,
    )
    ds = ShardBatches(corpus["audio"] / "train", corpus["labels"] / "train", spec, seed=0, train=True)
    n_batches = 3 * (ds.n_samples // bs)  # three epochs of one process
    audio, t = 0.0, time.perf_counter()
    for k, b in enumerate(_loader(ds, cfg, torch.device("cpu"), 0)):
        if k == n_batches:
            break
        if EMPTY not in b:
            audio += b["n_samples"] / 16000
    return audio / (time.perf_counter() - t)


if __name__ == "__main__":
    raise SystemExit(main())
