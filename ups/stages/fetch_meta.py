"""fetch-meta: copy the dataset's two metadata files into `out_dir`, verified, with a report.

Fetches `fetch_meta.vad_file` and `fetch_meta.lid_file` through `ups.dataset` (a local mirror or
the hub at a pinned revision). Each file is resumable (`<file>.partial`, continued with an HTTP
Range request after a kill), checked against the source's size and sha256, and renamed into place
only then. `out_dir/fetch_meta.json` records where the files came from (source, repo, requested
and resolved revision) and their sizes and sha256; never the token.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from ups.config import DatasetConfig, FetchMetaConfig
from ups.dataset import Dataset, open_dataset
from ups.progress import bar
from ups.stage_report import write_report

log = logging.getLogger(__name__)

REPORT_NAME = "fetch_meta.json"


def run(cfg: FetchMetaConfig, ds: DatasetConfig, out_dir: Path, *,
        dataset: Dataset | None = None) -> dict[str, Any]:
    """Fetch both files into `out_dir`; returns the report body. `dataset` overrides `ds` (tests)."""
    out_dir = Path(out_dir)
    source = dataset or open_dataset(ds)
    where = source.describe()
    log.info("fetch-meta: %s -> %s", where, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    files: dict[str, Any] = {}
    for name in bar([cfg.vad_file, cfg.lid_file], desc="fetch-meta", unit="file"):
        meta = source.fetch_file(name, out_dir / name)
        files[name] = {"size": meta.size, "sha256": meta.sha256}
        log.info("fetch-meta: %s: %d bytes, sha256 %s", name, meta.size, meta.sha256)
    body: dict[str, Any] = {"dataset": where, "files": files}
    write_report(out_dir / REPORT_NAME, stage="fetch-meta",
                 config={"fetch_meta": asdict(cfg), "dataset": asdict(ds)},
                 dataset=where, files=files)
    log.info("fetch-meta: done (%d files, %.1f MB)", len(files),
             sum(f["size"] for f in files.values()) / 1e6)
    return body
