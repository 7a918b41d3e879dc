"""select: choose about select.hours of fixed-length chunks from the VAD and LID indices.

Reads `<index-dir>/vad/files.parquet`, `vad/tars.parquet` and `lang/lid.parquet`; writes
`chunks.parquet`, `report.json` and `hours_per_language.png` under `--out-dir`. The shell: it
reads the indices, finds each file's language and whether it may be chosen, and hands the
arrays to the policy of `dataset.fetch`: whole tars (`ups.selection.select_whole_tars`, a tar
limit) or tar members (`ups.member_selection.select_members`, a download budget). It then holds
out the valid and eval files, writes the chunks and the report (`ups/select_report.py`).

Eligibility (counted in the report): a file needs a LID entry with the same (tar, normalised
key) (`no_language_label`), a real language (`nospeech`, `unknown_language` excluded), a
language that select.languages / select.exclude_languages allow (`language_not_chosen`), and a
language with hours in the table or covered by select.unlisted_language
(`unlisted_language_excluded`). No clock value goes into the outputs, so a rerun writes the
same bytes.

Memory: only tar, key, duration and speech of files.parquet are loaded whole; the segment lists
are read per batch of whole tars (`_SegmentReader`), so files.parquet must be sorted by tar, as
index-vad writes it.
"""

from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ups import member_selection as msel
from ups import select_report
from ups import selection as sel
from ups.atomic import atomic_dir
from ups.config import SelectConfig
from ups.lang_hours import compute_hours, fill_unlisted, load_shipped
from ups.languages import NOSPEECH, is_language
from ups.skips import Skips
from ups.stage_report import write_report

log = logging.getLogger(__name__)

CHUNKS_SCHEMA = pa.schema([
    ("chunk_id", pa.int64()), ("tar", pa.int32()), ("key", pa.string()), ("start_s", pa.float64()),
    ("end_s", pa.float64()), ("language", pa.string()), ("split", pa.string()),
    ("speech_ratio", pa.float64()), ("file_duration_s", pa.float64()),
])

class _SegmentReader:
    """Segment lists of chosen rows of files.parquet, read one span of row groups at a time so
    that the 1+ GB of segments never sits in memory whole (rows asked for must be sorted)."""

    COLUMNS = ["seg_start_s", "seg_end_s"]

    def __init__(self, path: Path):
        self.pf = pq.ParquetFile(path)
        md = self.pf.metadata
        self.bounds = np.cumsum([0] + [md.row_group(i).num_rows for i in range(md.num_row_groups)])

    def read(self, ids: np.ndarray) -> tuple[pa.Array, pa.Array]:
        """Rows `ids` (sorted); one row group in memory at a time, only its asked rows kept."""
        grp = np.searchsorted(self.bounds, ids, side="right") - 1
        cut = np.flatnonzero(np.r_[True, grp[1:] != grp[:-1], True])
        starts, ends = [], []
        for a, b in zip(cut[:-1].tolist(), cut[1:].tolist(), strict=True):
            g = int(grp[a])
            t = self.pf.read_row_group(g, columns=self.COLUMNS, use_threads=False)
            rows = pa.array(ids[a:b] - self.bounds[g])
            starts.append(t["seg_start_s"].take(rows).combine_chunks())
            ends.append(t["seg_end_s"].take(rows).combine_chunks())
        return pa.concat_arrays(starts), pa.concat_arrays(ends)


def join_language(files: pa.Table, lid: pa.Table) -> tuple[np.ndarray, dict]:
    """Language per VAD file (None if no LID row) joined on (tar, key), plus coverage numbers."""
    left = files.select(["tar", "key"]).append_column("_i", pa.array(np.arange(len(files))))
    right = lid.select(["tar", "key", "language"])
    j = left.join(right, keys=["tar", "key"], join_type="left outer")
    lang = np.full(len(files), None, dtype=object)
    lang[j["_i"].to_numpy()] = np.asarray(j["language"].to_pylist(), dtype=object)
    matched = int(np.sum(lang != None))  # noqa: E711
    key_only = files.select(["key"]).join(lid.select(["key"]).group_by("key").aggregate([]),
                                          keys="key", join_type="inner")
    coverage = {
        "vad_files": len(files), "lid_files": len(lid), "joined": matched,
        "vad_without_lid": len(files) - matched, "lid_without_vad": len(lid) - matched,
        "vad_with_lid_fraction": matched / max(len(files), 1),
        "vad_keys_matching_lid_key_in_another_tar": len(key_only) - matched,
    }
    return lang, coverage


def _eligibility(lang: np.ndarray, speech_s: np.ndarray, table: dict[str, float],
                 cfg: SelectConfig) -> np.ndarray:
    """Reason per file why it cannot be selected ("" = eligible), in the order they are checked."""
    chosen = None if cfg.languages == "all" else set(cfg.languages)
    excluded = set(cfg.exclude_languages)
    reasons = np.full(len(lang), "", dtype=object)
    for i, lab in enumerate(lang.tolist()):
        if lab is None:
            reasons[i] = "no_language_label"
        elif lab == NOSPEECH:
            reasons[i] = "nospeech"
        elif not is_language(lab):
            reasons[i] = "unknown_language"
        elif lab in excluded or (chosen is not None and lab not in chosen):
            reasons[i] = "language_not_chosen"
        elif lab not in table and cfg.unlisted_language == "exclude":
            reasons[i] = "unlisted_language_excluded"
        elif speech_s[i] <= 0:
            reasons[i] = "no_speech"
    return reasons


@dataclass
class LanguageChoice:
    """Each file's language, why a file may not be chosen, and the shares the languages get."""

    per_file: np.ndarray  # object: the joined LID label of each file, None without one
    reasons: np.ndarray  # object: "" for an eligible file, else why not (_eligibility)
    coverage: dict  # VAD/LID join coverage
    languages: list[str]  # the eligible languages, sorted (language numbers index this list)
    table_hours: np.ndarray  # n_l of each language: the hours table, unlisted ones filled
    shares: np.ndarray  # temperature shares p_l
    computed: dict[str, float]  # hours per language recomputed from the indices
    unlisted: list[str]  # eligible languages the table lacks
    unlisted_scale: float
    filtered_hours: float  # speech hours that select.languages / exclude_languages leave out


def _choose_languages(cfg: SelectConfig, files: pa.Table, lid: pa.Table, skips: Skips) -> LanguageChoice:
    """Join the LID labels, count the files that may not be chosen, and give each eligible
    language its temperature share from the hours table (select.hours_table, unlisted rule)."""
    lang, coverage = join_language(files, lid)
    speech_s = files["speech_s"].to_numpy()
    computed = compute_hours(speech_s, lang)
    table = dict(computed) if cfg.hours_table == "computed" else load_shipped()
    reasons = _eligibility(lang, speech_s, table, cfg)
    for r in sorted(set(reasons.tolist()) - {""}):
        skips.add(r, n=int((reasons == r).sum()))
    filtered_h = float(speech_s[reasons == "language_not_chosen"].sum() / 3600)
    languages = sorted(set(lang[reasons == ""].tolist()))
    unlisted = [x for x in languages if x not in table]
    # rule `indices`: indexed hours x (table / indices) over the listed languages (ups/lang_hours.py)
    table, unlisted_scale = fill_unlisted(table, computed, languages)
    table_hours = np.array([table.get(x, 0.0) for x in languages])
    return LanguageChoice(lang, reasons, coverage, languages, table_hours,
                          sel.temperature_shares(table_hours, cfg.alpha), computed, unlisted,
                          unlisted_scale, filtered_h)


def _file_table(files: pa.Table, langs: LanguageChoice, files_path: Path) -> sel.FileTable:
    tar = files["tar"].to_numpy().astype(np.int64)
    if np.any(np.diff(tar) < 0):
        raise ValueError(f"{files_path} is not sorted by tar (index-vad writes it sorted)")
    speech_s = files["speech_s"].to_numpy()
    duration_s = files["duration_s"].to_numpy()
    language = np.full(len(files), -1, dtype=np.int64)
    for k, x in enumerate(langs.languages):
        language[langs.per_file == x] = k
    density = np.where(duration_s > 0, speech_s / np.maximum(duration_s, 1e-9), 0.0)
    return sel.FileTable(tar, language, duration_s, density, np.flatnonzero(langs.reasons == ""))


def _candidates_of(segs: _SegmentReader, files: sel.FileTable, cfg: SelectConfig,
                   rows: np.ndarray) -> sel.ScoredCandidates:
    """Capped, scored candidates of the files `rows` (whole tars): scores depend on the chunk only."""
    if len(rows) == 0:
        return sel.ScoredCandidates.empty()
    starts, ends = segs.read(rows)
    counts = pc.list_value_length(starts).to_numpy(zero_copy_only=False).astype(np.int64)
    c = sel.chunk_candidates(files.duration_s[rows], counts, starts.flatten().to_numpy(),
                             ends.flatten().to_numpy(), cfg.chunk_seconds, cfg.min_speech_ratio,
                             file_ids=rows)
    return sel.score_and_cap(c, files.density, files.tar, cfg.chunk_seconds, cfg.seed,
                             *_caps(cfg))


def _caps(cfg: SelectConfig) -> tuple[int, int]:
    """Chunks per file and per tar at most (select.max_file_fraction, max_tar_fraction)."""
    return (sel.max_chunks(cfg.max_file_fraction, cfg.hours, cfg.chunk_seconds),
            sel.max_chunks(cfg.max_tar_fraction, cfg.hours, cfg.chunk_seconds))


def _splits(chosen: sel.Selection, language: np.ndarray, cfg: SelectConfig) -> np.ndarray:
    """train / valid / eval per chosen chunk: the evaluation files first, then validation."""
    hours = np.full(len(chosen.file), cfg.chunk_seconds / 3600.0)
    held_eval = sel.hold_out_files(chosen.file, language, hours, cfg.eval_fraction,
                                   np.random.default_rng([cfg.seed, 2]))
    valid = sel.hold_out_files(chosen.file, language, hours, cfg.valid_fraction,
                               np.random.default_rng([cfg.seed, 1]), exclude=held_eval)
    return np.where(held_eval, "eval", np.where(valid, "valid", "train"))


def _chunks_table(files: pa.Table, table: sel.FileTable, chosen: sel.Selection,
                  language: np.ndarray, split: np.ndarray, chunk_s: float) -> pa.Table:
    """chunks.parquet: sorted by tar, key, start; chunk_id numbers that order."""
    rows = chosen.file
    keys = files["key"].take(pa.array(rows)) if len(rows) else pa.array([], pa.string())
    out = pa.table({
        "tar": pa.array(table.tar[rows].astype(np.int32)), "key": keys,
        "start_s": pa.array(chosen.start_s), "end_s": pa.array(chosen.start_s + chunk_s),
        "language": pa.array(language.tolist(), pa.string()),
        "split": pa.array(split.tolist(), pa.string()), "speech_ratio": pa.array(chosen.ratio),
        "file_duration_s": pa.array(table.duration_s[rows]),
    })
    out = out.take(pc.sort_indices(out, sort_keys=[("tar", "ascending"), ("key", "ascending"),
                                                   ("start_s", "ascending")]))
    return out.add_column(0, "chunk_id", pa.array(np.arange(len(out), dtype=np.int64))).cast(CHUNKS_SCHEMA)


def _limit_hours(cfg: SelectConfig, files: pa.Table, table: sel.FileTable, pool: sel.CandidatePool,
                 chosen: sel.Selection) -> dict[str, float]:
    """Hours left after each limit, in the order they apply (the report's `shortfall`)."""
    eligible = table.eligible
    whole_chunks = np.floor(table.duration_s[eligible] / cfg.chunk_seconds + 1e-9) * cfg.chunk_seconds
    chunk_h = cfg.chunk_seconds / 3600.0
    return {"eligible_hours": float(whole_chunks.sum() / 3600),
            "eligible_speech_hours": float(files["speech_s"].to_numpy()[eligible].sum() / 3600),
            "candidate_hours": pool.n_candidates * chunk_h, "after_caps_hours": pool.n_after_caps * chunk_h,
            "within_download_limit_hours": chosen.within_limit_hours}


POLICIES = {"tars": sel.select_whole_tars, "members": msel.select_members}


def run(cfg: SelectConfig, *, index_dir: Path, out_dir: Path, fetch: str = "tars") -> dict:
    """Select chunks from the indices under `index_dir` into `out_dir` with the policy of
    `fetch` (dataset.fetch); returns the chunk count, hours and tars touched."""
    t0 = time.perf_counter()
    index_dir, out_dir = Path(index_dir), Path(out_dir)
    files_path = index_dir / "vad" / "files.parquet"
    files = pq.read_table(files_path, columns=["tar", "key", "duration_s", "speech_s"])
    tars = pq.read_table(index_dir / "vad" / "tars.parquet")
    lid = pq.read_table(index_dir / "lang" / "lid.parquet")
    log.info("select: %d VAD files, %d LID rows, target %.2f h", len(files), len(lid), cfg.hours)
    skips = Skips("select")
    langs = _choose_languages(cfg, files, lid, skips)
    table = _file_table(files, langs, files_path)
    candidates_of = functools.partial(_candidates_of, _SegmentReader(files_path), table, cfg)
    pool = sel.pool_candidates(table, len(langs.languages), cfg.chunk_seconds, candidates_of)
    density = dict(zip(tars["tar"].to_pylist(), tars["density"].to_pylist(), strict=True))
    tar_density = np.array([density.get(int(t), 0.0) for t in pool.tar_numbers])
    chosen = POLICIES[fetch](table, pool, langs.shares, tar_density, cfg, candidates_of)
    if chosen.hours_scale < 1.0:
        log.warning("select: the files for %.2f h would exceed select.max_download_gb=%g; taking "
                    "%.1f %% of the hours in every language", cfg.hours, cfg.max_download_gb,
                    100 * chosen.hours_scale)
    language = langs.per_file[chosen.file]
    split = _splits(chosen, language, cfg)
    out = _chunks_table(files, table, chosen, language, split, cfg.chunk_seconds)
    fields = _report_fields(cfg, fetch, files, tars, langs, table, pool, chosen, language, split)
    with atomic_dir(out_dir) as tmp:
        pq.write_table(out, tmp / "chunks.parquet")
        select_report.chart(tmp / "hours_per_language.png", langs.languages, fields["hours_before"],
                            fields["hours_after"])
        write_report(tmp / "report.json", stage="select", config=cfg, skips=skips, **fields)
    skips.log_summary()
    elapsed = time.perf_counter() - t0  # logged only: a clock value in report.json breaks reruns
    hours, split_hours = fields["selected_hours"], fields["split_hours"]
    log.info("select: %d chunks, %.2f h (train %.2f, valid %.2f, eval %.2f), %d tars, %.1f s", len(out),
             hours, split_hours["train"], split_hours["valid"], split_hours["eval"], fields["n_tars"],
             elapsed)
    return {"n_chunks": len(out), "hours": hours, "n_tars": fields["n_tars"], "elapsed_s": elapsed}


def _report_fields(cfg: SelectConfig, fetch: str, files: pa.Table, tars: pa.Table,
                   langs: LanguageChoice, table: sel.FileTable, pool: sel.CandidatePool,
                   chosen: sel.Selection, language: np.ndarray, split: np.ndarray) -> dict:
    """report.json's fields (no clock value): hours, splits, download, languages, shortfall."""
    chunk_h = cfg.chunk_seconds / 3600.0
    hours = len(chosen.file) * chunk_h
    speech_s = files["speech_s"].to_numpy()
    eligible = langs.reasons == ""
    before = {x: float(speech_s[eligible & (langs.per_file == x)].sum() / 3600) for x in langs.languages}
    after = {x: float((language == x).sum() * chunk_h) for x in langs.languages}
    split_hours = {s: float((split == s).sum() * chunk_h) for s in select_report.SPLITS}
    max_file, max_tar = _caps(cfg)
    short = select_report.shortfall(cfg, hours, _limit_hours(cfg, files, table, pool, chosen),
                                    chosen.n_tars_chosen, max_file, max_tar, langs.filtered_hours,
                                    fetch, chosen.hours_scale)
    if short is not None:
        log.warning("select: %s", short["reason"])
    tars_index = {t: (d, n) for t, d, n in zip(tars["tar"].to_pylist(), tars["duration_s"].to_pylist(),
                                                tars["n_files"].to_pylist(), strict=True)}
    return dict(
        target_hours=cfg.hours, selected_hours=hours, n_chunks=len(chosen.file),
        selected_hours_note="hours of chunks chosen from the indices; prepare-audio's report "
                            "states the hours written and why they differ",
        target_reached_within_1pct=short is None, shortfall=short,
        shortfall_reason=None if short is None else short["reason"],
        split_hours=split_hours, valid_hours=split_hours["valid"],
        **select_report.download_figures(chosen.file, table.tar, table.duration_s, tars_index,
                                         cfg.mp3_bytes_per_second, fetch, chosen.limit),
        n_candidates=pool.n_candidates, n_candidates_after_caps=int(pool.n_after_caps),
        max_chunks_per_file=max_file, max_chunks_per_tar=max_tar,
        languages_chosen=langs.languages,
        languages=select_report.language_figures(langs.languages, langs.table_hours, langs.shares,
                                                 pool.avail_hours, before, chosen.file, language,
                                                 split, chunk_h),
        language_shares=dict(zip(langs.languages, langs.shares.tolist(), strict=True)),
        language_hours_table=dict(zip(langs.languages, langs.table_hours.tolist(), strict=True)),
        unlisted_languages=langs.unlisted, unlisted_scale=langs.unlisted_scale,
        language_hours_computed=langs.computed, hours_before=before, hours_after=after,
        join_coverage=langs.coverage,
    )
