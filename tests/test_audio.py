"""Decoding: one MP3 to mono 16 kHz, a prefix equal to the full decode, damage named; PCM rounding."""

from __future__ import annotations

import io

import numpy as np
import pytest
import soundfile as sf

from ups.audio import CorruptAudio, decode_mono_16k, from_int16, to_int16


def _mp3(seconds: float, rate: int, channels: int) -> bytes:
    t = np.arange(int(seconds * rate)) / rate
    x = 0.3 * np.sin(2 * np.pi * 440 * t)
    x = np.stack([x * (c + 1) / channels for c in range(channels)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, x, rate, format="MP3")
    return buf.getvalue()


@pytest.mark.parametrize("rate, channels", [(44100, 2), (16000, 1), (48000, 1)])
def test_any_rate_and_channel_count_comes_out_mono_16k(rate, channels):
    y = decode_mono_16k(_mp3(3.0, rate, channels))
    assert y.dtype == np.float32 and y.ndim == 1
    assert abs(len(y) - 3 * 16000) < 0.1 * 16000  # MP3 frames pad the ends a little
    assert 0.1 < np.abs(y).max() < 1.0


def test_a_prefix_decode_equals_the_full_decode_where_it_is_used():
    data = _mp3(6.0, 44100, 2)
    full = decode_mono_16k(data)
    need = 2 * 16000
    part = decode_mono_16k(data, need_samples=need)
    assert need <= len(part) < len(full)
    np.testing.assert_allclose(part[:need], full[:need], atol=1e-4)


@pytest.mark.parametrize("data", [b"", b"not an mp3 at all" * 100, b"ID3\x04\x00\x00" + bytes(300)])
def test_damaged_bytes_raise_corrupt_audio_with_a_stable_message(data):
    with pytest.raises(CorruptAudio) as first:
        decode_mono_16k(data)
    with pytest.raises(CorruptAudio) as again:
        decode_mono_16k(data)
    assert str(first.value) == str(again.value) and "0x" not in str(first.value)


def test_int16_rounds_to_nearest_and_clips():
    x = np.array([0.0, 1.0, -1.0, 2.0, -2.0, 0.5 / 32767, 1.5 / 32767], dtype=np.float32)
    assert to_int16(x).tolist() == [0, 32767, -32767, 32767, -32768, 0, 2]
    pcm = np.arange(-32768, 32768, dtype=np.int64).astype(np.int16)  # every value comes back
    assert np.array_equal(to_int16(from_int16(pcm)), pcm)
