"""The tiny random HuBERT: the same bytes for a seed, HuBERT's frame rate, loadable by transformers."""

from __future__ import annotations

from ups.frames import n_cnn_frames
from ups.tiny_model import main, write_tiny_hubert


def test_the_same_seed_writes_the_same_bytes_and_another_seed_other_weights(tmp_path, capsys):
    a = write_tiny_hubert(tmp_path / "a", seed=3)
    assert main([str(tmp_path / "b"), "--seed", "3"]) == 0  # python -m ups.tiny_model DIR --seed 3
    assert capsys.readouterr().out.strip() == str(tmp_path / "b")
    c = write_tiny_hubert(tmp_path / "c", seed=4)
    weights = "model.safetensors"
    assert (a / weights).read_bytes() == (tmp_path / "b" / weights).read_bytes()
    assert (a / weights).read_bytes() != (c / weights).read_bytes()


def test_it_loads_and_keeps_hubert_s_320_sample_hop(tmp_path):
    import torch
    from transformers import HubertModel

    model = HubertModel.from_pretrained(write_tiny_hubert(tmp_path / "m", num_hidden_layers=3)).eval()
    assert model.config.num_hidden_layers == 3 and model.config.hidden_size == 32
    for n in (400, 16000, 16319, 32000):
        with torch.no_grad():
            out = model(torch.zeros(1, n)).last_hidden_state
        assert out.shape == (1, n_cnn_frames(n), 32)
