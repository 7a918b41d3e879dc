"""assign-labels: every chunk, train and valid, labelled by the one final k-means model.

For each split and source tar the stage reads the chunks' features (MFCC from prepare-audio, or
HuBERT layer features computed from the PCM shards), applies the model's (identity) statistics
and takes the nearest centroid per 50 Hz frame. Outputs per split, written atomically:
`chunk_ids.npy` (int64, sorted), `offsets.npy` (int64, n + 1) and `labels.npy` (int16);
chunk i's labels are labels[offsets[i]:offsets[i + 1]], one per CNN frame. The report gives usage
entropy, inertia and the mutual information between clusters and language per frame.

Resumable per (split, source tar): each tar's labels go to `<out_dir>/_parts/<split>/<tar:06d>.npz`
(chunk_ids, lengths, labels; atomic), then `<out_dir>/_done/<split>-<tar:06d>.done.json` (last)
records a fingerprint of the model's arrays, the feature settings, the tar's chunk ids and frame
counts and prepare-audio's marker for the tar. A restart reuses a part only when its marker holds
the current fingerprint, so a killed run (or one with a few new tars) labels only what is missing,
and the final files are byte-identical to an uninterrupted run. Parts of tars no longer present
are deleted at the end.

Parallelism: the (split, tar) units are split over torchrun ranks and Slurm array tasks
(`ups.work_share`); each labels its share, then the process that finishes the stage (torchrun's
rank 0 after a barrier, or the command run once after an array) reuses every part and joins them.
"""

from __future__ import annotations

import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from ups import failpoints
from ups.atomic import atomic_write, clear_stale_tmp, mark_done, read_done
from ups.centroids import check_model, check_precision, check_waveform, load_model, model_digest
from ups.config import AssignLabelsConfig, FeaturesConfig, TrainConfig
from ups.feature_store import iter_layer_features, list_tars
from ups.kmeans import (
    Normaliser,
    TorchAssigner,
    assign,
    joint_counts,
    language_figures,
    usage,
    usage_figures,
)
from ups.progress import bar
from ups.stage_report import write_report
from ups.work_share import WorkShare, join_gloo, work_share

log = logging.getLogger(__name__)

STAGE = "assign-labels"
SPLITS = ("train", "valid")
PARTS_DIR = "_parts"
DONE_DIR = "_done"
AUDIO_DONE_DIR = "_done"  # prepare-audio's per-tar markers under the audio dir
FORMAT_VERSION = 1


def tar_fingerprint(model_sha: str, features: FeaturesConfig, split: str, tf: Any,
                    upstream: dict[str, Any] | None) -> str:
    h = hashlib.sha256()
    h.update(repr((FORMAT_VERSION, model_sha, features.kind, features.layer if features.kind == "hubert"
                   else 0, features.hubert_model if features.kind == "hubert" else "",
                   features.precision if features.kind == "hubert" else "", split, tf.tar,
                   (upstream or {}).get("fingerprint"))).encode())
    h.update(np.ascontiguousarray(tf.chunk_ids, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(tf.offsets, dtype=np.int64).tobytes())
    return h.hexdigest()


def _write_npy(path: Path, a: np.ndarray) -> None:
    with atomic_write(path) as fh:
        np.save(fh, a, allow_pickle=False)


def label_tar(cfg: AssignLabelsConfig, features: FeaturesConfig, norm: Normaliser,
              centroids: np.ndarray, c_sq: np.ndarray, tf: Any, audio_dir: Path, split: str,
              extract: Any) -> tuple[np.ndarray, float]:
    """Labels of one tar's chunks, in the tar's chunk order, and their inertia."""
    if features.kind == "mfcc":
        x = tf.mfcc()
        labels = np.empty(tf.n_frames, dtype=np.int16)
        inertia = 0.0
        step = cfg.block_frames
        for s in range(0, tf.n_frames, step):
            lab, ine = assign(norm.apply(np.asarray(x[s:s + step])), centroids, c_sq)
            labels[s:s + step] = lab
            inertia += ine
        return labels, inertia
    # kind hubert: each batch of layer features is labelled on the device that computed it and
    # dropped; only int16 labels are kept (a tar's 768-dim features are never all in memory)
    by_chunk: dict[int, np.ndarray] = {}
    inertia = 0.0
    for ids, h in iter_layer_features(tf, audio_dir, split, extract.features):
        lab, ine = extract.assign(h.reshape(-1, h.shape[-1]), cfg.block_frames)
        inertia += ine
        for j, cid in enumerate(ids):
            by_chunk[cid] = lab[j * h.shape[1]:(j + 1) * h.shape[1]]
    labels = np.concatenate([by_chunk[int(c)] for c in tf.chunk_ids]) if len(tf.chunk_ids) else \
        np.zeros(0, np.int16)
    return labels, inertia


@dataclass(frozen=True)
class _Km:
    """What labelling one tar needs from model.npz, computed once."""

    norm: Normaliser
    centroids: np.ndarray
    c_sq: np.ndarray
    sha: str

    @classmethod
    def of(cls, model: dict[str, Any]) -> _Km:
        centroids = model["centroids"]
        return cls(Normaliser(model["mean"], model["std"]), centroids,
                   np.einsum("kd,kd->k", centroids, centroids), model_digest(model))


def label_unit(cfg: AssignLabelsConfig, features: FeaturesConfig, km: _Km, tf: Any, audio_dir: Path,
               out_dir: Path, split: str, extract: Any) -> tuple[np.ndarray, float, bool]:
    """One (split, tar): its labels and inertia, from its part when the marker is current
    (reused=True), else computed and written (part, then marker last)."""
    part = out_dir / PARTS_DIR / split / f"{tf.tar:06d}.npz"
    done_dir = out_dir / DONE_DIR
    unit = f"{split}-{tf.tar:06d}"
    fp = tar_fingerprint(km.sha, features, split, tf, read_done(audio_dir / AUDIO_DONE_DIR, f"{tf.tar:06d}"))
    done = read_done(done_dir, unit)
    if done is not None and done.get("fingerprint") == fp and part.is_file():
        with np.load(part, allow_pickle=False) as z:
            labels = z["labels"]
        return labels, float(done["inertia"]), True
    labels, inertia = label_tar(cfg, features, km.norm, km.centroids, km.c_sq, tf, audio_dir, split, extract)
    with atomic_write(part) as fh:
        np.savez(fh, chunk_ids=tf.chunk_ids, offsets=tf.offsets, labels=labels)
    mark_done(done_dir, unit, {"fingerprint": fp, "inertia": inertia, "n_frames": int(len(labels))})
    failpoints.hit("UPS_ASSIGN_FAIL_AFTER_TARS")
    return labels, inertia, False


def label_share(cfg: AssignLabelsConfig, features: FeaturesConfig, model: dict[str, Any],
                features_dir: Path, audio_dir: Path, out_dir: Path, share: WorkShare,
                extract: Any) -> int:
    """This process's share of the (split, tar) units, each labelled unless already done.
    Returns how many it labelled; the join is left to the process that finishes the stage."""
    km = _Km.of(model)
    units = share.take([(split, tf) for split in SPLITS for tf in list_tars(features_dir, split)])
    labelled = 0
    for split, tf in bar(units, desc=STAGE, unit="tar"):
        labelled += not label_unit(cfg, features, km, tf, audio_dir, out_dir, split, extract)[2]
    log.info("%s: %s labelled %d of its %d tar(s)", STAGE, share.describe(), labelled, len(units))
    return labelled


def label_split(cfg: AssignLabelsConfig, features: FeaturesConfig, model: dict[str, Any],
                features_dir: Path, audio_dir: Path, out_dir: Path, split: str, extract: Any):
    """Label a split tar by tar (resuming from valid markers), then join the parts by chunk id."""
    km = _Km.of(model)
    parts_dir, done_dir = out_dir / PARTS_DIR / split, out_dir / DONE_DIR
    tars = list_tars(features_dir, split)
    ids_parts, len_parts, label_parts = [], [], []
    inertia = 0.0
    reused = 0
    for tf in bar(tars, desc=f"{STAGE} {split}", unit="tar"):
        labels, tar_inertia, was_done = label_unit(cfg, features, km, tf, audio_dir, out_dir, split, extract)
        reused += was_done
        if len(labels) != tf.n_frames:
            raise ValueError(f"{parts_dir}/{tf.tar:06d}.npz: {len(labels)} labels for {tf.n_frames} frames")
        ids_parts.append(tf.chunk_ids)
        len_parts.append(np.diff(tf.offsets))
        label_parts.append(labels)
        inertia += tar_inertia
    if reused:
        log.info("%s: %s: reused %d of %d tar(s) labelled by an earlier run", STAGE, split, reused,
                 len(tars))
    keep = {f"{tf.tar:06d}.npz" for tf in tars}
    for p in sorted(parts_dir.glob("*")) if parts_dir.is_dir() else []:
        if p.name not in keep:
            p.unlink()
    for p in sorted(done_dir.glob(f"{split}-*.done.json")) if done_dir.is_dir() else []:
        if p.name.split(".")[0].split("-", 1)[1] + ".npz" not in keep:
            p.unlink()
    if not ids_parts:
        return np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int16), 0.0
    ids = np.concatenate(ids_parts)
    lengths = np.concatenate(len_parts)
    labels = np.concatenate(label_parts)
    order = np.argsort(ids, kind="stable")
    starts = np.concatenate([[0], np.cumsum(lengths)])[:-1]
    sorted_labels = np.concatenate([labels[starts[i]:starts[i] + lengths[i]] for i in order]) \
        if len(order) else labels
    offsets = np.concatenate([[0], np.cumsum(lengths[order])]).astype(np.int64)
    return ids[order].astype(np.int64), offsets, sorted_labels.astype(np.int16), inertia


class HubertLabeller:
    """Layer features and the nearest-centroid search on the extraction device: on a GPU the
    frames never leave it (TorchAssigner), on the CPU numpy's `assign` (faster there than torch:
    `python -m bench.labels`)."""

    def __init__(self, features: Any, norm: Normaliser, centroids: np.ndarray) -> None:
        self.features = features  # ups.hubert_features.LayerFeatures
        self.norm = norm
        self.centroids = centroids
        self.c_sq = np.einsum("kd,kd->k", centroids, centroids)
        self.on_gpu = not str(features.device).startswith("cpu")
        self.gpu = TorchAssigner(norm, centroids, features.device) if self.on_gpu else None

    @property
    def method(self) -> str:
        """Which nearest-centroid search ran: the report says so (a GPU run uses torch)."""
        return f"torch on {self.features.device}" if self.on_gpu else "numpy on the CPU"

    def assign(self, h: Any, block_frames: int) -> tuple[np.ndarray, float]:
        if self.gpu is not None:
            return self.gpu(h, block_frames)
        return assign(self.norm.apply(h.numpy()), self.centroids, self.c_sq)


def run(cfg: AssignLabelsConfig, features: FeaturesConfig, *, model: Path, features_dir: Path,
        audio_dir: Path, chunks: Path, out_dir: Path, train: TrainConfig | None = None) -> dict[str, Any]:
    """`train` resolves `features.hubert_model: init` (its init, init_revision, seed)."""
    share = work_share(os.environ)
    pg = join_gloo(share)
    try:
        if share.finishes:
            clear_stale_tmp(out_dir)  # temporaries of a killed run (no other rank is writing yet)
        if pg is not None:
            pg.barrier()
        return _run(cfg, features, share, pg, model=model, features_dir=features_dir,
                    audio_dir=audio_dir, chunks=chunks, out_dir=out_dir, train=train)
    finally:
        if pg is not None:
            pg.destroy_process_group()


def _run(cfg: AssignLabelsConfig, features: FeaturesConfig, share: WorkShare, pg: Any, *, model: Path,
         features_dir: Path, audio_dir: Path, chunks: Path, out_dir: Path,
         train: TrainConfig | None) -> dict[str, Any]:
    """Label this process's share, then (the process that finishes) join and report."""
    m = load_model(model)
    extract = _labeller(cfg, features, m, model, train)
    if share.in_array or share.collective:
        label_share(cfg, features, m, features_dir, audio_dir, out_dir, share, extract)
        if pg is not None:
            pg.barrier()
    if not share.finishes:
        if share.in_array and share.group_rank == 0:
            log.info("%s: %s done; the stage's command run once after the array joins the labels and "
                     "writes the report", STAGE, share.describe())
        return {}
    per_split, joint, languages = write_splits(cfg, features, m, features_dir, audio_dir, chunks, out_dir,
                                               extract)
    k = int(m["n_clusters"])
    label_set = {"kind": features.kind, "layer": int(m["layer"]), "hubert_model": str(m["hubert_model"]),
                 "revision": str(m.get("revision", "")), "n_clusters": k}
    fields: dict[str, Any] = {"features_kind": features.kind, "label_set": label_set,
                              "n_clusters": k, "splits": per_split,
                              "nearest_centroid": extract.method if extract is not None
                              else "numpy on the CPU",
                              "languages": languages, **language_figures(joint)}
    write_report(out_dir / "report.json", stage=STAGE, config=cfg, **fields)
    log.info("%s: I(cluster; language) = %.3f bits of H(language) = %.3f bits", STAGE,
             fields["mi_cluster_language_bits"], fields["language_entropy_bits"])
    return fields


def _labeller(cfg: AssignLabelsConfig, features: FeaturesConfig, m: dict[str, Any], model: Path,
              train: TrainConfig | None) -> HubertLabeller | None:
    """The centroids checked against the features configured now; for HuBERT features, the
    layer extractor and its nearest-centroid search (None for MFCC: numpy on the stored features)."""
    source = None
    if features.kind == "hubert":
        from ups.hubert_features import feature_model

        source = feature_model(features, train)
    check_model(m, model, features, source)
    if features.kind != "hubert":
        return None
    from ups.hubert_features import LayerFeatures, pick_device, pick_precision

    assert source is not None
    normalize_audio = (train or TrainConfig()).normalize_audio
    check_waveform(m, model, normalize_audio)
    check_precision(m, model, pick_precision(features.precision, pick_device(features.device)),
                    cfg.allow_precision_mismatch)
    lf = LayerFeatures(source, features.layer, features.device, features.batch_chunks,
                       features.precision, normalize_audio)
    return HubertLabeller(lf, Normaliser(m["mean"], m["std"]), m["centroids"])


def write_splits(cfg: AssignLabelsConfig, features: FeaturesConfig, m: dict[str, Any], features_dir: Path,
                 audio_dir: Path, chunks: Path, out_dir: Path, extract: HubertLabeller | None
                 ) -> tuple[dict[str, Any], np.ndarray, list[str]]:
    """Each split's labels joined from the parts and written (chunk_ids, offsets, labels); returns
    per split its counts and usage figures, the (cluster, language) frame counts of both splits
    and the languages (sorted: the joint's columns)."""
    table = pq.read_table(chunks, columns=["chunk_id", "language"])
    lang_of = dict(zip(table.column("chunk_id").to_pylist(), table.column("language").to_pylist(),
                       strict=True))
    languages = sorted(set(lang_of.values()))
    lang_index = {lang: i for i, lang in enumerate(languages)}
    k = int(m["n_clusters"])
    per_split: dict[str, Any] = {}
    joint = np.zeros((k, len(languages)), dtype=np.int64)
    for split in SPLITS:
        ids, offsets, labels, inertia = label_split(cfg, features, m, features_dir, audio_dir, out_dir,
                                                    split, extract)
        out = out_dir / split
        out.mkdir(parents=True, exist_ok=True)
        _write_npy(out / "chunk_ids.npy", ids)
        _write_npy(out / "offsets.npy", offsets)
        _write_npy(out / "labels.npy", labels)
        frame_lang = np.repeat(np.array([lang_index[lang_of[int(c)]] for c in ids], dtype=np.int64),
                               np.diff(offsets))
        joint += joint_counts(labels, frame_lang, k, len(languages))
        counts = usage(labels, k)
        per_split[split] = {
            "n_chunks": int(len(ids)), "n_frames": int(len(labels)),
            "inertia_per_frame": inertia / max(1, len(labels)),
            **usage_figures(counts, k), "usage_histogram": counts.tolist(),
        }
        log.info("%s: %s: %d chunks, %d frames, usage entropy %.2f bits", STAGE, split, len(ids),
                 len(labels), per_split[split]["usage_entropy_bits"])
    return per_split, joint, languages
