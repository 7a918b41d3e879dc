"""The `ups` command: one sub-command per DVC stage, plus a few helpers (demo, du).

Every stage sub-command loads its typed config from params.yaml (`--params`), takes its input
and output paths from the command line that dvc.yaml spells out, and calls
`ups.stages.<name>.run(...)`. Heavy libraries are imported inside the handlers so that
`ups --help` stays instant.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ups import __version__, logs
from ups.config import ConfigError, load_section

log = logging.getLogger("ups")

Handler = Callable[[argparse.Namespace], int | None]


def _stage_parser(sub: Any, name: str, help_text: str, handler: Handler) -> argparse.ArgumentParser:
    p = sub.add_parser(name, help=help_text, description=help_text)
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.set_defaults(handler=handler)
    return p


# --- fetch-meta --------------------------------------------------------------------------------

def _fetch_meta(args: argparse.Namespace) -> int:
    from ups.config import DatasetConfig, FetchMetaConfig

    cfg = load_section(FetchMetaConfig, "fetch_meta", args.params)
    ds = load_section(DatasetConfig, "dataset", args.params)
    from ups.stages import fetch_meta
    fetch_meta.run(cfg, ds, out_dir=Path(args.out_dir))
    return 0


def _add_fetch_meta(sub: Any) -> None:
    p = _stage_parser(sub, "fetch-meta", "Fetch vad_results.jsonl and lang_id_results.jsonl.",
                      _fetch_meta)
    p.add_argument("--out-dir", default="data/meta",
                   help="where the two JSONL files and fetch_meta.json (sizes, sha256, revision) go")


# --- metadata indices and chunk selection (index-vad, index-lang, select) ---------------------

def _index_vad(args: argparse.Namespace) -> int:
    from ups.config import IndexVadConfig

    cfg = load_section(IndexVadConfig, "index_vad", args.params)
    from ups.stages import index_vad
    index_vad.run(cfg, vad_jsonl=Path(args.vad), out_dir=Path(args.out_dir))
    return 0


def _add_index_vad(sub: Any) -> None:
    p = _stage_parser(sub, "index-vad", "Index vad_results.jsonl into Parquet (per file, per tar).",
                      _index_vad)
    p.add_argument("--vad", default="data/meta/vad_results.jsonl")
    p.add_argument("--out-dir", default="data/index/vad")


def _index_lang(args: argparse.Namespace) -> int:
    from ups.config import IndexLangConfig

    cfg = load_section(IndexLangConfig, "index_lang", args.params)
    from ups.stages import index_lang
    index_lang.run(cfg, lid_jsonl=Path(args.lid), out_dir=Path(args.out_dir))
    return 0


def _add_index_lang(sub: Any) -> None:
    p = _stage_parser(sub, "index-lang", "Index lang_id_results.jsonl with a stratified LID split.",
                      _index_lang)
    p.add_argument("--lid", default="data/meta/lang_id_results.jsonl")
    p.add_argument("--out-dir", default="data/index/lang")


def _select(args: argparse.Namespace) -> int:
    from ups.config import DatasetConfig, SelectConfig

    cfg = load_section(SelectConfig, "select", args.params)
    fetch = load_section(DatasetConfig, "dataset", args.params).fetch
    from ups.stages import select
    select.run(cfg, index_dir=Path(args.index_dir), out_dir=Path(args.out_dir), fetch=fetch)
    return 0


def _add_select(sub: Any) -> None:
    p = _stage_parser(sub, "select", "Choose ~select.hours of 10 s chunks (VAD density, balance).",
                      _select)
    p.add_argument("--index-dir", default="data/index")
    p.add_argument("--out-dir", default="data/select")


# --- audio shards, k-means and labels (index-members, prepare-audio, fit-kmeans, assign-labels)

def _index_members(args: argparse.Namespace) -> int:
    from ups.config import DatasetConfig

    ds = load_section(DatasetConfig, "dataset", args.params)
    from ups.stages import index_members
    index_members.run(ds, chunks=Path(args.chunks), fetch_meta=Path(args.meta), out_dir=Path(args.out_dir))
    return 0


def _add_index_members(sub: Any) -> None:
    p = _stage_parser(sub, "index-members", "Index the members of the selected tars from their "
                      "headers (ranged reads, no audio).", _index_members)
    p.add_argument("--chunks", default="data/select/chunks.parquet")
    p.add_argument("--meta", default="data/meta/fetch_meta.json",
                   help="fetch-meta's record: the dataset commit every request of the run uses")
    p.add_argument("--out-dir", default="data/index/members")


def _prepare_audio(args: argparse.Namespace) -> int:
    from ups.config import DatasetConfig, FeaturesConfig, PrepareAudioConfig

    cfg = load_section(PrepareAudioConfig, "prepare_audio", args.params)
    features = load_section(FeaturesConfig, "features", args.params)
    ds = load_section(DatasetConfig, "dataset", args.params)
    from ups.stages import prepare_audio
    prepare_audio.run(cfg, features.mfcc, ds, chunks=Path(args.chunks), audio_dir=Path(args.audio_dir),
                      features_dir=Path(args.features_dir),
                      report=Path(args.report or Path(args.audio_dir) / "report.json"),
                      fetch_meta=Path(args.meta), members_dir=Path(args.members_dir))
    return 0


def _add_prepare_audio(sub: Any) -> None:
    p = _stage_parser(sub, "prepare-audio", "Decode selected chunks once into 16 kHz shards + features.",
                      _prepare_audio)
    p.add_argument("--chunks", default="data/select/chunks.parquet")
    p.add_argument("--meta", default="data/meta/fetch_meta.json",
                   help="fetch-meta's record: the dataset commit every request of the run uses")
    p.add_argument("--members-dir", default="data/index/members",
                   help="index-members' output (dataset.fetch members); a tar without one is indexed now")
    p.add_argument("--audio-dir", default="data/audio")
    p.add_argument("--features-dir", default="data/features")
    p.add_argument("--report", default=None, help="default: <audio-dir>/report.json")


def _fit_kmeans(args: argparse.Namespace) -> int:
    from ups.config import FeaturesConfig, KmeansConfig, TrainConfig

    cfg = load_section(KmeansConfig, "kmeans", args.params)
    features = load_section(FeaturesConfig, "features", args.params)
    train = load_section(TrainConfig, "train", args.params)  # features.hubert_model: init
    from ups.stages import fit_kmeans
    fit_kmeans.run(cfg, features, features_dir=Path(args.features_dir), audio_dir=Path(args.audio_dir),
                   out_dir=Path(args.out_dir), train=train)
    return 0


def _add_fit_kmeans(sub: Any) -> None:
    p = _stage_parser(sub, "fit-kmeans", "Fit MiniBatchKMeans on a sample of training features.",
                      _fit_kmeans)
    p.add_argument("--features-dir", default="data/features")
    p.add_argument("--audio-dir", default="data/audio", help="PCM shards (features.kind: hubert)")
    p.add_argument("--out-dir", default="data/kmeans")


def _assign_labels(args: argparse.Namespace) -> int:
    from ups.config import AssignLabelsConfig, FeaturesConfig, TrainConfig

    cfg = load_section(AssignLabelsConfig, "assign_labels", args.params)
    features = load_section(FeaturesConfig, "features", args.params)
    train = load_section(TrainConfig, "train", args.params)  # features.hubert_model: init
    from ups.stages import assign_labels
    assign_labels.run(cfg, features, model=Path(args.model), features_dir=Path(args.features_dir),
                      audio_dir=Path(args.audio_dir), chunks=Path(args.chunks),
                      out_dir=Path(args.out_dir), train=train)
    return 0


def _add_assign_labels(sub: Any) -> None:
    p = _stage_parser(sub, "assign-labels", "Label every chunk with the final k-means model.",
                      _assign_labels)
    p.add_argument("--model", default="data/kmeans/model.npz")
    p.add_argument("--features-dir", default="data/features")
    p.add_argument("--audio-dir", default="data/audio", help="PCM shards (features.kind: hubert)")
    p.add_argument("--chunks", default="data/select/chunks.parquet", help="languages for the report")
    p.add_argument("--out-dir", default="data/labels")


# --- training (train) -------------------------------------------------------------------------

def _train(args: argparse.Namespace) -> int:
    from ups.config import TrainConfig

    cfg = load_section(TrainConfig, "train", args.params)
    from ups.stages import train
    train.run(cfg, audio_dir=Path(args.audio_dir), labels_dir=Path(args.labels_dir),
              model_dir=Path(args.model_dir), state_dir=Path(args.state_dir), live_dir=Path(args.live_dir))
    return 0


def _add_train(sub: Any) -> None:
    p = _stage_parser(sub, "train", "Continue HuBERT masked pre-training on the labelled shards "
                      "(one process; `python -m ups.launch train` starts train.gpus of them).", _train)
    p.add_argument("--audio-dir", default="data/audio", help="shards: <dir>/{train,valid}/*.tar")
    p.add_argument("--labels-dir", default="data/labels", help="labels: <dir>/{train,valid}/*.npy")
    p.add_argument("--model-dir", default="models/hubert-cpt", help="export (save_pretrained + head)")
    p.add_argument("--state-dir", default="data/train/state", help="resumable training state")
    p.add_argument("--live-dir", default="dvclive", help="dvclive metrics and plots")


# --- evaluation (evaluate) --------------------------------------------------------------------

def _evaluate(args: argparse.Namespace) -> int:
    from ups.config import EvaluateConfig, FeaturesConfig, TrainConfig

    cfg = load_section(EvaluateConfig, "evaluate", args.params)
    train = load_section(TrainConfig, "train", args.params)
    features = load_section(FeaturesConfig, "features", args.params)
    from ups.stages import evaluate
    evaluate.run(cfg, train, features.mfcc, audio_dir=Path(args.audio_dir),
                 labels_dir=Path(args.labels_dir), lid=Path(args.lid), model_dir=Path(args.model_dir),
                 live_dir=Path(args.live_dir) if args.live_dir else None, out_dir=Path(args.out_dir))
    return 0


def _add_evaluate(sub: Any) -> None:
    p = _stage_parser(sub, "evaluate", "Compare the initial and continued models on held-out data "
                      "(masked prediction, LID probe per layer, label quality).", _evaluate)
    p.add_argument("--audio-dir", default="data/audio", help="shards: <dir>/{train,valid}/*.tar")
    p.add_argument("--labels-dir", default="data/labels", help="labels: <dir>/{train,valid}/*.npy")
    p.add_argument("--lid", default="data/index/lang/lid.parquet", help="LID labels and lid_split")
    p.add_argument("--model-dir", default="models/hubert-cpt", help="the continued model (+ head)")
    p.add_argument("--live-dir", default="dvclive", help="the trainer's dvclive dir ('' to ignore)")
    p.add_argument("--out-dir", default="reports/evaluate")


# --- helpers that are not stages -------------------------------------------------------------

def _demo(args: argparse.Namespace) -> int:
    from ups import demo

    return demo.run(Path(args.run_dir), dry_run=args.dry_run)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser("demo", help="Run the pipeline on the bundled sample corpus (CPU).",
                       description="Run every stage on the bundled sample corpus in its own "
                       "DVC project under --run-dir; params.yaml is left untouched.")
    p.add_argument("--run-dir", default="runs/demo")
    p.add_argument("--dry-run", action="store_true", help="set up the run directory only")
    p.set_defaults(handler=_demo)


def _iterate(args: argparse.Namespace) -> int:
    from ups import iterate

    return iterate.run(Path(args.run_dir), layer=args.layer, extra=args.set, dry_run=args.dry_run)


def _add_iterate(sub: Any) -> None:
    p = sub.add_parser("iterate", help="Next HuBERT iteration: labels from the continued model's "
                       "layer, then train again (dvc exp run; dvc repro without Git).",
                       description="Copy models/hubert-cpt to models/iter/<sha>, then re-run the "
                       "pipeline with train.init = that copy, features.kind hubert, "
                       "features.hubert_model init (docs/training.md).")
    p.add_argument("--run-dir", default=".", help="the DVC project (default: here)")
    p.add_argument("--layer", type=int, default=None, help="features.layer (default: params.yaml's)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="more overrides, as dvc exp run -S (repeatable)")
    p.add_argument("--dry-run", action="store_true", help="snapshot and print the command only")
    p.set_defaults(handler=_iterate)


def _du(args: argparse.Namespace) -> int:
    import orjson

    from ups import du

    root = Path(args.repo)
    params = Path(args.params) if args.params else root / "params.yaml"
    rows = du.collect(root, params)
    if args.json:
        sys.stdout.write(orjson.dumps(du.to_json(rows), option=orjson.OPT_INDENT_2).decode() + "\n")
    else:
        print(du.format_table(rows))
    return 0


def _add_du(sub: Any) -> None:
    p = sub.add_parser("du", help="Disk used by each stage's outputs, the tar cache, the DVC cache "
                       "and remote.", description="Apparent and on-disk size of each dvc.yaml "
                       "stage's outputs, the tar cache, the DVC cache and the default remote (when "
                       "it is a local directory); hard links are counted once.")
    p.add_argument("--repo", default=".", help="the DVC project (default: .)")
    p.add_argument("--params", default=None, help="parameter file (default: <repo>/params.yaml)")
    p.add_argument("--json", action="store_true", help="JSON instead of a table")
    p.set_defaults(handler=_du)


def _remote_check(args: argparse.Namespace) -> int:
    from ups import remote

    print(remote.check(Path(args.repo)))
    return 0


def _add_remote_check(sub: Any) -> None:
    p = sub.add_parser("remote-check", help="Fail with one line if the default DVC remote cannot "
                       "serve a pull (make pull runs it first).",
                       description="Check that the default DVC remote is set and, for a local "
                       "directory, that it exists and holds data; SSH and S3 remotes are left to "
                       "`dvc pull`, which reports a failed connection itself.")
    p.add_argument("--repo", default=".", help="the DVC project (default: .)")
    p.set_defaults(handler=_remote_check)


def _plan(args: argparse.Namespace) -> int:
    from ups import plan

    try:
        return plan.run(Path(args.repo), args.hours, params_path=Path(args.params),
                        mb_per_s=args.mb_per_s, repro=not args.no_repro, as_json=args.json,
                        latency_ms=args.latency_ms,
                        hub_per_5min={"api": args.api_calls_per_5min,
                                      "resolve": args.resolves_per_5min})
    except plan.PlanError as exc:
        log.error("plan: %s", exc)
        return 1


def _add_plan(sub: Any) -> None:
    p = sub.add_parser("plan", help="What a run of --hours will download, the disk per stage and "
                       "the time, before any audio is fetched (make plan HOURS=N).",
                       description="Set select.hours, run `dvc repro` up to the selection "
                       "(metadata only), then print the download (whole tars and member by "
                       "member), the disk each stage needs and a time estimate from bench/results.")
    p.add_argument("--hours", type=float, required=True, help="select.hours of the run")
    p.add_argument("--repo", default=".", help="the DVC project (default: .)")
    p.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    p.add_argument("--mb-per-s", type=float, default=100.0,
                   help="download bandwidth for the time estimate, MB/s (default: 100)")
    p.add_argument("--latency-ms", type=float, default=50.0,
                   help="time per ranged request (header reads, members), ms (default: 50)")
    p.add_argument("--api-calls-per-5min", type=int, default=1000,
                   help="the hub's API budget of the account (default: 1000, a free account)")
    p.add_argument("--resolves-per-5min", type=int, default=5000,
                   help="the hub's /resolve/ budget of the account (default: 5000, a free account)")
    p.add_argument("--no-repro", action="store_true", help="use the stage outputs as they are")
    p.add_argument("--json", action="store_true", help="JSON instead of text")
    p.set_defaults(handler=_plan)


def _report(args: argparse.Namespace) -> int:
    from ups import html_report

    out = html_report.write(Path(args.run_dir), Path(args.out) if args.out else None)
    print(out)
    return 0


def _add_report(sub: Any) -> None:
    p = sub.add_parser("report", help="One-page HTML report of a run (figures + metrics).",
                       description="Build a self-contained HTML page (PNGs embedded) from a run's "
                       "own outputs: selection, k-means, training curves, evaluation. Missing "
                       "pieces are shown as 'not run'.")
    p.add_argument("--run-dir", default=".", help="the DVC project of the run (default: .)")
    p.add_argument("--out", default=None, help="default: <run-dir>/reports/report.html")
    p.set_defaults(handler=_report)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ups",
        description="HuBERT continued pre-training on Unsupervised People's Speech. "
        "Each sub-command is one DVC stage (see dvc.yaml).",
    )
    parser.add_argument("--version", action="version", version=f"ups {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (
        _add_fetch_meta, _add_index_vad, _add_index_lang, _add_select, _add_index_members,
        _add_prepare_audio, _add_fit_kmeans, _add_assign_labels,
        _add_train, _add_evaluate, _add_demo, _add_iterate, _add_du, _add_plan, _add_remote_check,
        _add_report,
    ):
        add(sub)
    return parser


def _user_errors() -> tuple[type[Exception], ...]:
    """Errors whose message says what to do (a token, a budget, a remote): one line, no traceback.

    Imported only once an exception is raised, so `ups --help` does not load the dataset code;
    when one of these was raised its module is loaded already.
    """
    from ups.dataset import CacheFullError, DatasetError, DownloadError
    from ups.remote import RemoteError

    return DatasetError, DownloadError, CacheFullError, RemoteError


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logs.setup(args.verbose)
    from ups.blas import fixed_blas

    try:
        # numpy BLAS on one thread for the whole command: tracked outputs must not depend on the
        # thread count; the products that want cores run in fixed blocks on a pool (ups.blas)
        with fixed_blas():
            return int(args.handler(args) or 0)
    except ConfigError as exc:
        log.error("configuration error: %s", exc)
        return 2
    except Exception as exc:
        if not isinstance(exc, _user_errors()):
            raise
        log.error("%s", exc)
        log.debug("where it was raised", exc_info=exc)  # -v shows the traceback
        return 1
    except KeyboardInterrupt:
        log.error("interrupted; rerun the same command to resume")
        return 130


if __name__ == "__main__":
    sys.exit(main())
