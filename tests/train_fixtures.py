"""A tiny labelled corpus in the formats prepare-audio and assign-labels write: shards + labels.

Each chunk is a tone whose frequency changes every 0.5 s; the label of a frame is
the index of its tone, so a model can learn it and the loss can fall.
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from ups.frames import CNN_HOP_SAMPLES, n_cnn_frames

FREQS = np.array([220.0, 440.0, 880.0, 1760.0, 3000.0])
SEGMENT_FRAMES = 25  # a tone lasts 0.5 s: masked frames can be inferred from their neighbours


def chunk_audio(rng: np.random.Generator, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """int16 pcm and its per-frame labels (the tone playing at each frame's centre)."""
    t_frames = n_cnn_frames(n_samples)
    seg = rng.integers(0, len(FREQS), size=t_frames // SEGMENT_FRAMES + 2)
    per_sample = np.repeat(seg, SEGMENT_FRAMES * CNN_HOP_SAMPLES)[:n_samples]
    phase = np.cumsum(2 * np.pi * FREQS[per_sample] / 16000)
    x = 0.3 * np.sin(phase) + 0.01 * rng.standard_normal(n_samples)
    centres = np.arange(t_frames) * CNN_HOP_SAMPLES + 200
    labels = per_sample[centres].astype(np.int16)
    return (x * 32767).astype(np.int16), labels


def _member(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def write_corpus(
    root: Path,
    *,
    n_train: int = 24,
    n_valid: int = 6,
    n_shards: int = 3,
    seconds=(1.0, 2.0),
    seed: int = 0,
    n_eval: int = 0,
    train_shard_sizes: list[int] | None = None,
    chunks_per_file: int = 1,
) -> dict[str, Path]:
    """`root/audio/{train,valid}/*.tar` and `root/labels/{train,valid}/*.npy`; returns the two dirs.

    With n_eval, also `root/audio/eval` (no labels, as assign-labels leaves it). Chunk c belongs
    to file `item/file{c // chunks_per_file}` (the 10 s chunks of one UPS recording share it);
    `train_shard_sizes` gives the train split's chunks per shard (uneven, as source tars make them)."""
    rng = np.random.default_rng(seed)
    chunk_id = 0
    for split, n in (("train", n_train), ("valid", n_valid), ("eval", n_eval)):
        if n == 0 and split == "eval":
            continue
        shard_dir = root / "audio" / split
        label_dir = root / "labels" / split
        shard_dir.mkdir(parents=True, exist_ok=True)
        if split != "eval":
            label_dir.mkdir(parents=True, exist_ok=True)
        ids, labels = [], []
        per_shard = int(np.ceil(n / n_shards))
        sizes = [per_shard] * n_shards
        if split == "train" and train_shard_sizes is not None:
            sizes, n = list(train_shard_sizes), sum(train_shard_sizes)
        for k, size in enumerate(sizes):
            with tarfile.open(shard_dir / f"{k:06d}-000.tar", "w") as tf:
                for _ in range(size):
                    if len(ids) == n:
                        break
                    n_samples = int(rng.uniform(*seconds) * 16000)
                    pcm, lab = chunk_audio(rng, n_samples)
                    key = f"{chunk_id:09d}"
                    buf = io.BytesIO()
                    np.save(buf, pcm, allow_pickle=False)
                    _member(tf, f"{key}.pcm.npy", buf.getvalue())
                    meta = {
                        "chunk_id": chunk_id,
                        "tar": k,
                        "key": f"item/file{chunk_id // chunks_per_file}",
                        "start_s": 0.0,
                        "end_s": n_samples / 16000,
                        "language": "xx",
                        "split": split,
                        "n_samples": n_samples,
                    }
                    _member(tf, f"{key}.json", orjson.dumps(meta))
                    ids.append(chunk_id)
                    labels.append(lab)
                    chunk_id += 1
        if split == "eval":
            continue
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in labels])]).astype(np.int64)
        np.save(label_dir / "chunk_ids.npy", np.array(ids, dtype=np.int64))
        np.save(label_dir / "offsets.npy", offsets)
        np.save(label_dir / "labels.npy", np.concatenate(labels).astype(np.int16))
    return {"audio": root / "audio", "labels": root / "labels"}


def assert_same_training(h1: list[dict], h2: list[dict], model1: Path, model2: Path) -> None:
    """Two runs at the same global batch (any split over ranks, nodes, accumulation, workers):
    the same logged metrics step by step and, up to float summation order, the same weights."""
    import pytest
    import torch
    from safetensors.torch import load_file

    assert len(h1) == len(h2) > 3
    for a, b in zip(h1, h2, strict=True):
        assert a["step"] == b["step"]
        for k in ("train/loss", "train/acc_masked", "valid/loss"):
            if k in a:
                assert a[k] == pytest.approx(b[k], rel=1e-4, abs=1e-5), (a["step"], k)
    w1 = load_file(str(model1 / "model.safetensors"))
    w2 = load_file(str(model2 / "model.safetensors"))
    for k in w1:
        torch.testing.assert_close(w1[k], w2[k], rtol=1e-3, atol=1e-4)


def tiny_pretrain_model(tmp_path: Path, **kw: Any) -> tuple[Any, dict]:
    """A tiny random HuBERT as training loads it, with a 7-cluster head: (PretrainModel, the
    initial SpecAugment settings)."""
    import torch

    from ups.hubert_model import ModelSetup, load_hubert
    from ups.pretraining import PretrainingHead, PretrainModel
    from ups.tiny_model import write_tiny_hubert

    init = write_tiny_hubert(tmp_path / "init", seed=0, **kw)
    hubert, original = load_hubert(ModelSetup(str(init), 0.8, 10, 2, None, "sdpa"))
    torch.manual_seed(0)
    head = PretrainingHead(hubert.config.hidden_size, 7, final_dim=8)
    return PretrainModel(hubert, head, feature_grad_scale=0.1), original


BASE = {
    "device": "cpu",
    "batch_size": 4,
    "grad_accum": 1,
    "num_workers": 0,
    "learning_rate": 5e-3,
    "warmup_steps": 2,
    "final_dim": 16,
    "min_sample_seconds": 0.5,
    "log_every_steps": 2,
    "valid_every_steps": 4,
    "save_every_steps": 4,
}


def train_config(init: str, **kw: Any) -> Any:
    """A TrainConfig for the tiny test corpora (BASE, then `kw`)."""
    from ups.config import TrainConfig, from_dict

    return from_dict(TrainConfig, {**BASE, "init": init, **kw}, "train")


def run_train(cfg: Any, corpus: dict[str, Path], out: Path, **kw: Any) -> dict:
    """The train stage on a corpus of `write_corpus`, its outputs under `out`."""
    from ups.stages import train

    return train.run(
        cfg,
        audio_dir=corpus["audio"],
        labels_dir=corpus["labels"],
        model_dir=out / "model",
        state_dir=out / "state",
        live_dir=out / "live",
        **kw,
    )


def train_history(out: Path) -> list[dict]:
    """The logged history of the run under `out` (its latest state's)."""
    import json

    from ups.train_state import latest_state

    return json.loads((latest_state(out / "state") / "history.json").read_text())
