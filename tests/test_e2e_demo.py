"""End to end through the CLI: `ups demo` runs every stage on the bundled sample corpus."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_demo_runs_every_stage_then_is_a_no_op(demo_run):
    params_before = (REPO / "params.yaml").read_bytes()
    run_dir, first = demo_run
    cmd = [sys.executable, "-m", "ups", "demo", "--run-dir", str(run_dir)]
    assert first.returncode == 0, first.stderr[-3000:]
    assert "model:" in first.stdout and "metrics:" in first.stdout
    assert "selected of 0.45 asked;" in first.stdout and "not written:" in first.stdout

    chunks = pq.read_table(run_dir / "data/select/chunks.parquet").to_pylist()
    assert {c["split"] for c in chunks} == {"train", "valid", "eval"}
    assert "nospeech" not in {c["language"] for c in chunks}
    split_of: dict = {}
    for c in chunks:
        split_of.setdefault((c["tar"], c["key"]), set()).add(c["split"])
    assert all(len(s) == 1 for s in split_of.values())  # no file in two splits

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
    assert evaluation["probe"]["n_languages_test"] >= 2 and evaluation["probe"]["n_files_test"] >= 2
    assert set(evaluation["probe_training_files"]) >= {"init", "continued", "mfcc"}
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
