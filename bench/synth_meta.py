"""Full-size synthetic UPS metadata in the real schema (vad_results.jsonl, lang_id_results.jsonl).

The real files are several GB and gated, so the benchmarks generate look-alikes: one JSON object
per line, keys `<item>/<file>` (some with dots, spaces, non-ASCII as JSON escapes, URL-encoding),
durations of 1-10 min, Silero-like speech segments at 16 kHz covering about 68 % of the audio,
a Zipf-like language mix with a share of `nospeech`, and lines shuffled so that they are NOT
grouped by tar. At the default 2.5 M files the VAD file is about 3 GB.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

LANGS = ["en", "es", "fr", "de", "pt", "ru", "it", "ar", "hi", "ja", "zh", "nl", "pl", "tr", "ko",
         "sv", "id", "vi", "uk", "fa", "el", "cs", "ro", "hu", "fi", "da", "he", "th", "ta", "sw",
         "yo", "haw", "jw", "yue", "mi", "ln", "sn", "so", "am", "bo"]
FILES_PER_TAR = 250


def _segments(rng: np.random.Generator, dur_s: float) -> list[tuple[int, int]]:
    """Alternating speech/silence runs: speech ~7 s, pauses ~3 s (about 68 % speech)."""
    n_max = int(dur_s / 4) + 2
    speech = rng.exponential(7.0, n_max) + 0.3
    pause = rng.exponential(3.0, n_max) + 0.1
    t = float(rng.uniform(0, 3))
    out = []
    for sp, pa in zip(speech, pause, strict=True):
        s, e = t, min(t + sp, dur_s)
        if s >= dur_s:
            break
        out.append((int(s * 16000), int(e * 16000)))
        t = e + pa
    return out


def _key(rng: np.random.Generator, i: int) -> str:
    kind = rng.random()
    item = f"item_{i // 7:07d}"
    if kind < 0.90:
        return f"{item}/recording_{i:08d}_part.final"
    if kind < 0.95:
        return f"{item}/gravaci\u00f3n n\u00famero {i}.v2"
    if kind < 0.98:
        return f"{item}/talk%20{i}%20live"
    return f"{item}/\u65e5\u672c\u8a9e_{i}"


def write(out_dir: Path, n_files: int, seed: int = 0) -> dict[str, float]:
    """Write vad_results.jsonl and lang_id_results.jsonl for `n_files` files; return their sizes."""
    import orjson

    rng = np.random.default_rng(seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    order = rng.permutation(n_files)  # lines not grouped by tar
    zipf = 1.0 / np.arange(1, len(LANGS) + 1) ** 1.6
    zipf /= zipf.sum()
    vad_path, lid_path = out_dir / "vad_results.jsonl", out_dir / "lang_id_results.jsonl"
    with open(vad_path, "wb") as vad, open(lid_path, "wb") as lid:
        buf_v: list[bytes] = []
        buf_l: list[bytes] = []
        for i in order:
            i = int(i)
            tar = f"{i // FILES_PER_TAR + 1:06d}"
            key = _key(rng, i)
            dur = round(float(rng.uniform(60, 600)), 3)
            segs = _segments(rng, dur)
            ts = ", ".join(f'{{"start": {s}, "end": {e}}}' for s, e in segs)
            k = json.dumps(key)  # ASCII with \uXXXX escapes, as Python writers emit
            buf_v.append(f'{{{k}: {{"tar_number": "{tar}", "duration": {dur}, '
                         f'"timestamps": [{ts}]}}}}\n'.encode())
            lang = "nospeech" if rng.random() < 0.1 else LANGS[int(rng.choice(len(LANGS), p=zipf))]
            buf_l.append(orjson.dumps({"tar_number": tar, "filepath": f"/data/{key}.mp3",
                                       "prediction": lang}) + b"\n")
            if len(buf_v) >= 10000:
                vad.write(b"".join(buf_v))
                lid.write(b"".join(buf_l))
                buf_v.clear()
                buf_l.clear()
        vad.write(b"".join(buf_v))
        lid.write(b"".join(buf_l))
    return {"n_files": n_files, "vad_bytes": vad_path.stat().st_size,
            "lid_bytes": lid_path.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--files", type=int, default=2_500_000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default="bench/data")
    args = ap.parse_args()
    print(write(Path(args.out_dir), args.files, args.seed))


if __name__ == "__main__":
    main()
