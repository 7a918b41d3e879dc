"""The HuBERT a run starts from and the one it exports: export round-trips, FLOPs."""

import json

import pytest
import torch

from tests.train_fixtures import tiny_pretrain_model
from ups.hubert_model import ModelSetup, export, flops_per_audio_second, load_head, load_hubert


def test_export_loads_with_from_pretrained_and_gives_same_features(tmp_path):
    from transformers import HubertModel

    model, original = tiny_pretrain_model(tmp_path)
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
    model, original = tiny_pretrain_model(tmp_path, mask_time_prob=init_mask_prob)
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
