"""transformers' HubertModel loaded for masked pre-training, its export and its FLOP count.

Masking goes through the model's own mask embedding (`masked_spec_embed`): transformers applies
`mask_time_indices` only when `config.apply_spec_augment` is True, and creates the embedding only
when `mask_time_prob > 0`. So `load_hubert` sets `apply_spec_augment=True`, `mask_time_prob` to
`train.mask_prob` (which also documents it) and `mask_feature_prob=0`, and training always passes
`mask_time_indices`, so the model never draws masks of its own (the mask itself is applied by
`ups.pretraining.PretrainModel`). Evaluation passes no mask and runs in eval mode: nothing is
masked. The export restores the initial
model's SpecAugment settings so that downstream fine-tuning behaves as with the original, but
always keeps the trained `masked_spec_embed`. `head.json` records the sha256 of the labels the
head was trained on (`ups.train_data.labels_digest`), so a head is never scored on other labels.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ups.pretraining import PretrainingHead, PretrainModel

AUGMENT_KEYS = (
    "apply_spec_augment",
    "mask_time_prob",
    "mask_time_length",
    "mask_time_min_masks",
    "mask_feature_prob",
    "mask_feature_length",
)


@dataclass(frozen=True)
class ModelSetup:
    init: str
    mask_prob: float
    mask_length: int
    min_masks: int
    layerdrop: float | None
    attn_implementation: str
    revision: str = "main"  # hub revision of `init` (a commit sha pins it); unused for a directory


def load_hubert(setup: ModelSetup) -> tuple[Any, dict[str, Any]]:
    """HubertModel from a hub id or a local directory, configured for masked training.

    Returns the model and the initial config's SpecAugment settings (restored at export)."""
    from transformers import HubertConfig, HubertModel

    config = HubertConfig.from_pretrained(setup.init, revision=setup.revision)  # ignored for a dir
    original = {k: getattr(config, k) for k in AUGMENT_KEYS}
    overrides: dict[str, Any] = {
        "apply_spec_augment": True,
        "mask_time_prob": setup.mask_prob,
        "mask_time_length": setup.mask_length,
        "mask_time_min_masks": setup.min_masks,
        "mask_feature_prob": 0.0,
    }
    if setup.layerdrop is not None:
        overrides["layerdrop"] = setup.layerdrop
    for k, v in overrides.items():
        setattr(config, k, v)
    model = HubertModel.from_pretrained(
        setup.init, config=config, attn_implementation=setup.attn_implementation, revision=setup.revision
    )
    return model, original


def export(
    model: PretrainModel, original_augment: dict[str, Any], out_dir: Path, info: dict[str, Any]
) -> None:
    """Write `save_pretrained` files (config.json + model.safetensors), the head and a JSON."""
    from safetensors.torch import save_file
    from transformers import Wav2Vec2FeatureExtractor

    hubert: Any = model.hubert
    saved = {k: getattr(hubert.config, k) for k in AUGMENT_KEYS}
    for k, v in original_augment.items():
        setattr(hubert.config, k, v)
    try:
        # masked_spec_embed is kept even when the restored config would not create it (mask
        # probabilities 0): it is a trained weight, and whoever masks this model again (evaluate,
        # fine-tuning with SpecAugment) must get it, not a fresh random one. A plain
        # from_pretrained with the restored config reports it as unused and works unchanged.
        hubert.save_pretrained(out_dir, state_dict=dict(hubert.state_dict()), safe_serialization=True)
    finally:
        for k, v in saved.items():
            setattr(hubert.config, k, v)
    head: Any = model.head
    save_file(
        {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()},
        str(out_dir / "head.safetensors"),
    )
    head_info = {
        "kind": head.kind,
        "n_clusters": head.n_clusters,
        "temperature": head.temperature,
        "hidden_size": hubert.config.hidden_size,
    }
    if head.kind == "cosine":
        head_info["final_dim"] = head.final_proj.out_features
    if info.get("labels_sha256"):
        head_info["labels_sha256"] = info["labels_sha256"]  # the labels the head predicts
    (out_dir / "head.json").write_text(json.dumps(head_info, indent=2, sort_keys=True) + "\n")
    Wav2Vec2FeatureExtractor(
        feature_size=1,
        sampling_rate=16000,
        padding_value=0.0,
        do_normalize=bool(info.get("normalize_audio", False)),
        return_attention_mask=False,
    ).save_pretrained(out_dir)
    (out_dir / "training.json").write_text(json.dumps(info, indent=2, sort_keys=True, default=str) + "\n")


def load_head(model_dir: Path) -> PretrainingHead:
    """The pretraining head saved beside an export."""
    from safetensors.torch import load_file

    info = json.loads((Path(model_dir) / "head.json").read_text())
    head = PretrainingHead(
        info["hidden_size"],
        info["n_clusters"],
        kind=info["kind"],
        final_dim=info.get("final_dim", 256),
        temperature=info["temperature"],
    )
    head.load_state_dict(load_file(str(Path(model_dir) / "head.safetensors")))
    return head


def flops_per_audio_second(config: Any, seconds: float = 10.0, training: bool = True) -> float:
    """Model FLOPs per second of 16 kHz audio (multiply-add = 2 FLOPs), on `seconds`-long inputs;
    training = 3 x forward. HuBERT-base: about 14.8 GFLOP forward, 44 GFLOP training."""
    n = int(seconds * 16000)
    flops = 0.0
    length = n
    c_in = 1
    for dim, k, s in zip(config.conv_dim, config.conv_kernel, config.conv_stride, strict=True):
        length = (length - k) // s + 1
        flops += 2.0 * c_in * dim * k * length
        c_in = dim
    t = length
    d = config.hidden_size
    flops += 2.0 * c_in * d * t  # feature projection
    groups = config.num_conv_pos_embedding_groups
    flops += 2.0 * d * (d // groups) * config.num_conv_pos_embeddings * t
    per_layer = 2.0 * t * (4 * d * d + 2 * d * config.intermediate_size) + 4.0 * t * t * d
    flops += config.num_hidden_layers * per_layer
    return (3.0 if training else 1.0) * flops / seconds


def base_config_dict() -> dict[str, Any]:
    """HuBERT-base's architecture (facebook/hubert-base-ls960), for benches without the hub."""
    return {
        "hidden_size": 768,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "intermediate_size": 3072,
        "conv_dim": [512] * 7,
        "conv_kernel": [10, 3, 3, 3, 3, 2, 2],
        "conv_stride": [5, 2, 2, 2, 2, 2, 2],
        "feat_extract_norm": "group",
        "do_stable_layer_norm": False,
        "num_conv_pos_embeddings": 128,
        "num_conv_pos_embedding_groups": 16,
        "mask_time_prob": 0.05,
        "layerdrop": 0.1,
    }


_ = asdict
