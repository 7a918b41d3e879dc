"""Features from one layer of a HuBERT model (the second-iteration recipe), from 16 kHz PCM.

`transformers.HubertModel` is loaded from `features.hubert_model`: `init` (the default) is the
trainer's initial model, `train.init` at `train.init_revision` (`tiny`: the same seeded tiny model
the trainer writes), so labels come from the model that continues training on them; otherwise a
hub id (at `features.revision`) or a local directory. The feature of frame t is the output of
transformer layer `layer` (1-based, as fairseq's `dump_hubert_feature.py --layer`; the same as
transformers' `hidden_states[layer]`). The layers above it are dropped before the first forward
pass (layer 9 of 12 costs 3/4 of a full pass) and the output is read by a forward hook.

Chunks of equal length are batched together (`features.batch_chunks`), so no padding ever
changes a frame; the CNN gives exactly `n_cnn_frames(n_samples)` frames per chunk. On a GPU the
forward runs under bf16 autocast (`features.precision: auto`), on the CPU in float32. int16 PCM is
scaled by 1/32768 and, with `train.normalize_audio`, normalised per chunk, exactly as the trainer
feeds it: the labels come from the waveform the model is trained on.
"""

from __future__ import annotations

import logging
import tempfile
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ups.config import FeaturesConfig, TrainConfig
from ups.frames import n_cnn_frames

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureModel:
    """The HubertModel whose layer is clustered: a hub id, a local directory or `tiny`."""

    name: str
    revision: str = "main"  # hub revision; ignored for a local directory and for tiny
    tiny_seed: int = 0  # seed of the tiny model (the trainer's train.seed)

    @property
    def pinned_revision(self) -> str:
        """The revision that selects the weights: "" for a local directory or the tiny model."""
        return "" if self.name == "tiny" or Path(self.name).is_dir() else self.revision


def feature_model(features: FeaturesConfig, train: TrainConfig | None = None) -> FeatureModel:
    """`features.hubert_model` resolved: `init` follows `train.init` / `train.init_revision`."""
    if features.hubert_model == "init":
        train = train or TrainConfig()
        return FeatureModel(train.init, train.init_revision, train.seed)
    return FeatureModel(features.hubert_model, features.revision)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def pick_precision(precision: str, device: str) -> str:
    """auto: bf16 on a CUDA device that has it, else fp32 (CPU bf16 is slower than fp32 here)."""
    import torch

    if precision != "auto":
        return precision
    if device.startswith("cuda") and torch.cuda.is_available() and torch.cuda.is_bf16_supported():
        return "bf16"
    return "fp32"


def load_feature_model(model: FeatureModel) -> Any:
    """HubertModel in eval mode; `tiny` is written (deterministically) to a scratch dir first."""
    from transformers import HubertModel

    if model.name == "tiny":
        from ups.tiny_model import write_tiny_hubert

        with tempfile.TemporaryDirectory(prefix="ups-tiny-") as scratch:
            path = write_tiny_hubert(Path(scratch) / "tiny-init", seed=model.tiny_seed)
            return HubertModel.from_pretrained(path).eval()
    if Path(model.name).is_dir():
        return HubertModel.from_pretrained(model.name).eval()
    return HubertModel.from_pretrained(model.name, revision=model.revision).eval()


def trainer_waveform(x: np.ndarray, normalize_audio: bool) -> np.ndarray:
    """float32 rows (chunks x samples) as the trainer feeds them: per-chunk zero mean and unit
    variance when `train.normalize_audio` (Large-style models), else unchanged."""
    if not normalize_audio:
        return x
    return ((x - x.mean(axis=1, keepdims=True))
            / np.sqrt(x.var(axis=1, keepdims=True) + 1e-7)).astype(np.float32, copy=False)


class LayerFeatures:
    """List of int16 PCM arrays -> layer features, batched by equal length on one device."""

    def __init__(self, model: FeatureModel, layer: int, device: str = "auto", batch_chunks: int = 16,
                 precision: str = "auto", normalize_audio: bool = False) -> None:
        import torch

        self.device = pick_device(device)
        self.precision = pick_precision(precision, self.device)
        hubert = load_feature_model(model)
        n_layers = int(hubert.config.num_hidden_layers)
        if not 1 <= layer <= n_layers:
            raise ValueError(f"features.layer must be in [1, {n_layers}] for {model.name}, got {layer}")
        # the commit the hub resolved (None for a local directory): recorded beside the centroids
        self.commit = getattr(hubert.config, "_commit_hash", None)
        hubert.encoder.layers = hubert.encoder.layers[:layer]  # nothing above `layer` is computed
        self._out: list[Any] = []
        hubert.encoder.layers[layer - 1].register_forward_hook(
            lambda _m, _i, out: self._out.append(out[0] if isinstance(out, tuple) else out))
        self.model = hubert.to(self.device)
        self.layer = layer
        self.batch_chunks = batch_chunks
        self.normalize_audio = normalize_audio
        self.dim = int(hubert.config.hidden_size)
        self._torch = torch
        log.info("HuBERT features: %s layer %d on %s (%s)", model.name, layer, self.device, self.precision)

    def batches(self, pcms: list[np.ndarray]) -> Iterator[tuple[list[int], Any]]:
        """(indices into pcms, float32 tensor (B, T, dim) on the device), equal lengths per batch."""
        torch = self._torch
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(pcms):
            by_len[len(p)].append(i)
        for n, idx in sorted(by_len.items()):
            for s in range(0, len(idx), self.batch_chunks):
                part = idx[s:s + self.batch_chunks]
                x = np.stack([np.asarray(pcms[i]) for i in part])
                if x.dtype == np.int16:
                    x = x.astype(np.float32) / np.float32(32768.0)
                x = trainer_waveform(np.ascontiguousarray(x, dtype=np.float32), self.normalize_audio)
                xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(self.device)
                self._out.clear()
                with torch.inference_mode(), torch.autocast(
                        device_type=torch.device(self.device).type, dtype=torch.bfloat16,
                        enabled=self.precision == "bf16"):
                    self.model(xt)
                h = self._out.pop().float()
                assert h.shape[1] == n_cnn_frames(n), (h.shape, n)
                yield part, h

    def __call__(self, pcms: list[np.ndarray]) -> list[np.ndarray]:
        out: list[np.ndarray | None] = [None] * len(pcms)
        for part, h in self.batches(pcms):
            hn = h.cpu().numpy()
            for j, i in enumerate(part):
                out[i] = np.ascontiguousarray(hn[j])
        return out  # type: ignore[return-value]
