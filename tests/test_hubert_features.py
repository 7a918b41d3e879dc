"""Layer features for the labels: exactly transformers' hidden_states of that layer, from the model
and waveform the trainer starts from."""

import dataclasses

import numpy as np
import pytest

from ups.config import FeaturesConfig
from ups.frames import n_cnn_frames
from ups.tiny_model import write_tiny_hubert


@pytest.fixture(scope="module")
def tiny_hubert(tmp_path_factory):
    return write_tiny_hubert(tmp_path_factory.mktemp("hubert"), seed=0)


@pytest.mark.parametrize("layer", [1, 2])
def test_layer_features_are_transformers_hidden_states_of_that_layer(tiny_hubert, layer):
    """The truncated forward (layers above `layer` dropped, output read by a hook) gives exactly
    hidden_states[layer] of the whole model, on the trainer's input scaling (int16 / 32768)."""
    import torch
    from transformers import HubertModel

    from ups.hubert_features import FeatureModel, LayerFeatures

    rng = np.random.default_rng(0)
    pcms = [rng.integers(-8000, 8000, n).astype(np.int16) for n in (16000, 16000, 9000, 16000)]
    lf = LayerFeatures(FeatureModel(str(tiny_hubert)), layer, "cpu", batch_chunks=2)
    assert len(lf.model.encoder.layers) == layer
    got = lf(pcms)
    full = HubertModel.from_pretrained(tiny_hubert).eval()
    for pcm, g in zip(pcms, got, strict=True):
        x = torch.from_numpy(pcm.astype(np.float32)[None] / 32768.0)
        with torch.inference_mode():
            want = full(x, output_hidden_states=True).hidden_states[layer][0].numpy()
        assert g.shape == (n_cnn_frames(len(pcm)), 32)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
    # the GPU's bf16 autocast path, run on the CPU: same frames, bf16 rounding only
    bf = LayerFeatures(FeatureModel(str(tiny_hubert)), layer, "cpu", batch_chunks=2, precision="bf16")
    for a, b in zip(got, bf(pcms), strict=True):
        cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
        assert cos.min() > 0.98


def test_hubert_layer_out_of_range_fails_naming_the_parameter(tiny_hubert):
    from ups.hubert_features import FeatureModel, LayerFeatures

    with pytest.raises(ValueError, match="features.layer"):
        LayerFeatures(FeatureModel(str(tiny_hubert)), 3, "cpu")


def test_hubert_model_init_follows_the_trainers_initial_model_and_revision(monkeypatch, tmp_path):
    import transformers

    from ups.config import TrainConfig
    from ups.hubert_features import FeatureModel, feature_model, load_feature_model

    feats = FeaturesConfig()
    assert (feats.kind, feats.layer, feats.hubert_model) == ("hubert", 9, "init")
    train = TrainConfig(init="org/model", init_revision="abc123", seed=5)
    assert feature_model(feats, train) == FeatureModel("org/model", "abc123", 5)
    other = dataclasses.replace(feats, hubert_model="org/other", revision="def456")
    assert feature_model(other, train) == FeatureModel("org/other", "def456", 0)
    calls = []
    monkeypatch.setattr(transformers.HubertModel, "from_pretrained",
                        classmethod(lambda cls, name, **kw: calls.append((str(name), kw)) or
                                    transformers.HubertModel(transformers.HubertConfig(
                                        hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                        intermediate_size=8, conv_dim=(4,) * 7,
                                        num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2))))
    load_feature_model(FeatureModel("org/model", "abc123"))
    load_feature_model(FeatureModel(str(tmp_path), "abc123"))  # a local directory: no revision
    assert calls == [("org/model", {"revision": "abc123"}), (str(tmp_path), {})]


def test_with_normalize_audio_the_feature_model_sees_the_trainers_normalised_waveform():
    from ups.hubert_features import FeatureModel, LayerFeatures

    pcm = (np.random.default_rng(0).standard_normal(16000) * 3000 + 700).astype(np.int16)
    seen = {}
    for normalize in (False, True):
        lf = LayerFeatures(FeatureModel("tiny"), 1, "cpu", normalize_audio=normalize)
        lf.model.register_forward_pre_hook(lambda _m, args, n=normalize: seen.__setitem__(n, args[0].numpy()))
        lf([pcm])
    x = pcm.astype(np.float32) / 32768.0
    np.testing.assert_array_equal(seen[False][0], x)
    got = seen[True][0]
    assert abs(float(got.mean())) < 1e-5 and float(got.std()) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(got, (x - x.mean()) / np.sqrt(x.var() + 1e-7), atol=1e-5)  # train_data's
