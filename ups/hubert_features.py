"""Features from one layer of a HuBERT model (the second-iteration recipe), from 16 kHz PCM.

`transformers.HubertModel` is loaded from `features.hubert_model` (hub id or local directory);
`hidden_states[layer]` is the output of transformer layer `layer` (1-based, as fairseq's
`dump_hubert_feature.py --layer`). Chunks of equal length are batched together, so no padding
ever changes a frame; the CNN gives exactly `n_cnn_frames(n_samples)` frames per chunk.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import numpy as np

from ups.frames import n_cnn_frames

log = logging.getLogger(__name__)


def pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


class LayerFeatures:
    """Callable: list of int16/float PCM arrays -> list of (T_i, hidden) float32 arrays."""

    def __init__(self, model: str, layer: int, device: str = "auto", batch_chunks: int = 8) -> None:
        import torch
        from transformers import HubertModel

        self.device = pick_device(device)
        self.model = HubertModel.from_pretrained(model).eval().to(self.device)
        n_layers = self.model.config.num_hidden_layers
        if not 1 <= layer <= n_layers:
            raise ValueError(f"features.layer must be in [1, {n_layers}] for {model}, got {layer}")
        self.layer = layer
        self.batch_chunks = batch_chunks
        self.dim = int(self.model.config.hidden_size)
        self._torch = torch
        log.info("HuBERT features: %s layer %d on %s", model, layer, self.device)

    def __call__(self, pcms: list[np.ndarray]) -> list[np.ndarray]:
        torch = self._torch
        out: list[np.ndarray | None] = [None] * len(pcms)
        by_len: dict[int, list[int]] = defaultdict(list)
        for i, p in enumerate(pcms):
            by_len[len(p)].append(i)
        for n, idx in sorted(by_len.items()):
            for s in range(0, len(idx), self.batch_chunks):
                part = idx[s:s + self.batch_chunks]
                x = np.stack([np.asarray(pcms[i]) for i in part])
                if x.dtype == np.int16:
                    x = x.astype(np.float32) / np.float32(32767.0)
                with torch.inference_mode():
                    h = self.model(torch.from_numpy(x).to(self.device),
                                   output_hidden_states=True).hidden_states[self.layer]
                h = h.float().cpu().numpy()
                assert h.shape[1] == n_cnn_frames(n), (h.shape, n)
                for j, i in enumerate(part):
                    out[i] = np.ascontiguousarray(h[j])
        return out  # type: ignore[return-value]
