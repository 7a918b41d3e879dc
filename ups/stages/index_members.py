"""index-members: where the selected members of each selected tar lie, from the tar headers alone.

For each tar that `chunks.parquet` names, the tar's headers are walked over ranged reads
(`ups/member_index.py`: one small request per member, no member data) up to the last selected
member, and the layout is written to `<out_dir>/<tar:06d>.parquet` (tar, member name, key, data
and header offsets, size, skip reason; where the walk stopped). `dataset.header_walks` tars are
walked at once (`ups/header_walk.py`: one async client on the hub). An index is read once: a
rerun, or a later selection that names the same tar, keeps a stored index while it describes the
same tar (size and sha256 at the run's commit on the hub; size, mtime and ctime on a mirror), and
continues it from where it stopped when the new selection wants members beyond; the directory is
a persistent DVC output, so `dvc push` / `dvc pull` share it between machines. A tar whose walk
ends at damage (truncated, a header that does not parse, not a tar) is stored with that status and
counted; prepare-audio then fetches that tar whole. `report.json` gives, for the selection, the
bytes to fetch member by member and tar by tar, and what the header walks cost.
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ups import member_index
from ups.atomic import clear_stale_tmp
from ups.config import DatasetConfig
from ups.skips import Skips
from ups.stage_report import write_report

log = logging.getLogger(__name__)

STAGE = "index-members"


def selected_keys(chunks: Path) -> dict[int, set[str]]:
    """tar -> normalised keys of the files holding selected chunks."""
    t = pq.read_table(chunks, columns=["tar", "key"])
    out: dict[int, set[str]] = defaultdict(set)
    for tar, key in zip(t.column("tar").to_pylist(), t.column("key").to_pylist(), strict=True):
        out[int(tar)].add(key)
    return dict(sorted(out.items()))


def run(dataset: DatasetConfig, *, chunks: Path, fetch_meta: Path, out_dir: Path) -> dict[str, Any]:
    from ups.dataset import DatasetError, open_dataset, pinned_config
    from ups.header_walk import WalkJob, walk_tars

    dataset = pinned_config(dataset, fetch_meta)
    wanted = selected_keys(chunks)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    clear_stale_tmp(out_dir)
    ds = open_dataset(dataset)
    idents = ds.tar_identities(wanted)  # the hub answers 50 tars per metadata request
    indices: dict[int, member_index.MemberIndex] = {}
    jobs: list[WalkJob] = []
    for t, keys in wanted.items():
        stored = member_index.stored_for(out_dir, t, idents[t])
        if stored is not None and stored.covers(keys):
            indices[t] = stored
        else:
            jobs.append(WalkJob(t, idents[t], frozenset(keys), stored))
    log.info("%s: %d tars, %d indexed already, %d to walk (%d continued), %d at a time", STAGE,
             len(wanted), len(indices), len(jobs), sum(j.resume is not None for j in jobs),
             dataset.header_walks)
    walked, errors = walk_tars(ds, jobs, walks=dataset.header_walks, desc=STAGE,
                               save=lambda index: member_index.write(index, out_dir))
    indices.update(walked)
    if errors:
        first = min(errors)
        raise DatasetError(f"{STAGE}: {len(errors)} of {len(wanted)} tar(s) could not be indexed "
                           f"(rerun to continue: indexed tars and walks in progress are kept); "
                           f"{ds.describe_tar(first)}: {errors[first]}")
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
             "tar by tar", STAGE, len(indices), len(walked), len(indices) - len(walked),
             summary["download"]["members"]["bytes"] / 1e9, summary["download"]["tars"]["bytes"] / 1e9)
    return {**summary, "walked_now": len(walked)}


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
                        "bytes": sum(indices[t].bytes_read for t in wanted),
                        "members_seen": sum(indices[t].members_seen for t in wanted),
                        "tars_walked_to_the_end": sum(indices[t].complete for t in wanted)},
    }
