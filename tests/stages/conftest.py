"""A tiny UPS-like corpus for the audio stages: two tars of MP3s, a chunk selection, a params file."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import yaml
from hub_server import REPO_ID, SHA, TOKEN, HubServer, HubState

from tests.conftest import make_tar
from ups.config import (
    AssignLabelsConfig,
    DatasetConfig,
    FeaturesConfig,
    KmeansConfig,
    PrepareAudioConfig,
    load_section,
)
from ups.frames import n_cnn_frames
from ups.shards import iter_shard
from ups.stages import assign_labels, fit_kmeans, prepare_audio

REPO = Path(__file__).resolve().parents[2]


def tone(duration_s: float, sr: int, channels: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(int(duration_s * sr)) / sr
    f0 = 100 + 50 * rng.random() + 30 * np.sin(2 * np.pi * 0.7 * t)
    x = 0.25 * np.sin(2 * np.pi * np.cumsum(f0) / sr) * (1.2 + np.sin(2 * np.pi * 3 * t))
    x = x + 0.02 * rng.standard_normal(len(t))
    out = np.stack([x * (1 - 0.3 * c) for c in range(channels)], axis=1)
    return out.astype(np.float32)


def mp3(duration_s: float, sr: int, channels: int, seed: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, tone(duration_s, sr, channels, seed), sr, format="MP3")
    return buf.getvalue()


# (tar, key, start_s, end_s, language, split); keys as normalize_key gives them
CHUNKS = [
    (1, "itemA/one", 0.0, 10.0, "en", "train"),
    (1, "itemA/one", 10.0, 20.0, "en", "valid"),
    (1, "itemA/one", 20.0, 30.0, "en", "train"),   # the file lasts 25 s: chunk_past_end
    (1, "itemB/two.v1", 1.0, 11.0, "sw", "train"),
    (1, "itemC/bad", 0.0, 10.0, "yo", "train"),    # not an MP3: corrupt_mp3
    (1, "itemZ/nope", 0.0, 10.0, "yo", "train"),   # not in the tar: missing_member
    (2, "itemD/three", 0.0, 10.0, "de", "train"),
    (2, "itemD/three", 10.0, 20.0, "de", "train"),
    (2, "itemE/x", 0.5, 6.5, "sw", "valid"),
    (3, "itemF/f", 0.25, 5.25, "en", "train"),
]


def build_corpus(root: Path) -> Path:
    """Writes <root>/sample (UPS layout) and <root>/chunks.parquet; returns root."""
    ds = root / "sample"
    make_tar(ds / "audio/000001.tar", {
        "itemA/one.mp3": mp3(25.0, 44100, 2, 1),
        "itemB/two.v1.mp3": mp3(12.0, 16000, 1, 2),
        "itemC/bad.mp3": b"ID3\x03\x00\x00\x00\x00\x00\x00" + bytes(range(256)) * 40,
        "itemQ/unwanted.mp3": mp3(3.0, 16000, 1, 3),
    })
    make_tar(ds / "audio/000002.tar", {
        "itemD/three.mp3": mp3(22.0, 48000, 1, 4),
        "itemE/x.mp3": mp3(8.0, 22050, 2, 5),
    })
    make_tar(ds / "audio/000003.tar", {"itemF/f.mp3": mp3(6.0, 44100, 1, 6)})
    cols = list(zip(*CHUNKS, strict=True))
    table = pa.table({
        "chunk_id": pa.array(range(len(CHUNKS)), pa.int64()),
        "tar": pa.array(cols[0], pa.int32()),
        "key": pa.array(cols[1], pa.string()),
        "start_s": pa.array(cols[2], pa.float64()),
        "end_s": pa.array(cols[3], pa.float64()),
        "language": pa.array(cols[4], pa.string()),
        "split": pa.array(cols[5], pa.string()),
        "speech_ratio": pa.array([0.9] * len(CHUNKS), pa.float64()),
    })
    pq.write_table(table, root / "chunks.parquet")
    return root


def write_params(path: Path, local_root: Path, **overrides: dict) -> Path:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dataset"]["source"] = "local"
    params["dataset"]["local_root"] = str(local_root)
    params["prepare_audio"]["workers"] = 1
    params["prepare_audio"]["shard_max_chunks"] = 2
    params["kmeans"].update({"n_clusters": 8, "sample_hours": 0.01, "n_init": 2})
    params["features"]["kind"] = "mfcc"  # the repo default (hubert of train.init) needs the hub
    for section, values in overrides.items():
        params[section].update(values)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    return build_corpus(tmp_path_factory.mktemp("corpus"))


def ups(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    import os

    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "ups", *args], cwd=cwd or REPO, env=full_env,
                          capture_output=True, text=True, timeout=300)


def tree_bytes(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def slurm_array_task(monkeypatch, task: int | None, count: int = 2, lo: int = 3) -> None:
    """Set (or, with task None, clear) the variables Slurm gives an array task."""
    for name in ("ID", "COUNT", "MIN", "MAX"):
        monkeypatch.delenv(f"SLURM_ARRAY_TASK_{name}", raising=False)
    if task is not None:
        for name, value in (("ID", lo + task), ("COUNT", count), ("MIN", lo), ("MAX", lo + count - 1)):
            monkeypatch.setenv(f"SLURM_ARRAY_TASK_{name}", str(value))


# --- fit-kmeans and assign-labels: the corpus prepared once, labelled per test ---------------


@pytest.fixture(scope="session")
def prepared(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("km")
    params = write_params(out / "params.yaml", corpus / "sample")
    prepare_audio.run(load_section(PrepareAudioConfig, "prepare_audio", params),
                      load_section(FeaturesConfig, "features", params).mfcc,
                      load_section(DatasetConfig, "dataset", params),
                      chunks=corpus / "chunks.parquet", audio_dir=out / "audio",
                      features_dir=out / "features", report=out / "audio" / "report.json")
    return out, params


def fit_and_label(out, params, corpus, tag, **features_overrides):
    feats = load_section(FeaturesConfig, "features", params)
    if features_overrides:
        import dataclasses
        feats = dataclasses.replace(feats, **features_overrides)
    km = load_section(KmeansConfig, "kmeans", params)
    fit_kmeans.run(km, feats, features_dir=out / "features", audio_dir=out / "audio",
                   out_dir=out / tag / "kmeans")
    report = assign_labels.run(load_section(AssignLabelsConfig, "assign_labels", params), feats,
                               model=out / tag / "kmeans" / "model.npz", features_dir=out / "features",
                               audio_dir=out / "audio", chunks=corpus / "chunks.parquet",
                               out_dir=out / tag / "labels")
    return report


def n_samples_by_chunk(out):
    return {meta["chunk_id"]: meta["n_samples"]
            for shard in (out / "audio").glob("*/*.tar") for _, _, meta in iter_shard(shard)}


def check_labels(out, tag, k):
    lengths = n_samples_by_chunk(out)
    seen = []
    for split in ("train", "valid"):
        d = out / tag / "labels" / split
        ids, offsets, labels = (np.load(d / f"{n}.npy") for n in ("chunk_ids", "offsets", "labels"))
        assert ids.dtype == np.int64 and offsets.dtype == np.int64 and labels.dtype == np.int16
        assert list(ids) == sorted(ids) and offsets[-1] == len(labels)
        for i, cid in enumerate(ids):
            assert offsets[i + 1] - offsets[i] == n_cnn_frames(lengths[int(cid)])
        assert labels.min() >= 0 and labels.max() < k
        seen.extend(ids.tolist())
    assert sorted(seen) == sorted(lengths)  # every chunk, train and valid, labelled once


@pytest.fixture(scope="session")
def tiny_hubert(tmp_path_factory):
    """A tiny random HuBERT (2 layers, 32 wide) as a feature model."""
    from ups.tiny_model import write_tiny_hubert

    return write_tiny_hubert(tmp_path_factory.mktemp("hubert"), seed=0)


# --- the tar members through the local hub stand-in (index-members, member fetches) -----------

NO_META = "no-fetch-meta.json"  # the revision is a pinned sha: no fetch-meta record is needed


def hub_files(corpus) -> dict[str, bytes]:
    return {p.relative_to(corpus / "sample").as_posix(): p.read_bytes()
            for p in sorted((corpus / "sample").rglob("*.tar"))}


def member_configs(corpus, out, fetch, cache=None, workers=2):
    out.mkdir(parents=True, exist_ok=True)
    params = write_params(out / "params.yaml", corpus / "sample")
    ds = load_section(DatasetConfig, "dataset", params)
    import dataclasses
    ds = dataclasses.replace(ds, source="hub", repo_id=REPO_ID, revision=SHA, fetch=fetch,
                             tar_cache_dir=str(cache or out / "cache"), retry_backoff_s=0.0, max_retries=3,
                             download_workers=workers)
    return (load_section(PrepareAudioConfig, "prepare_audio", params),
            load_section(FeaturesConfig, "features", params).mfcc, ds)


def prepare_from_hub(corpus, out, fetch, members_dir=None, cache=None, workers=2):
    cfg, mfcc, ds = member_configs(corpus, out, fetch, cache, workers)
    return prepare_audio.run(cfg, mfcc, ds, chunks=corpus / "chunks.parquet", audio_dir=out / "audio",
                             features_dir=out / "features", report=out / "audio" / "report.json",
                             fetch_meta=out / NO_META, members_dir=members_dir)


@pytest.fixture
def hub(corpus, monkeypatch):
    state = HubState(REPO_ID, hub_files(corpus))
    with HubServer(state) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        yield state


def audio_trees(out) -> dict[str, bytes]:
    return tree_bytes(out / "audio") | {"features/" + k: v for k, v in tree_bytes(out / "features").items()}


# --- select: a small indexed metadata fixture ----------------------------------------------


@pytest.fixture(scope="session")
def index_dir(tmp_path_factory):
    """The 400-file VAD/LID fixture (meta_fixture.py) through index-vad and index-lang."""
    from tests.stages.meta_fixture import write_meta
    from ups.config import IndexLangConfig, IndexVadConfig
    from ups.stages import index_lang, index_vad

    d = tmp_path_factory.mktemp("meta")
    vad, lid = write_meta(d, n_files=400)
    index_vad.run(IndexVadConfig(), vad_jsonl=vad, out_dir=d / "index" / "vad")
    index_lang.run(IndexLangConfig(), lid_jsonl=lid, out_dir=d / "index" / "lang")
    return d / "index"
