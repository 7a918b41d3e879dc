"""The figures of select's report: per-language hours, the download both ways, and when the
target is missed, the limit that binds (`shortfall`). Pure functions of the selection's arrays,
so the stage only gathers them; `chart` draws the per-language bar chart."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ups.config import SelectConfig

SPLITS = ("train", "valid", "eval")
HEADER_READ_BYTES = 2048  # one ranged read of a tar header (ups/member_index.py WINDOW)


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


def language_figures(languages: list[str], table_hours: np.ndarray, shares: np.ndarray,
                     avail_hours: np.ndarray, hours_before: dict[str, float], file: np.ndarray,
                     language: np.ndarray, split: np.ndarray, chunk_h: float) -> dict[str, dict]:
    """Per language: table hours, share, eligible speech before, capped candidate hours, hours
    after and the hours and files of each split (`file`, `language`, `split`: per chosen chunk)."""
    out = {}
    for k, x in enumerate(languages):
        mine = language == x
        out[x] = {"table_hours": float(table_hours[k]), "share": float(shares[k]),
                  "hours_before": hours_before[x], "available_hours": float(avail_hours[:, k].sum()),
                  "hours_after": float(mine.sum() * chunk_h),
                  **{f"{s}_hours": float((mine & (split == s)).sum() * chunk_h) for s in SPLITS},
                  **{f"{s}_files": int(len(np.unique(file[mine & (split == s)]))) for s in SPLITS}}
    return out


def header_walk(files_per_tar: np.ndarray) -> dict[str, Any]:
    """What index-members' header walk of tars holding these many members costs at most (a walk
    stops after its last selected member): one ranged read per member header and one for the
    end-of-archive blocks, HEADER_READ_BYTES each; the longest tar's reads come one after another."""
    requests = int(np.sum(files_per_tar)) + len(files_per_tar)
    return {"requests_estimate": requests, "bytes_estimate": requests * HEADER_READ_BYTES,
            "members_per_tar": float(np.mean(files_per_tar)) if len(files_per_tar) else 0.0,
            "max_tar_requests": int(np.max(files_per_tar)) + 1 if len(files_per_tar) else 0,
            "how": "one ranged read per file of each tar (files per tar from tars.parquet) "
                   "plus one for the end of the archive"}


def download_figures(file: np.ndarray, tar: np.ndarray, duration_s: np.ndarray,
                     tars_index: dict[int, tuple[float, int]], bytes_per_s: float, fetch: str,
                     limit: dict[str, Any]) -> dict[str, Any]:
    """The bytes to fetch for the chosen chunks both ways, estimated from durations: member by
    member (the chosen files) and tar by tar (their whole tars; duration and files per tar from
    tars.parquet, `tars_index`). Member fetches add the header walk of the tars touched."""
    files = np.unique(file)
    tars = np.unique(tar[file])
    tar_s = float(sum(tars_index.get(int(t), (0.0, 0))[0] for t in tars))
    member_bytes = float((duration_s * bytes_per_s)[files].sum())
    members: dict[str, Any] = {"bytes_estimate": int(member_bytes), "n_files": int(len(files)),
                               "n_tars": int(len(tars)),
                               "audio_hours": float(duration_s[files].sum() / 3600)}
    if fetch == "members":
        members["header_walk"] = header_walk(np.array([tars_index.get(int(t), (0.0, 0))[1]
                                                       for t in tars], dtype=np.int64))
    return {
        "n_files": int(len(files)), "n_tars": int(len(tars)), "tars": [int(t) for t in tars],
        "download_audio_hours": tar_s / 3600,
        "download_bytes_estimate": int(tar_s * bytes_per_s),
        "download": {
            "fetch": fetch,
            "members": members,
            "tars": {"bytes_estimate": int(tar_s * bytes_per_s), "n_tars": int(len(tars)),
                     "audio_hours": tar_s / 3600},
            "limit": limit,
        },
    }


def chart(path: Path, languages: list[str], before: dict, after: dict) -> None:
    """Bar chart of eligible speech hours before and selected hours after, per language."""
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
