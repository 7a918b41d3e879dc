"""End to end through the CLI: `ups demo` runs every stage on the bundled sample corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from tests.conftest import corrupt_cache_objects, linked_to_cache
from ups import du

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_stage_then_is_a_no_op(demo_run):
    params_before = (REPO / "params.yaml").read_bytes()
    run_dir, first = demo_run
    cmd = [sys.executable, "-m", "ups", "demo", "--run-dir", str(run_dir)]
    assert first.returncode == 0, first.stderr[-3000:]
    assert "model:" in first.stdout and "metrics:" in first.stdout

    chunks = pq.read_table(run_dir / "data/select/chunks.parquet").to_pylist()
    assert {c["split"] for c in chunks} == {"train", "valid"}
    assert "nospeech" not in {c["language"] for c in chunks}
    train_keys = {c["key"] for c in chunks if c["split"] == "train"}
    assert not train_keys & {c["key"] for c in chunks if c["split"] == "valid"}

    audio_report = json.loads((run_dir / "data/audio/report.json").read_text())
    assert audio_report["skipped"]["counts"].get("corrupt_mp3", 0) <= 1  # only the planted one

    labels = np.load(run_dir / "data/labels/train/labels.npy", allow_pickle=False)
    offsets = np.load(run_dir / "data/labels/train/offsets.npy", allow_pickle=False)
    assert offsets[-1] == len(labels) and labels.min() >= 0

    metrics = json.loads((run_dir / "dvclive/metrics.json").read_text())
    assert metrics["step"] > 0 and np.isfinite(metrics["train"]["loss"])
    assert 0.3 < metrics["train"]["masked_fraction"] < 0.8  # masking really happened

    evaluation = json.loads((run_dir / "reports/evaluate/metrics.json").read_text())
    assert set(evaluation["probe"]) >= {"init", "continued", "mfcc"}
    assert (run_dir / "reports/report.html").stat().st_size > 10_000
    assert "report:" in first.stdout

    from transformers import HubertModel

    model = HubertModel.from_pretrained(run_dir / "models/hubert-cpt")
    assert model.config.num_hidden_layers >= 1

    second = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Data and pipelines are up to date" in second.stdout + second.stderr
    assert (REPO / "params.yaml").read_bytes() == params_before
    assert not (run_dir / "dvc.lock").read_text().count("hf_")  # no token-like string recorded


@pytest.mark.slow
def test_demo_outputs_are_stored_once(demo_run):
    """Shards, features and labels are links to their cache objects (cache.type hardlink,symlink),
    no stage wrote into one, and `ups du` counts each once."""
    run_dir, proc = demo_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = [p for d in ("data/audio", "data/features", "data/labels", "models/hubert-cpt")
             for p in sorted((run_dir / d).rglob("*")) if p.is_file()]
    assert len([p for p in files if p.suffix == ".tar"]) >= 3
    not_linked = [str(p.relative_to(run_dir)) for p in files if not linked_to_cache(run_dir, p)]
    assert not_linked == []
    assert corrupt_cache_objects(run_dir) == []
    rows = {r.name: r for r in du.collect(run_dir, run_dir / "params.yaml")}
    audio, cache = rows["prepare-audio"].apparent_bytes, rows["dvc cache"].apparent_bytes
    total = rows["total (links once)"].apparent_bytes
    assert audio and cache and total
    stages = sum(r.apparent_bytes or 0 for r in rows.values() if r.kind == "stage")
    # the outputs are inside the cache's bytes: the total is the cache plus what DVC keeps in git
    assert cache <= total < cache + 0.05 * stages
    assert "linked from the outputs" in rows["dvc cache"].note
