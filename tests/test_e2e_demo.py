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
    # the demo's label set (tiny random model: MFCC, first iteration) is named beside its figures
    assert (evaluation["label_set"]["kind"], evaluation["label_set"]["n_clusters"]) == ("mfcc", 25)
    assert evaluation["label_set"]["init_masked_acc"] is not None
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


@pytest.mark.e2e
@pytest.mark.slow
def test_make_iterate_relabels_from_the_continued_model_and_trains_again(demo_run, tmp_path):
    """The second iteration on the demo (MFCC labels, tiny model): `make iterate` clusters layer 2
    of the continued tiny model (kind hubert end to end), trains from it, evaluates; no re-decoding."""
    import shutil

    run_dir, first = demo_run
    assert first.returncode == 0, first.stderr[-3000:]
    work = tmp_path / "demo"
    shutil.copytree(run_dir, work, symlinks=True)
    iteration_1 = json.loads((work / "models/hubert-cpt/training.json").read_text())
    cheap = "train.max_steps=4 evaluate.layers=[2] evaluate.max_probe_chunks=24 evaluate.head_fit_steps=10"
    proc = subprocess.run(["make", "--no-print-directory", "iterate", f"RUN_DIR={work}", f"SET={cheap}",
                           f"VENV={Path(sys.executable).parent.parent}"],
                          cwd=REPO, capture_output=True, text=True, timeout=1200)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]
    ran = {line.split("'")[1] for line in log.splitlines() if line.startswith("Running stage")}
    assert ran == {"fit-kmeans", "assign-labels", "train", "evaluate"}, ran  # audio decoded once

    (snap,) = (work / "models" / "iter").iterdir()
    weights = "model.safetensors"
    assert (snap / weights).read_bytes() != (work / "models/hubert-cpt" / weights).read_bytes()
    with np.load(work / "data/kmeans/model.npz", allow_pickle=False) as z:
        assert str(z["kind"]) == "hubert" and int(z["layer"]) == 2
        assert str(z["hubert_model"]) == f"models/iter/{snap.name}"
        assert z["centroids"].shape == (25, 32)  # tiny model: 32 dims
    iteration_2 = json.loads((work / "models/hubert-cpt/training.json").read_text())
    assert iteration_1["init"] == "tiny" and iteration_2["init"] == f"models/iter/{snap.name}"
    assert iteration_2["labels_sha256"] != iteration_1["labels_sha256"]
    evaluation = json.loads((work / "reports/evaluate/metrics.json").read_text())
    label_set = evaluation["label_set"]
    assert (label_set["kind"], label_set["layer"], label_set["n_clusters"]) == ("hubert", 2, 25)
    assert label_set["hubert_model"] == f"models/iter/{snap.name}"
    assert 0 <= label_set["init_masked_acc"] <= 1 and label_set["mi_cluster_language_bits"] >= 0
