"""A tiny random HuBERT saved locally: the demo's and the tests' `train.init` (the hub is not needed).

`python -m ups.tiny_model DIR [--seed N]` writes config.json + model.safetensors, identical for
the same seed. The CNN keeps HuBERT's kernels and strides (320-sample hop, 400-sample window) so
labels line up with `ups.frames.n_cnn_frames`; only the widths and depth shrink.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

TINY = {
    "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
    "conv_dim": [16] * 7, "conv_kernel": [10, 3, 3, 3, 3, 2, 2], "conv_stride": [5, 2, 2, 2, 2, 2, 2],
    "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 2, "feat_extract_norm": "group",
    "do_stable_layer_norm": False, "mask_time_prob": 0.05, "layerdrop": 0.0,
    "hidden_dropout": 0.0, "attention_dropout": 0.0, "activation_dropout": 0.0,
    "feat_proj_dropout": 0.0, "final_dropout": 0.0,
}


def write_tiny_hubert(out_dir: str | Path, seed: int = 0, **overrides: Any) -> Path:
    """Write a tiny random HubertModel (deterministic for `seed`) to `out_dir`; return it."""
    import torch
    from transformers import HubertConfig, HubertModel

    config = HubertConfig(**{**TINY, **overrides})
    torch.manual_seed(seed)
    model = HubertModel(config)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("out_dir")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    write_tiny_hubert(args.out_dir, args.seed)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
