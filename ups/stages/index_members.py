"""index-members: where every member of each selected tar lies, from the tar headers alone.

For each tar that `chunks.parquet` names, the tar's headers are walked over ranged reads
(`ups/member_index.py`: one small request per member, no member data) and the layout is written to
`<out_dir>/<tar:06d>.parquet` (tar, member name, key, data offset, size, skip reason). An index is
read once: a rerun, or a later selection that names the same tar, keeps a stored index while it
describes the same tar (size and sha256 at the run's commit on the hub; size and mtime on a
mirror); the directory is a persistent DVC output, so `dvc push` shares it. A tar whose walk ends
at damage (truncated, a header that does not parse, not a tar) is stored with that status and
counted; prepare-audio then fetches that tar whole. `report.json` gives, for the selection, the
bytes to fetch member by member and tar by tar, and what the header walks cost.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ups import member_index
from ups.atomic import clear_stale_tmp
from ups.config import DatasetConfig
from ups.progress import bar
from ups.report import Skips, write_report

log = logging.getLogger(__name__)

STAGE = "index-members"
WALKS_PER_WORKER = 4  # tars walked at once per dataset.download_workers (16 by default)


def selected_keys(chunks: Path) -> dict[int, set[str]]:
    """tar -> normalised keys of the files holding selected chunks."""
    t = pq.read_table(chunks, columns=["tar", "key"])
    out: dict[int, set[str]] = defaultdict(set)
    for tar, key in zip(t.column("tar").to_pylist(), t.column("key").to_pylist(), strict=True):
        out[int(tar)].add(key)
    return dict(sorted(out.items()))


def run(dataset: DatasetConfig, *, chunks: Path, fetch_meta: Path, out_dir: Path) -> dict[str, Any]:
    from ups.dataset import DatasetError, DownloadError, open_dataset, pinned_config

    dataset = pinned_config(dataset, fetch_meta)
    wanted = selected_keys(chunks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_tmp(out_dir)
    ds = open_dataset(dataset)
    ds.tar_sizes(wanted)  # the hub answers 50 tars per metadata request
    indices: dict[int, member_index.MemberIndex] = {}
    errors: dict[int, str] = {}
    walked = 0
    # header reads are small and latency-bound: WALKS_PER_WORKER walks per download worker
    with ThreadPoolExecutor(max_workers=WALKS_PER_WORKER * dataset.download_workers) as pool:
        futures = {pool.submit(member_index.for_tar, ds, t, out_dir, save=True): t for t in wanted}
        for fut in bar(as_completed(futures), desc=STAGE, unit="tar", total=len(futures)):
            t = futures[fut]
            try:
                indices[t], now = fut.result()
            except (DatasetError, DownloadError, OSError) as exc:
                errors[t] = str(exc)
                continue
            walked += now
    if errors:
        first = min(errors)
        raise DatasetError(f"{STAGE}: {len(errors)} of {len(wanted)} tar(s) could not be indexed "
                           f"(rerun to continue; indexed tars are kept); tar {first}: {errors[first]}")
    summary = summarize(indices, wanted)
    skips = Skips(STAGE)
    for t, idx in sorted(indices.items()):
        if not idx.ok:
            skips.add(f"tar_{idx.status}", f"{t:06d}: {idx.reason}")
    where = ({"source": "hub", "repo_id": dataset.repo_id, "revision": dataset.revision}
             if dataset.source == "hub" else {"source": "local", "local_root": dataset.local_root})
    write_report(out_dir / "report.json", stage=STAGE, config={"dataset": where}, skips=skips,
                 chunks_sha256=hashlib.sha256(Path(chunks).read_bytes()).hexdigest(), **summary)
    skips.log_summary()
    log.info("%s: %d tars (%d walked now, %d kept); fetch %.3f GB member by member vs %.3f GB "
             "tar by tar", STAGE, len(indices), walked, len(indices) - walked,
             summary["download"]["members"]["bytes"] / 1e9, summary["download"]["tars"]["bytes"] / 1e9)
    return {**summary, "walked_now": walked}


def summarize(indices: dict[int, member_index.MemberIndex], wanted: dict[int, set[str]]) -> dict[str, Any]:
    """Bytes of the selection both ways: member fetches (whole tar where the index is not ok)
    and whole tars; the header walks' requests and bytes; statuses."""
    member_bytes = tar_bytes = n_members = missing = 0
    status: Counter[str] = Counter()
    for t, keys in wanted.items():
        idx = indices[t]
        status[idx.status] += 1
        tar_bytes += idx.tar_size
        if idx.ok:
            found = {e.key for e in idx.entries if e.skip is None and e.key in keys}
            missing += len(keys - found)
            n_members += len(found)
            member_bytes += idx.member_bytes(keys)
        else:
            member_bytes += idx.tar_size
    return {
        "n_tars": len(wanted), "status": dict(sorted(status.items())),
        "download": {
            "members": {"bytes": member_bytes, "n_members": n_members, "n_tars": len(wanted),
                        "whole_tars_fallback": sum(not indices[t].ok for t in wanted)},
            "tars": {"bytes": tar_bytes, "n_tars": len(wanted)},
        },
        "selected_files_not_in_their_tar": missing,
        "header_walk": {"requests": sum(indices[t].requests for t in wanted),
                        "bytes": sum(indices[t].bytes_read for t in wanted)},
    }
