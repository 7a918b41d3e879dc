"""Masking really reaches the encoder, through the model's mask embedding; export round-trips."""

import json
from pathlib import Path

import pytest
import torch

from ups.hubert_model import ModelSetup, PretrainModel, export, flops_per_audio_second, load_head, load_hubert
from ups.pretraining import PretrainingHead
from ups.tiny_model import write_tiny_hubert


def _model(tmp_path: Path, **kw) -> tuple[PretrainModel, dict]:
    init = write_tiny_hubert(tmp_path / "init", seed=0, **kw)
    hubert, original = load_hubert(ModelSetup(str(init), 0.8, 10, 2, None, "sdpa"))
    torch.manual_seed(0)
    head = PretrainingHead(hubert.config.hidden_size, 7, final_dim=8)
    return PretrainModel(hubert, head, feature_grad_scale=0.1), original


def _encoder_inputs(model: PretrainModel, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    seen = {}

    def grab(module, args, kwargs):
        seen["x"] = args[0].detach().clone()

    h = model.hubert.encoder.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        model(x, mask_time_indices=mask)
    finally:
        h.remove()
    return seen["x"]


def test_masked_positions_reach_encoder_as_mask_embedding(tmp_path):
    # With apply_spec_augment=False transformers ignores mask_time_indices: nothing is masked.
    model, original = _model(tmp_path, apply_spec_augment=False)
    assert original["apply_spec_augment"] is False
    assert model.hubert.config.apply_spec_augment is True
    assert model.hubert.config.mask_feature_prob == 0.0
    model.train()
    x = torch.randn(2, 16000)
    mask = torch.zeros(2, 49, dtype=torch.bool)
    mask[0, 5:15] = True
    mask[1, 30:40] = True
    enc = _encoder_inputs(model, x, mask)
    emb = model.hubert.masked_spec_embed.detach()
    assert torch.equal(enc[mask], emb.expand(int(mask.sum()), -1))
    # unmasked frames are the projected features, not the embedding, and the model adds no masks
    plain = _encoder_inputs(model, x, torch.zeros_like(mask))
    assert torch.equal(enc[~mask], plain[~mask])
    assert not torch.isclose(plain, emb).all(-1).any()


def test_eval_without_mask_masks_nothing(tmp_path):
    model, _ = _model(tmp_path)
    model.eval()
    x = torch.randn(1, 16000)
    enc = _encoder_inputs(model, x, None)
    feats = model.hubert.feature_projection(model.hubert.feature_extractor(x).transpose(1, 2))
    torch.testing.assert_close(enc, feats)


def test_feature_grad_scale_scales_cnn_gradients(tmp_path):
    model, _ = _model(tmp_path)
    model.train()
    x = torch.randn(1, 8000)
    grads = []
    for scale in (1.0, 0.1):
        model.feature_grad_scale = scale
        model.zero_grad()
        logits, _ = model(x, mask_time_indices=torch.zeros(1, 24, dtype=torch.bool))
        logits.sum().backward()
        grads.append(model.hubert.feature_extractor.conv_layers[0].conv.weight.grad.clone())
    # the same backward pass but for the scale: equal up to float32 summation order
    torch.testing.assert_close(grads[1], grads[0] * 0.1, rtol=1e-3, atol=1e-5)


def test_frozen_feature_encoder(tmp_path):
    init = write_tiny_hubert(tmp_path / "init")
    hubert, _ = load_hubert(ModelSetup(str(init), 0.8, 10, 2, None, "sdpa"))
    model = PretrainModel(hubert, PretrainingHead(32, 3), feature_grad_scale=0.0)
    assert not any(p.requires_grad for p in model.hubert.feature_extractor.parameters())


def test_export_loads_with_from_pretrained_and_gives_same_features(tmp_path):
    from transformers import HubertModel

    model, original = _model(tmp_path)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))  # "trained" weights differ from the init
    out = tmp_path / "export"
    out.mkdir()
    export(model, original, out, {"normalize_audio": False})
    assert (out / "config.json").is_file() and (out / "model.safetensors").is_file()
    loaded = HubertModel.from_pretrained(out)
    assert loaded.config.mask_time_prob == original["mask_time_prob"]
    model.eval()
    loaded.eval()
    x = torch.randn(2, 24000)
    with torch.no_grad():
        want = model.hubert(x).last_hidden_state
        got = loaded(x).last_hidden_state
    assert torch.equal(want, got)
    head = load_head(out)
    for k, v in model.head.state_dict().items():
        assert torch.equal(head.state_dict()[k], v)


@pytest.mark.parametrize("init_mask_prob", [0.05, 0.0])
def test_export_reproduces_the_masked_forward_as_evaluate_loads_it(tmp_path, init_mask_prob):
    # evaluate loads the export with load_hubert (training's SpecAugment overrides) + load_head and
    # passes mask_time_indices: logits must equal the in-training model's. With an init whose
    # mask_time_prob is 0 the export used to drop the trained masked_spec_embed, so masked frames
    # got a fresh random embedding on load.
    model, original = _model(tmp_path, mask_time_prob=init_mask_prob)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    out = tmp_path / "export"
    out.mkdir()
    export(model, original, out, {"normalize_audio": False, "labels_sha256": "ab" * 32})
    loaded, _ = load_hubert(ModelSetup(str(out), 0.8, 10, 2, None, "sdpa"))
    assert torch.equal(loaded.masked_spec_embed, model.hubert.masked_spec_embed)
    head = load_head(out)
    assert json.loads((out / "head.json").read_text())["labels_sha256"] == "ab" * 32
    model.eval()
    loaded.eval()
    head.eval()
    x = torch.randn(2, 24000)
    mask = torch.zeros(2, 74, dtype=torch.bool)
    mask[0, 3:40] = True
    mask[1, 20:60] = True
    with torch.no_grad():
        want, _ = model(x, mask_time_indices=mask)
        got = head(loaded(x, mask_time_indices=mask).last_hidden_state)
    assert torch.equal(want, got)
    # a plain from_pretrained (restored config, no masking) still loads and matches unmasked
    from transformers import HubertModel

    plain = HubertModel.from_pretrained(out).eval()
    assert plain.config.mask_time_prob == init_mask_prob
    with torch.no_grad():
        assert torch.equal(plain(x).last_hidden_state, model.hubert(x).last_hidden_state)


def test_flops_of_hubert_base():
    from transformers import HubertConfig

    from ups.hubert_model import base_config_dict

    f = flops_per_audio_second(HubertConfig(**base_config_dict()))
    assert 40e9 < f < 48e9  # about 44 GFLOP per training audio-second
