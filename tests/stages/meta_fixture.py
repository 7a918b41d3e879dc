"""A small UPS-format VAD/LID fixture (metadata only: the index and select stages read no audio)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

LANGS = {"en": 0.6, "es": 0.2, "fr": 0.1, "yo": 0.03, "nospeech": 0.05, "xx": 0.02}


def write_meta(d: Path, n_files: int = 400, seed: int = 0, shuffle: bool = True) -> tuple[Path, Path]:
    rng = np.random.default_rng(seed)
    vad, lid = [], []
    names = list(LANGS)
    p = np.array(list(LANGS.values()))
    for i in range(n_files):
        tar = f"{i // 40 + 1:06d}"
        key = [f"item{i // 3}/f{i}.part.final", f"item{i // 3}/gravaci\u00f3n {i}",
               f"item{i // 3}/talk%20{i}"][i % 3]
        dur = float(rng.uniform(60, 200))
        segs, t = [], float(rng.uniform(0, 2))
        while t < dur:
            e = min(t + float(rng.uniform(5, 30)), dur)
            segs.append({"start": int(t * 16000), "end": int(e * 16000)})
            t = e + float(rng.uniform(0.2, 2))
        vad.append(json.dumps({key: {"tar_number": tar, "duration": round(dur, 3), "timestamps": segs}}))
        lang = names[int(rng.choice(len(names), p=p / p.sum()))]
        if i % 50 != 7:  # some files without a LID entry
            lid.append(json.dumps({"tar_number": tar, "filepath": f"/data/{key}.mp3", "prediction": lang}))
    if shuffle:
        order = rng.permutation(len(vad))
        vad = [vad[j] for j in order]
    d.mkdir(parents=True, exist_ok=True)
    (d / "vad_results.jsonl").write_text("\n".join(vad) + "\n", encoding="utf-8")
    (d / "lang_id_results.jsonl").write_text("\n".join(lid) + "\n", encoding="utf-8")
    return d / "vad_results.jsonl", d / "lang_id_results.jsonl"
