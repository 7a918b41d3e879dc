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
    """Section `index_vad`: parse vad_results.jsonl into files.parquet and tars.parquet."""

    vad_sample_rate: int = 16000  # unit of the VAD timestamps (samples per second)
    block_mb: int = 16  # read and parse the JSONL in blocks of this many MiB (memory vs. speed)

    def __post_init__(self) -> None:
        require(self.vad_sample_rate > 0, "index_vad.vad_sample_rate", "must be > 0",
                self.vad_sample_rate)
        require(1 <= self.block_mb <= 1024, "index_vad.block_mb", "must be in [1, 1024]",
                self.block_mb)


@dataclass(frozen=True)
class IndexLangConfig:
    """Section `index_lang`: lang_id_results.jsonl -> lid.parquet with a stratified LID split."""

    test_fraction: float = 0.2  # share of each label's files in the LID test split
    seed: int = 42  # seed of the split (the challenge baseline uses 42)

    def __post_init__(self) -> None:
        require(0 <= self.test_fraction < 1, "index_lang.test_fraction", "must be in [0, 1)",
                self.test_fraction)


@dataclass(frozen=True)
class SelectConfig:
    """Section `select`: choose about `hours` of fixed-length chunks (policy: ups/selection.py)."""

    hours: float = 100.0  # target hours (train + valid)
    chunk_seconds: float = 10.0
    min_speech_ratio: float = 0.8  # VAD speech share a chunk needs
    seed: int = 0
    alpha: float = 0.5  # temperature: p_l ~ n_l^alpha (1 = as available, 0 = uniform)
    hours_table: Literal["shipped", "computed"] = "shipped"  # n_l from the package or the indices
    unlisted_language: Literal["indices", "exclude"] = "indices"  # n_l of a language not in the table
    max_tars: int = 200  # at most this many tars to download (0 = no limit)
    max_file_fraction: float = 0.01  # one file gives at most this share of `hours` (>= 1 chunk)
    max_tar_fraction: float = 0.05  # one tar gives at most this share of `hours` (>= 1 chunk)
    valid_fraction: float = 0.05  # share of each language's hours held out by file
    mp3_bytes_per_second: float = 16000.0  # estimate of tar bytes per second of audio (128 kbit/s)

    def __post_init__(self) -> None:
        require(self.hours > 0, "select.hours", "must be > 0", self.hours)
        require(self.chunk_seconds > 0, "select.chunk_seconds", "must be > 0", self.chunk_seconds)
        require(0 <= self.min_speech_ratio <= 1, "select.min_speech_ratio", "must be in [0, 1]",
                self.min_speech_ratio)
        require(0 <= self.alpha <= 1, "select.alpha", "must be in [0, 1]", self.alpha)
        require(self.max_tars >= 0, "select.max_tars", "must be >= 0", self.max_tars)
        require(0 < self.max_file_fraction <= 1, "select.max_file_fraction", "must be in (0, 1]",
                self.max_file_fraction)
        require(0 < self.max_tar_fraction <= 1, "select.max_tar_fraction", "must be in (0, 1]",
                self.max_tar_fraction)
        require(0 <= self.valid_fraction < 1, "select.valid_fraction", "must be in [0, 1)",
                self.valid_fraction)
        require(self.mp3_bytes_per_second > 0, "select.mp3_bytes_per_second", "must be > 0",
                self.mp3_bytes_per_second)

# <<< end issue-3 configs >>>

# <<< issue-4 configs: features, prepare_audio, kmeans, assign_labels >>>
# <<< end issue-4 configs >>>

# <<< issue-5 configs: train >>>
# <<< end issue-5 configs >>>

# <<< issue-6 configs: evaluate >>>
# <<< end issue-6 configs >>>


_ = field  # re-exported for stage configs that need default factories
