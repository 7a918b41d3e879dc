"""select: choose about select.hours of fixed-length chunks from the VAD and LID indices.

Reads `<index-dir>/vad/files.parquet`, `vad/tars.parquet` and `lang/lid.parquet`; writes
`chunks.parquet`, `report.json` and `hours_per_language.png` under `--out-dir`. The policy is in
`ups/selection.py`. Eligibility (counted in the report): a file needs a LID entry with the same
(tar, normalised key) (`no_language_label`), a real language (`nospeech`, `unknown_language`
excluded), a language that select.languages / select.exclude_languages allow
(`language_not_chosen`), and a language with hours in the table or covered by
select.unlisted_language (`unlisted_language_excluded`). The report also gives the VAD/LID join
coverage, per-language hours (table, share, before, after, per split) and, when the target is
not reached, the limit that binds with its numbers (`shortfall`). Chunks are split into train,
valid and eval (held out for evaluate's probe) by whole file. No clock value goes into the
outputs, so a rerun writes the same bytes.

Memory: only tar, key, duration and speech of files.parquet are loaded whole. Candidates and
caps are computed per batch of whole tars (segment lists read from the row groups that hold
them) and reduced to a tars x languages hours matrix; after the tar choice the candidates are
rebuilt for the chosen tars only. files.parquet must be sorted by tar, as index-vad writes it.

With `fetch="members"` (dataset.fetch) the tar choice is replaced by a download budget
(select.max_download_gb, files estimated at select.mp3_bytes_per_second): ups/member_selection.py.
The report gives the bytes to fetch both ways (`download.members`, `download.tars`).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ups import member_selection as msel
from ups import selection as sel
from ups.atomic import atomic_dir
from ups.config import SelectConfig
from ups.lang_hours import compute_hours, fill_unlisted, load_shipped
from ups.languages import NOSPEECH, is_language
from ups.report import Skips, write_report

log = logging.getLogger(__name__)

CHUNKS_SCHEMA = pa.schema([
    ("chunk_id", pa.int64()), ("tar", pa.int32()), ("key", pa.string()), ("start_s", pa.float64()),
    ("end_s", pa.float64()), ("language", pa.string()), ("split", pa.string()),
    ("speech_ratio", pa.float64()), ("file_duration_s", pa.float64()),
])
SPLITS = ("train", "valid", "eval")
_BATCH_FILES = 50_000


def _tar_batches(idx: np.ndarray, tar: np.ndarray):
    """Split `idx` (sorted by tar) into runs of about _BATCH_FILES files, never splitting a tar."""
    lo = 0
    while lo < len(idx):
        hi = min(lo + _BATCH_FILES, len(idx))
        if hi < len(idx):
            t = tar[idx[hi - 1]]
            hi = lo + int(np.searchsorted(tar[idx[lo:]], t, side="right"))
        yield idx[lo:hi]
        lo = hi


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


def _capped_candidates(segs: _SegmentReader, ids: np.ndarray, duration_s: np.ndarray,
                       density: np.ndarray, tar: np.ndarray, cfg: SelectConfig, max_file: int,
                       max_tar: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """Candidates of the files `ids` (whole tars) after the per-file and per-tar caps:
    (file, start_s, ratio, score, number before the caps). Scores depend only on the chunk."""
    if len(ids) == 0:
        z = np.zeros(0)
        return z.astype(np.int64), z, z, z, 0
    sub_s, sub_e = segs.read(ids)
    counts = pc.list_value_length(sub_s).to_numpy(zero_copy_only=False).astype(np.int64)
    c = sel.chunk_candidates(duration_s[ids], counts, sub_s.flatten().to_numpy(),
                             sub_e.flatten().to_numpy(), cfg.chunk_seconds, cfg.min_speech_ratio,
                             file_ids=ids)
    score = c.ratio + 1e-3 * density[c.file] + 1e-6 * sel.tie_break(c.file, c.start_s,
                                                                     cfg.chunk_seconds, cfg.seed)
    keep = sel.cap_per_group(c.file, score, max_file)
    keep[keep] = sel.cap_per_group(tar[c.file[keep]], score[keep], max_tar)
    return c.file[keep], c.start_s[keep], c.ratio[keep], score[keep], len(c.file)


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


def shortfall(cfg: SelectConfig, selected_h: float, hours: dict[str, float], n_chosen_tars: int,
              max_file: int, max_tar: int, filtered_h: float, fetch: str = "tars",
              budget_scale: float = 1.0) -> dict | None:
    """None when the target is reached (within 1 %); else the hours left after each limit, in
    the order they apply, and the first one below the target (`binding`), named with numbers.
    The last limit is `max_tars` for whole-tar downloads, `max_download_gb` for members."""
    if abs(selected_h - cfg.hours) <= 0.01 * cfg.hours:
        return None
    n_candidates = int(round(hours["candidate_hours"] / (cfg.chunk_seconds / 3600.0)))
    download_limit = "max_download_gb" if fetch == "members" else "max_tars"
    order = [("languages" if filtered_h > 0 else "eligible_files", "eligible_hours"),
             ("min_speech_ratio", "candidate_hours"), ("caps", "after_caps_hours"),
             (download_limit, "within_download_limit_hours")]
    # no limit below the target: the shortfall is whole chunks against each language's quota
    binding = next((name for name, key in order if hours[key] < cfg.hours * 0.99), "whole_chunks")
    whole = f"whole {cfg.chunk_seconds:g} s chunks"
    why = {
        "languages": f"select.languages / select.exclude_languages leave {hours['eligible_hours']:.3f} h "
                     f"of {whole} in eligible files ({filtered_h:.3f} h of speech excluded by them)",
        "eligible_files": f"the eligible files (a LID label that is a Whisper code) hold "
                          f"{hours['eligible_hours']:.3f} h of {whole}",
        "min_speech_ratio": f"only {hours['candidate_hours']:.3f} h ({n_candidates} {whole}) have VAD "
                            f"speech >= select.min_speech_ratio {cfg.min_speech_ratio:g}",
        "caps": f"the caps leave {hours['after_caps_hours']:.3f} h: at most {max_file} chunk(s) per file "
                f"(select.max_file_fraction {cfg.max_file_fraction:g}) and {max_tar} per tar "
                f"(select.max_tar_fraction {cfg.max_tar_fraction:g})",
        "max_tars": f"select.max_tars {cfg.max_tars}: the {n_chosen_tars} chosen tars hold "
                    f"{hours['within_download_limit_hours']:.3f} h of capped candidates",
        "whole_chunks": f"every limit leaves at least the target; each language's quota is met "
                        f"in {whole} (select.chunk_seconds), which select.hours {cfg.hours:g} "
                        f"does not divide into within 1 %",
        "max_download_gb": f"select.max_download_gb {cfg.max_download_gb:g}: the files that fit it "
                           f"give every language {100 * budget_scale:.1f} % of its hours "
                           f"({hours['within_download_limit_hours']:.3f} h of capped candidates)",
    }[binding]
    return {"binding": binding, "target_hours": cfg.hours, "selected_hours": selected_h,
            "language_filter_excluded_speech_hours": filtered_h, **hours,
            "reason": f"{selected_h:.3f} h selected of {cfg.hours:g} h asked: {why}"}


def _member_pick(segs: _SegmentReader, elig_idx: np.ndarray, file_count: np.ndarray,
                 lang_num: np.ndarray, file_bytes: np.ndarray, duration_s: np.ndarray,
                 density: np.ndarray, tar: np.ndarray, shares: np.ndarray, avail_h: np.ndarray,
                 cfg: SelectConfig, max_file: int, max_tar: int, n_langs: int) -> dict:
    """Steps 4-5 for dataset.fetch members: chosen files within select.max_download_gb, then
    their candidates (from whole tars, so the caps are those of the first pass) and the pick."""
    chunk_h = cfg.chunk_seconds / 3600.0
    tie = sel.tie_break(np.arange(len(file_count)), np.zeros(len(file_count)), cfg.chunk_seconds,
                        cfg.seed)
    lay = msel.layout(lang_num, file_count, file_bytes, density, tie, n_langs)
    choice = msel.fit_budget(lay, shares, avail_h, cfg.hours, chunk_h, cfg.max_download_gb * 1e9)
    if choice.scale < 1.0:
        log.warning("select: the files for %.2f h would exceed select.max_download_gb=%g; taking "
                    "%.1f %% of the hours in every language", cfg.hours, cfg.max_download_gb,
                    100 * choice.scale)
    rank = np.full(len(file_count), -1, dtype=np.int64)
    rank[choice.files] = choice.rank
    in_tars = elig_idx[np.isin(tar[elig_idx], np.unique(tar[choice.files]))]
    parts = []
    for ids in _tar_batches(in_tars, tar):
        f, st, r, sc, _ = _capped_candidates(segs, ids, duration_s, density, tar, cfg, max_file, max_tar)
        keep = rank[f] >= 0
        parts.append((f[keep], st[keep], r[keep], sc[keep]))
    cf, cs, cr, sc = (np.concatenate([p[i] for p in parts]) if parts else np.zeros(0)
                      for i in range(4))
    cf = cf.astype(np.int64)
    pick = msel.pick(lang_num[cf], rank[cf], sc, choice.n_chunks)
    return {"cf": cf, "cs": cs, "cr": cr, "pick": pick, "scale": choice.scale,
            "bytes": choice.bytes}


def run(cfg: SelectConfig, *, index_dir: Path, out_dir: Path, fetch: str = "tars") -> dict:
    t0 = time.perf_counter()
    index_dir, out_dir = Path(index_dir), Path(out_dir)
    files_path = index_dir / "vad" / "files.parquet"
    files = pq.read_table(files_path, columns=["tar", "key", "duration_s", "speech_s"])
    segs = _SegmentReader(files_path)
    tars_tbl = pq.read_table(index_dir / "vad" / "tars.parquet")
    lid = pq.read_table(index_dir / "lang" / "lid.parquet")
    log.info("select: %d VAD files, %d LID rows, target %.2f h", len(files), len(lid), cfg.hours)
    skips = Skips("select")
    lang, coverage = join_language(files, lid)
    speech_s = files["speech_s"].to_numpy()
    duration_s = files["duration_s"].to_numpy()
    tar = files["tar"].to_numpy().astype(np.int64)

    computed = compute_hours(speech_s, lang)
    table = dict(computed) if cfg.hours_table == "computed" else load_shipped()
    reasons = _eligibility(lang, speech_s, table, cfg)
    eligible = reasons == ""
    for r in sorted(set(reasons.tolist()) - {""}):
        skips.add(r, n=int((reasons == r).sum()))
    filtered_h = float(speech_s[reasons == "language_not_chosen"].sum() / 3600)
    languages = sorted(set(lang[eligible].tolist()))
    unlisted = [x for x in languages if x not in table]
    # rule `indices`: indexed hours x (table / indices) over the listed languages (ups/lang_hours.py)
    table, unlisted_scale = fill_unlisted(table, computed, languages)
    lang_id = {x: k for k, x in enumerate(languages)}

    # 1-2. candidates and caps, in batches of whole tars: only the (tar, language) hours are
    # kept, so memory stays bounded by one batch; candidates are rebuilt for the chosen tars.
    chunk_h = cfg.chunk_seconds / 3600.0
    max_file = max(1, int(cfg.max_file_fraction * cfg.hours / chunk_h))
    max_tar = max(1, int(cfg.max_tar_fraction * cfg.hours / chunk_h))
    density = np.where(duration_s > 0, speech_s / np.maximum(duration_s, 1e-9), 0.0)
    elig_idx = np.flatnonzero(eligible)
    if np.any(np.diff(tar) < 0):
        raise ValueError(f"{files_path} is not sorted by tar (index-vad writes it sorted)")
    lang_num = np.full(len(files), -1, dtype=np.int64)
    for x, k in lang_id.items():
        lang_num[lang == x] = k
    tar_rows = np.unique(tar[elig_idx])
    avail = np.zeros((len(tar_rows), len(languages)))
    n_candidates = n_after_caps = 0
    file_count = np.zeros(len(files), dtype=np.int64)  # capped candidates per file (fetch: members)
    for ids in _tar_batches(elig_idx, tar):
        c = _capped_candidates(segs, ids, duration_s, density, tar, cfg, max_file, max_tar)
        n_candidates += c[4]
        n_after_caps += len(c[0])
        np.add.at(avail, (np.searchsorted(tar_rows, tar[c[0]]), lang_num[c[0]]), chunk_h)
        u, n = np.unique(c[0], return_counts=True)
        file_count[u] += n

    # 3. temperature shares and quotas over all tars
    n_l = np.array([table.get(x, 0.0) for x in languages])
    shares = sel.temperature_shares(n_l, cfg.alpha)
    quota_all = sel.water_fill(shares, avail.sum(axis=0), cfg.hours)

    file_bytes = duration_s * cfg.mp3_bytes_per_second  # estimated member size of every file
    budget = None
    if fetch == "members":
        # 4-5 on a download budget: files by usable chunks per byte, quotas over all tars
        # (ups/member_selection.py); candidates rebuilt for the chosen files' tars only
        budget = _member_pick(segs, elig_idx, file_count, lang_num, file_bytes, duration_s, density,
                              tar, shares, avail.sum(axis=0), cfg, max_file, max_tar, len(languages))
        cf, cs, cr, pick = budget["cf"], budget["cs"], budget["cr"], budget["pick"]
        n_chosen_tars = int(len(np.unique(tar[cf])))
        # what the budget lets through: all of it, or (bound) exactly what was picked
        within_limit_h = float(avail.sum()) if budget["scale"] >= 1.0 else float(pick.sum() * chunk_h)
    else:
        # 4. tars, then the candidates of the chosen tars only
        tdens = dict(zip(tars_tbl["tar"].to_pylist(), tars_tbl["density"].to_pylist(), strict=True))
        tar_density = np.array([tdens.get(int(t), 0.0) for t in tar_rows])
        # 0.5 % of what can be taken: of select.hours, or of all the data when it holds less
        chosen = sel.choose_tars(avail, quota_all, tar_density, tar_rows, cfg.max_tars,
                                 tolerance=0.005 * float(quota_all.sum()))
        avail_chosen = avail[chosen].sum(axis=0)
        quota = sel.water_fill(shares, avail_chosen, cfg.hours)
        in_tars = elig_idx[np.isin(tar[elig_idx], tar_rows[chosen])]
        cf, cs, cr, sc, _ = _capped_candidates(segs, in_tars, duration_s, density, tar, cfg,
                                               max_file, max_tar)
        cl = lang_num[cf]

        # 5. chunks per language (largest remainder), best-scored first
        cap = np.round(avail_chosen / chunk_h).astype(np.int64)
        target_chunks = int(round(cfg.hours / chunk_h))
        n_chunks = sel.largest_remainder(quota / chunk_h, target_chunks, cap)
        pick = np.zeros(len(cf), dtype=bool)
        for k in range(len(languages)):
            rows = np.flatnonzero(cl == k)
            if n_chunks[k] and len(rows):
                best = rows[np.argsort(-sc[rows], kind="stable")[:n_chunks[k]]]
                pick[best] = True
        n_chosen_tars = len(chosen)
        within_limit_h = float(avail_chosen.sum())
    pf, ps, pr = cf[pick], cs[pick], cr[pick]
    plang = lang[pf]

    # 6. held-out files: the evaluation set first, then validation from the other files
    w = np.full(len(pf), chunk_h)
    held_eval = sel.hold_out_files(pf, plang, w, cfg.eval_fraction, np.random.default_rng([cfg.seed, 2]))
    valid = sel.hold_out_files(pf, plang, w, cfg.valid_fraction, np.random.default_rng([cfg.seed, 1]),
                               exclude=held_eval)
    split = np.where(held_eval, "eval", np.where(valid, "valid", "train"))
    keys = files["key"].take(pa.array(pf)) if len(pf) else pa.array([], pa.string())
    out = pa.table({
        "tar": pa.array(tar[pf].astype(np.int32)), "key": keys, "start_s": pa.array(ps),
        "end_s": pa.array(ps + cfg.chunk_seconds), "language": pa.array(plang.tolist(), pa.string()),
        "split": pa.array(split.tolist(), pa.string()), "speech_ratio": pa.array(pr),
        "file_duration_s": pa.array(duration_s[pf]),
    })
    out = out.take(pc.sort_indices(out, sort_keys=[("tar", "ascending"), ("key", "ascending"),
                                                   ("start_s", "ascending")]))
    out = out.add_column(0, "chunk_id", pa.array(np.arange(len(out), dtype=np.int64))).cast(CHUNKS_SCHEMA)

    sel_tars = np.unique(tar[pf])
    sel_files = np.unique(pf)
    member_bytes = float(file_bytes[sel_files].sum())
    tar_dur = dict(zip(tars_tbl["tar"].to_pylist(), tars_tbl["duration_s"].to_pylist(), strict=True))
    dl_seconds = float(sum(tar_dur.get(int(t), 0.0) for t in sel_tars))
    hours_sel = len(pf) * chunk_h
    per_lang_before = {x: float(speech_s[eligible & (lang == x)].sum() / 3600) for x in languages}
    per_lang_after = {x: float((plang == x).sum() * chunk_h) for x in languages}
    split_hours = {s: float((split == s).sum() * chunk_h) for s in SPLITS}
    per_lang = {x: {"table_hours": float(n_l[k]), "share": float(shares[k]),
                    "hours_before": per_lang_before[x], "available_hours": float(avail[:, k].sum()),
                    "hours_after": per_lang_after[x],
                    **{f"{s}_hours": float(((plang == x) & (split == s)).sum() * chunk_h) for s in SPLITS},
                    **{f"{s}_files": int(len(np.unique(pf[(plang == x) & (split == s)]))) for s in SPLITS}}
                for k, x in enumerate(languages)}
    whole_chunks = np.floor(duration_s[eligible] / cfg.chunk_seconds + 1e-9) * cfg.chunk_seconds
    limits = {"eligible_hours": float(whole_chunks.sum() / 3600),
              "eligible_speech_hours": float(speech_s[eligible].sum() / 3600),
              "candidate_hours": n_candidates * chunk_h, "after_caps_hours": n_after_caps * chunk_h,
              "within_download_limit_hours": within_limit_h}
    short = shortfall(cfg, hours_sel, limits, n_chosen_tars, max_file, max_tar, filtered_h, fetch,
                      budget["scale"] if budget is not None else 1.0)
    if short is not None:
        log.warning("select: %s", short["reason"])
    with atomic_dir(out_dir) as tmp:
        pq.write_table(out, tmp / "chunks.parquet")
        _chart(tmp / "hours_per_language.png", languages, per_lang_before, per_lang_after)
        write_report(
            tmp / "report.json", stage="select", config=cfg, skips=skips,
            target_hours=cfg.hours, selected_hours=hours_sel, n_chunks=len(out),
            selected_hours_note="hours of chunks chosen from the indices; prepare-audio's report "
                                "states the hours written and why they differ",
            target_reached_within_1pct=short is None, shortfall=short,
            shortfall_reason=None if short is None else short["reason"],
            split_hours=split_hours, valid_hours=split_hours["valid"],
            n_files=int(len(np.unique(pf))),
            n_tars=int(len(sel_tars)), tars=[int(t) for t in sel_tars],
            download_audio_hours=dl_seconds / 3600,
            download_bytes_estimate=int(dl_seconds * cfg.mp3_bytes_per_second),
            download={
                "fetch": fetch,
                "members": {"bytes_estimate": int(member_bytes), "n_files": int(len(sel_files)),
                            "n_tars": int(len(sel_tars)),
                            "audio_hours": float(duration_s[sel_files].sum() / 3600)},
                "tars": {"bytes_estimate": int(dl_seconds * cfg.mp3_bytes_per_second),
                         "n_tars": int(len(sel_tars)), "audio_hours": dl_seconds / 3600},
                "limit": ({"max_download_gb": cfg.max_download_gb,
                           "budget_bound": bool(budget["scale"] < 1.0),
                           "hours_scale": float(budget["scale"])} if budget is not None
                          else {"max_tars": cfg.max_tars}),
            },
            n_candidates=n_candidates, n_candidates_after_caps=int(n_after_caps),
            max_chunks_per_file=max_file, max_chunks_per_tar=max_tar,
            languages_chosen=languages, languages=per_lang,
            language_shares=dict(zip(languages, shares.tolist(), strict=True)),
            language_hours_table=dict(zip(languages, n_l.tolist(), strict=True)),
            unlisted_languages=unlisted, unlisted_scale=unlisted_scale,
            language_hours_computed=computed,
            hours_before=per_lang_before, hours_after=per_lang_after,
            join_coverage=coverage,
        )
    skips.log_summary()
    elapsed = time.perf_counter() - t0  # logged only: a clock value in report.json breaks reruns
    log.info("select: %d chunks, %.2f h (train %.2f, valid %.2f, eval %.2f), %d tars, %.1f s", len(out),
             hours_sel, split_hours["train"], split_hours["valid"], split_hours["eval"], len(sel_tars),
             elapsed)
    return {"n_chunks": len(out), "hours": hours_sel, "n_tars": int(len(sel_tars)),
            "elapsed_s": elapsed}


def _chart(path: Path, languages: list[str], before: dict, after: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ups.atomic import atomic_write

    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(languages) + 2), 4))
    x = np.arange(len(languages))
    ax.bar(x - 0.2, [before[k] for k in languages], 0.4, label="eligible speech (before)")
    ax.bar(x + 0.2, [after[k] for k in languages], 0.4, label="selected chunks (after)")
    ax.set_yscale("symlog", linthresh=0.01)
    ax.set_xticks(x, languages, rotation=90)
    ax.set_ylabel("hours")
    ax.legend()
    fig.tight_layout()
    with atomic_write(path, "wb") as fh:
        fig.savefig(fh, format="png", dpi=80)
    plt.close(fig)
