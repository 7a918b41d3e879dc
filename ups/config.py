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

from ups.languages import WHISPER_CODES

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
    # members: prepare-audio fetches only the tar members holding selected chunks (ranged reads,
    # located by the member index); tars: whole tars (for mirrors that ignore Range requests)
    fetch: Literal["members", "tars"] = "members"
    # the hub's budgets per account and 5 minutes (free: 1,000 API calls, 5,000 /resolve/
    # requests): the kit keeps to these, shared by the processes of a stage
    api_calls_per_5min: int = 500
    resolves_per_5min: int = 2500
    header_walks: int = 256  # tars whose headers index-members walks at once (a connection each)

    def __post_init__(self) -> None:
        require(self.cache_budget_gb > 0, "dataset.cache_budget_gb", "must be > 0", self.cache_budget_gb)
        require(self.api_calls_per_5min >= 1, "dataset.api_calls_per_5min", "must be >= 1",
                self.api_calls_per_5min)
        require(self.resolves_per_5min >= 1, "dataset.resolves_per_5min", "must be >= 1",
                self.resolves_per_5min)
        require(1 <= self.header_walks <= 4096, "dataset.header_walks", "must be in [1, 4096]",
                self.header_walks)
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

    def __post_init__(self) -> None:
        for name in ("vad_file", "lid_file"):
            value = getattr(self, name)
            require(bool(value) and "/" not in value and "\\" not in value
                    and value not in (".", "..", "fetch_meta.json"),
                    f"fetch_meta.{name}", "must be a file name at the dataset root", value)


# --- metadata indices and chunk selection (index_vad, index_lang, select) ---------------------

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

    hours: float = 100.0  # target hours (train + valid + eval)
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
    eval_fraction: float = 0.05  # share held out by file for evaluate's probe; no model trains on it
    languages: list[str] | Literal["all"] = "all"  # Whisper codes to select from, or all
    exclude_languages: list[str] = field(default_factory=list)  # Whisper codes never selected
    # estimate of tar bytes per second of audio (~208 kbit/s, UPS's mean: docs/selection.md):
    # the download report, and for dataset.fetch members the files that fit max_download_gb
    mp3_bytes_per_second: float = 26000.0
    # dataset.fetch members: the download budget that replaces max_tars (0 = no limit)
    max_download_gb: float = 100.0
    # dataset.fetch members: tars are opened, the one covering most of the quotas still open
    # first, until the quotas no opened tar covers are at most this share of them (0: all)
    balance_tolerance: float = 0.0

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
        require(0 <= self.eval_fraction < 1, "select.eval_fraction", "must be in [0, 1)",
                self.eval_fraction)
        require(self.valid_fraction + self.eval_fraction < 1, "select.eval_fraction",
                "plus select.valid_fraction must be < 1", (self.eval_fraction, self.valid_fraction))
        require(self.languages == "all" or (isinstance(self.languages, list) and len(self.languages) > 0),
                "select.languages", "must be all or a non-empty list of Whisper codes", self.languages)
        for name in ("languages", "exclude_languages"):
            codes = getattr(self, name)
            for i, code in enumerate([] if codes == "all" else codes):
                require(code in WHISPER_CODES, f"select.{name}[{i}]",
                        "must be a Whisper language code (ups/languages.py)", code)
        both = sorted(set(self.exclude_languages) & set([] if self.languages == "all" else self.languages))
        require(not both, "select.exclude_languages", "must not repeat a code of select.languages", both)
        require(self.mp3_bytes_per_second > 0, "select.mp3_bytes_per_second", "must be > 0",
                self.mp3_bytes_per_second)
        require(self.max_download_gb >= 0, "select.max_download_gb", "must be >= 0",
                self.max_download_gb)
        require(0 <= self.balance_tolerance < 1, "select.balance_tolerance", "must be in [0, 1)",
                self.balance_tolerance)


# --- audio shards, k-means and labels (features, prepare_audio, kmeans, assign_labels) --------

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

    kind: Literal["mfcc", "hubert"] = "hubert"
    layer: int = 9  # HuBERT transformer layer (kind: hubert), 1-based as in fairseq's recipe
    # "init": the trainer's initial model (train.init at train.init_revision); else a hub id or dir
    hubert_model: str = "init"
    revision: str = "main"  # hub revision of hubert_model when it is not "init"
    batch_chunks: int = 16  # chunks per forward pass (kind: hubert)
    device: str = "auto"  # auto: cuda when available, else cpu
    precision: Literal["auto", "bf16", "fp32"] = "auto"  # auto: bf16 on a GPU that has it, else fp32
    mfcc: MfccParams = field(default_factory=MfccParams)

    def __post_init__(self) -> None:
        require(self.layer >= 1, "features.layer", "must be >= 1", self.layer)
        require(bool(self.hubert_model), "features.hubert_model", "must not be empty", self.hubert_model)
        require(bool(self.revision), "features.revision", "must not be empty", self.revision)
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

    n_clusters: int = 500
    sample_hours: float = 10.0  # training audio sampled for the fit (fairseq: 10 % of the data)
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
    # features.precision resolves per machine (auto: bf16 on a GPU, fp32 on a CPU); centroids fitted
    # at one precision are refused at another unless this is true
    allow_precision_mismatch: bool = False

    def __post_init__(self) -> None:
        require(self.block_frames >= 1, "assign_labels.block_frames", "must be >= 1", self.block_frames)


# --- training (train) -------------------------------------------------------------------------

@dataclass(frozen=True)
class TrainConfig:
    """Section `train`: HuBERT continued pre-training (ups/stages/train.py). See params.yaml."""

    init: str = "facebook/hubert-base-ls960"  # hub id or local directory of a HubertModel
    init_revision: str = "main"  # hub revision (commit sha to pin) of init; ignored for a directory
    gpus: int = 1  # processes (torchrun --nproc_per_node) on this node
    nodes: int = 1  # machines (torchrun --nnodes), each running `gpus` processes
    device: Literal["auto", "cpu", "cuda"] = "auto"
    seed: int = 0
    epochs: int = 4
    max_steps: int | None = None  # optimizer steps; null: epochs decide
    learning_rate: float = 5e-5
    warmup_steps: int | float = 0.08  # steps, or a fraction (0, 1) of the total steps
    lr_schedule: Literal["linear", "cosine", "constant"] = "linear"
    weight_decay: float = 0.01
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.98])
    adam_eps: float = 1e-6
    grad_clip: float = 10.0  # max global grad norm; 0 disables clipping
    batch_size: int | Literal["auto"] = "auto"  # per process, chunks
    grad_accum: int | Literal["auto"] = "auto"
    max_sample_seconds: float = 10.0
    min_sample_seconds: float = 1.0
    crop: Literal["shortest", "pad"] = "shortest"
    normalize_audio: bool = False
    mask_prob: float = 0.8
    mask_length: int = 10
    min_masks: int = 2
    unmasked_weight: float = 0.0
    feature_penalty: float = 0.0
    feature_grad_scale: float = 0.1  # 0 freezes the CNN feature encoder
    layerdrop: float | None = None  # null: keep the initial model's
    head: Literal["cosine", "linear"] = "cosine"
    final_dim: int = 256
    logit_temperature: float = 0.1
    precision: Literal["auto", "bf16", "fp16", "fp32"] = "auto"
    compile: bool = False
    attn_implementation: Literal["sdpa", "eager"] = "sdpa"
    num_workers: int = 4
    log_every_steps: int = 10
    valid_every_steps: int = 500
    valid_max_batches: int | None = None
    save_every_steps: int = 500
    resume: bool = True
    max_bad_steps: int = 20  # consecutive non-finite steps before every rank stops

    def __post_init__(self) -> None:
        require(self.gpus >= 1, "train.gpus", "must be >= 1", self.gpus)
        require(self.nodes >= 1, "train.nodes", "must be >= 1", self.nodes)
        require(bool(self.init), "train.init", "must not be empty", self.init)
        require(bool(self.init_revision), "train.init_revision", "must not be empty", self.init_revision)
        require(self.epochs >= 1, "train.epochs", "must be >= 1", self.epochs)
        require(self.max_steps is None or self.max_steps >= 1, "train.max_steps", "must be >= 1 or null",
                self.max_steps)
        require(self.learning_rate > 0, "train.learning_rate", "must be > 0", self.learning_rate)
        w = self.warmup_steps
        require(w >= 0 if isinstance(w, int) else 0 < w < 1, "train.warmup_steps",
                "must be a step count >= 0 or a fraction of the total steps in (0, 1)", w)
        require(self.weight_decay >= 0, "train.weight_decay", "must be >= 0", self.weight_decay)
        require(len(self.adam_betas) == 2 and all(0 <= b < 1 for b in self.adam_betas),
                "train.adam_betas", "must be two numbers in [0, 1)", self.adam_betas)
        require(self.adam_eps > 0, "train.adam_eps", "must be > 0", self.adam_eps)
        require(self.grad_clip >= 0, "train.grad_clip", "must be >= 0", self.grad_clip)
        for name in ("batch_size", "grad_accum"):
            v = getattr(self, name)
            require(v == "auto" or v >= 1, f"train.{name}", "must be >= 1 or auto", v)
        require(self.max_sample_seconds >= 0.1, "train.max_sample_seconds", "must be >= 0.1",
                self.max_sample_seconds)
        require(0.025 <= self.min_sample_seconds <= self.max_sample_seconds, "train.min_sample_seconds",
                "must be in [0.025, max_sample_seconds]", self.min_sample_seconds)
        require(0 < self.mask_prob <= 1, "train.mask_prob", "must be in (0, 1]", self.mask_prob)
        require(self.mask_length >= 1, "train.mask_length", "must be >= 1", self.mask_length)
        require(self.min_masks >= 0, "train.min_masks", "must be >= 0", self.min_masks)
        require(self.unmasked_weight >= 0, "train.unmasked_weight", "must be >= 0", self.unmasked_weight)
        require(self.feature_penalty >= 0, "train.feature_penalty", "must be >= 0", self.feature_penalty)
        require(0 <= self.feature_grad_scale <= 1, "train.feature_grad_scale", "must be in [0, 1]",
                self.feature_grad_scale)
        require(self.layerdrop is None or 0 <= self.layerdrop < 1, "train.layerdrop",
                "must be in [0, 1) or null", self.layerdrop)
        require(self.final_dim >= 1, "train.final_dim", "must be >= 1", self.final_dim)
        require(self.logit_temperature > 0, "train.logit_temperature", "must be > 0", self.logit_temperature)
        require(self.num_workers >= 0, "train.num_workers", "must be >= 0", self.num_workers)
        for name in ("log_every_steps", "valid_every_steps", "save_every_steps", "max_bad_steps"):
            require(getattr(self, name) >= 1, f"train.{name}", "must be >= 1", getattr(self, name))
        require(self.valid_max_batches is None or self.valid_max_batches >= 1, "train.valid_max_batches",
                "must be >= 1 or null", self.valid_max_batches)


# --- evaluation (evaluate) --------------------------------------------------------------------

@dataclass(frozen=True)
class EvaluateConfig:
    """Section `evaluate`: initial vs continued model (ups/stages/evaluate.py). See params.yaml."""

    layers: list[int] | Literal["all"] = "all"  # probe layers: 0 = transformer input, L = last
    probe_c: float = 1.0  # inverse L2 strength of the logistic regression
    probe_max_iter: int = 5000
    max_probe_chunks: int = 4000  # eval chunks for the LID probe, drawn by seed; 0 = all
    probe_test_fraction: float = 0.5  # share of each language's eval files the probe scores on
    probe_training_files: bool = True  # also show the probe on training files, labelled as such
    max_masked_chunks: int = 2000  # validation chunks for masked prediction; 0 = all
    head_fit_chunks: int = 256  # train chunks whose masked frames fit the frozen-encoder heads
    head_fit_steps: int = 300  # Adam steps of those heads
    head_fit_lr: float = 1.0e-3
    mask_seed: int = 0  # the masks of chunk c come from default_rng([mask_seed, c])
    seed: int = 0  # chunk sampling and head initialisation
    batch_size: int = 8  # chunks of one length per forward pass
    device: str = "auto"  # auto | cpu | cuda | cuda:N

    def __post_init__(self) -> None:
        require(self.layers == "all" or (isinstance(self.layers, list) and len(self.layers) > 0
                                         and all(isinstance(x, int) and x >= 0 for x in self.layers)),
                "evaluate.layers", "must be all or a non-empty list of layer numbers >= 0", self.layers)
        require(self.probe_c > 0, "evaluate.probe_c", "must be > 0", self.probe_c)
        require(self.probe_max_iter >= 1, "evaluate.probe_max_iter", "must be >= 1", self.probe_max_iter)
        require(0 < self.probe_test_fraction < 1, "evaluate.probe_test_fraction", "must be in (0, 1)",
                self.probe_test_fraction)
        for name in ("max_probe_chunks", "max_masked_chunks", "head_fit_chunks", "head_fit_steps"):
            require(getattr(self, name) >= 0, f"evaluate.{name}", "must be >= 0", getattr(self, name))
        require(self.head_fit_lr > 0, "evaluate.head_fit_lr", "must be > 0", self.head_fit_lr)
        require(self.batch_size >= 1, "evaluate.batch_size", "must be >= 1", self.batch_size)
        require(self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
                "evaluate.device", "must be auto, cpu, cuda or cuda:N", self.device)


_ = field  # re-exported for stage configs that need default factories
