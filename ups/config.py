"""One frozen dataclass per stage, loaded from one section of params.yaml.

Bad configuration fails before any work, with a message that names the parameter
(`select.hours must be > 0, got -5`). The loader rejects unknown and missing keys and wrong
types; each dataclass checks its own ranges in `__post_init__`. Secrets never live here: the HF
token and remote credentials are read from the environment at the point of use.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A parameter is missing, unknown, of the wrong type or out of range."""


def require(ok: bool, name: str, message: str, value: Any) -> None:
    """Fail with `<name> <message>, got <value>` unless `ok`."""
    if not ok:
        raise ConfigError(f"{name} {message}, got {value!r}")


# ---------------------------------------------------------------------------------------------
# Loader
# ---------------------------------------------------------------------------------------------

def load_params(path: str | Path = "params.yaml") -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"parameter file {p} not found")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ConfigError(f"{p} must hold a mapping of sections, got {type(data).__name__}")
    return data


def load_section(cls: type[T], section: str, path: str | Path = "params.yaml") -> T:
    """Read `section` of the parameter file into `cls`, checking keys and types."""
    params = load_params(path)
    if section not in params:
        raise ConfigError(f"{path} has no section '{section}'")
    return from_dict(cls, params[section], section)


def from_dict(cls: type[T], data: Any, prefix: str) -> T:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{prefix}.{unknown[0]} is not a known parameter (known: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{prefix}.{name} is missing")
            continue
        kwargs[name] = _coerce(hints[name], data[name], f"{prefix}.{name}")
    return cls(**kwargs)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, name: str) -> Any:
    origin = get_origin(tp)
    args = get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(arg, value, name)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"{name} must be {' or '.join(_type_name(a) for a in args)}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{name} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{name} must be a list, got {value!r}")
        inner = args[0] if args else Any
        items = [_coerce(inner, v, f"{name}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{name} must be a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_coerce(kt, k, name): _coerce(vt, v, f"{name}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name)  # type: ignore[arg-type]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{name}: unsupported parameter type {tp!r}")


# ---------------------------------------------------------------------------------------------
# Stage configs, in pipeline order. Section name in params.yaml = the name in each docstring.
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DatasetConfig:
    """Section `dataset`: where UPS comes from (a local mirror or the hub) and the tar cache."""

    source: Literal["local", "hub"]
    local_root: str  # a directory in the dataset's layout (the bundled sample corpus, a mirror)
    repo_id: str
    revision: str  # pinned commit of the dataset repo: a run is reproducible only if pinned
    tar_cache_dir: str
    cache_budget_gb: float
    download_workers: int
    max_retries: int
    retry_backoff_s: float
    timeout_s: float

    def __post_init__(self) -> None:
        require(self.cache_budget_gb > 0, "dataset.cache_budget_gb", "must be > 0", self.cache_budget_gb)
        require(self.download_workers >= 1, "dataset.download_workers", "must be >= 1",
                self.download_workers)
        require(self.max_retries >= 0, "dataset.max_retries", "must be >= 0", self.max_retries)
        require(self.retry_backoff_s >= 0, "dataset.retry_backoff_s", "must be >= 0",
                self.retry_backoff_s)
        require(self.timeout_s > 0, "dataset.timeout_s", "must be > 0", self.timeout_s)
        require(bool(self.repo_id), "dataset.repo_id", "must not be empty", self.repo_id)
        require(bool(self.revision), "dataset.revision", "must not be empty", self.revision)


@dataclass(frozen=True)
class FetchMetaConfig:
    """Section `fetch_meta`: which metadata files to fetch from the dataset root."""

    vad_file: str = "vad_results.jsonl"
    lid_file: str = "lang_id_results.jsonl"


# <<< issue-3 configs: index_vad, index_lang, select >>>

@dataclass(frozen=True)
class IndexVadConfig:
    """Section `index_vad`."""

    vad_sample_rate: int = 16000  # unit of the VAD timestamps


@dataclass(frozen=True)
class IndexLangConfig:
    """Section `index_lang`."""

    test_fraction: float = 0.2
    seed: int = 42


@dataclass(frozen=True)
class SelectConfig:
    """Section `select`."""

    hours: float = 100.0
    chunk_seconds: float = 10.0
    min_speech_ratio: float = 0.8
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.hours > 0, "select.hours", "must be > 0", self.hours)
        require(self.chunk_seconds > 0, "select.chunk_seconds", "must be > 0", self.chunk_seconds)
        require(0 <= self.min_speech_ratio <= 1, "select.min_speech_ratio", "must be in [0, 1]",
                self.min_speech_ratio)

# <<< end issue-3 configs >>>

# <<< issue-4 configs: features, prepare_audio, kmeans, assign_labels >>>

@dataclass(frozen=True)
class MfccParams:
    """Section `features.mfcc`: the Kaldi MFCC computed by prepare-audio (HuBERT recipe defaults)."""

    num_ceps: int = 13
    num_mel_bins: int = 23
    low_freq_hz: float = 20.0
    high_freq_hz: float = 8000.0
    cepstral_lifter: float = 22.0
    preemph_coeff: float = 0.97
    delta_window: int = 2

    def __post_init__(self) -> None:
        require(self.num_ceps >= 1, "features.mfcc.num_ceps", "must be >= 1", self.num_ceps)
        require(self.num_mel_bins >= self.num_ceps, "features.mfcc.num_mel_bins",
                "must be >= num_ceps", self.num_mel_bins)
        require(0 <= self.low_freq_hz < self.high_freq_hz <= 8000, "features.mfcc.low_freq_hz",
                "must satisfy 0 <= low_freq_hz < high_freq_hz <= 8000", (self.low_freq_hz,
                                                                         self.high_freq_hz))
        require(0 <= self.preemph_coeff < 1, "features.mfcc.preemph_coeff", "must be in [0, 1)",
                self.preemph_coeff)
        require(self.delta_window >= 1, "features.mfcc.delta_window", "must be >= 1", self.delta_window)


@dataclass(frozen=True)
class FeaturesConfig:
    """Section `features`: what k-means clusters. prepare-audio reads only `features.mfcc`."""

    kind: Literal["mfcc", "hubert"] = "mfcc"
    layer: int = 6  # HuBERT transformer layer (kind: hubert), 1-based as in fairseq's recipe
    hubert_model: str = "facebook/hubert-base-ls960"  # hub id or local directory
    batch_chunks: int = 8  # chunks per forward pass (kind: hubert)
    device: str = "auto"  # auto: cuda when available, else cpu
    mfcc: MfccParams = field(default_factory=MfccParams)

    def __post_init__(self) -> None:
        require(self.layer >= 1, "features.layer", "must be >= 1", self.layer)
        require(self.batch_chunks >= 1, "features.batch_chunks", "must be >= 1", self.batch_chunks)
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                "features.device", "must be auto, cpu, cuda or cuda:N", self.device)


@dataclass(frozen=True)
class PrepareAudioConfig:
    """Section `prepare_audio`."""

    workers: int = 2  # processes per rank; does not change the output
    shard_max_chunks: int = 1000  # chunks per shard (10 s int16 chunk = 320 kB)
    resample_quality: Literal["QQ", "LQ", "MQ", "HQ", "VHQ"] = "HQ"

    def __post_init__(self) -> None:
        require(self.workers >= 1, "prepare_audio.workers", "must be >= 1", self.workers)
        require(self.shard_max_chunks >= 1, "prepare_audio.shard_max_chunks", "must be >= 1",
                self.shard_max_chunks)


@dataclass(frozen=True)
class KmeansConfig:
    """Section `kmeans`: MiniBatchKMeans with fairseq's settings as defaults."""

    n_clusters: int = 100
    sample_hours: float = 50.0  # training audio sampled (uniformly over frames) for the fit
    batch_size: int = 10000
    max_no_improvement: int = 100
    n_init: int = 20
    max_iter: int = 100
    tol: float = 0.0
    reassignment_ratio: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        require(self.n_clusters >= 2, "kmeans.n_clusters", "must be >= 2", self.n_clusters)
        require(self.n_clusters <= 32767, "kmeans.n_clusters", "must fit int16 labels (<= 32767)",
                self.n_clusters)
        require(self.sample_hours > 0, "kmeans.sample_hours", "must be > 0", self.sample_hours)
        require(self.batch_size >= 1, "kmeans.batch_size", "must be >= 1", self.batch_size)
        require(self.max_no_improvement >= 1, "kmeans.max_no_improvement", "must be >= 1",
                self.max_no_improvement)
        require(self.n_init >= 1, "kmeans.n_init", "must be >= 1", self.n_init)
        require(self.max_iter >= 1, "kmeans.max_iter", "must be >= 1", self.max_iter)
        require(self.tol >= 0, "kmeans.tol", "must be >= 0", self.tol)
        require(self.reassignment_ratio >= 0, "kmeans.reassignment_ratio", "must be >= 0",
                self.reassignment_ratio)


@dataclass(frozen=True)
class AssignLabelsConfig:
    """Section `assign_labels`."""

    block_frames: int = 65536  # frames per distance block (memory: block * n_clusters * 4 B)

    def __post_init__(self) -> None:
        require(self.block_frames >= 1, "assign_labels.block_frames", "must be >= 1", self.block_frames)

# <<< end issue-4 configs >>>

# <<< issue-5 configs: train >>>
# <<< end issue-5 configs >>>

# <<< issue-6 configs: evaluate >>>
# <<< end issue-6 configs >>>


_ = field  # re-exported for stage configs that need default factories
