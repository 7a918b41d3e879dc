"""Kill tests: SIGKILL a long stage at random moments, rerun it, compare with an uninterrupted run.

Each stage runs as a real subprocess (`python -m ups <stage>`) in a copy of the reference project
taken just before that stage. A kill point is either a random delay after the start (drawn, seeded,
from 30-95 % of the stage's uninterrupted wall time) or a random delay after the stage's first
completion record appears (so the kill lands between units of work). After the rerun, every output
file must equal the reference's byte for byte (JSON reports up to their wall-clock timings).

CI runs one kill point per stage (train: none here, see tests/stages/test_train.py); `make stress`
runs several per stage, train and fetch-meta included, and records the figures.
"""

from __future__ import annotations

import random

import pytest
from hub_server import REPO_ID, SHA, HubServer, HubState, payload

from tests.faults.harness import Reference, compare_outputs, kill_and_resume, run_stage, write_params

# the first completion record of each stage: a kill after it interrupts a run that has done work
MARKERS = {
    "prepare-audio": "data/audio/_done/*.done.json",
    "fit-kmeans": "data/kmeans/*",
    "assign-labels": "data/labels/*",
    "train": "data/train/state/step-*/done.json",
}
STRESS_RANDOM, STRESS_MARKER = 4, 2


def _points(stage: str, n_random: int, n_marker: int, seed: int) -> list:
    rng = random.Random(f"{stage}-{seed}")
    pts = [("time", rng.uniform(0.3, 0.95)) for _ in range(n_random)]
    pts += [("marker", rng.uniform(0.0, 1.0)) for _ in range(n_marker)]
    return pts


def _kill(ref: Reference, tmp_path, figures, stage: str, trigger: str, x: float) -> None:
    if trigger == "time":
        r = kill_and_resume(ref, tmp_path / "p", stage, x * ref.seconds[stage])
    else:
        r = kill_and_resume(ref, tmp_path / "p", stage, x, after_glob=MARKERS[stage])
    figures.kill_point(r, trigger)
    assert r.same, r.diff


CI = [("prepare-audio", "marker", 0.2), ("fit-kmeans", "time", 0.8), ("assign-labels", "time", 0.9)]


@pytest.mark.identity
@pytest.mark.slow
@pytest.mark.parametrize(("stage", "trigger", "x"), CI)
def test_kill_point_ci(reference, tmp_path, figures, stage, trigger, x):
    _kill(reference, tmp_path, figures, stage, trigger, x)


STRESS = [(s, t, x) for s in ("prepare-audio", "fit-kmeans", "assign-labels")
          for t, x in _points(s, STRESS_RANDOM, STRESS_MARKER, 0)]


@pytest.mark.stress
@pytest.mark.parametrize(("stage", "trigger", "x"), STRESS)
def test_kill_point(reference, tmp_path, figures, stage, trigger, x):
    _kill(reference, tmp_path, figures, stage, trigger, x)


@pytest.mark.stress
@pytest.mark.parametrize(("trigger", "x"), _points("train", 3, STRESS_MARKER, 0))
def test_kill_point_train(reference_trained, tmp_path, figures, trigger, x):
    _kill(reference_trained, tmp_path, figures, "train", trigger, x)


# --- fetch-meta: a download trickling from the local hub stand-in ------------------------------

VAD, LID = "vad_results.jsonl", "lang_id_results.jsonl"


def _fetch_project(root):
    write_params(root, dataset={"source": "hub", "revision": SHA, "repo_id": REPO_ID})
    return root


def _fetch_meta_kill(tmp_path, figures, frac: float) -> None:
    from tests.faults.harness import KillResult

    files = {VAD: payload(1_200_000, 7), LID: payload(50_000, 8)}
    state = HubState(REPO_ID, files)
    with HubServer(state) as url:
        env = {"HF_ENDPOINT": url}
        ref = Reference(_fetch_project(tmp_path / "ref"))
        res = run_stage(ref.root, "fetch-meta", env)
        assert res.returncode == 0, res.stderr[-2000:]
        state.rate_bytes_per_s = 1_000_000  # ~1.3 s of transfer to kill into
        ref.seconds["fetch-meta"] = 1.3
        work = tmp_path / "work"
        work.mkdir()
        r = kill_and_resume(ref, work / "p", "fetch-meta", frac * 1.3 + 0.5, env=env)
    figures.kill_point(KillResult(r.stage, r.delay_s, r.killed, r.had_output, r.same, r.diff),
                       "time")
    assert r.same, r.diff
    assert compare_outputs(ref.root, work / "p", "fetch-meta") == []


def test_fetch_meta_kill_ci(tmp_path, figures):
    _fetch_meta_kill(tmp_path, figures, 0.5)


@pytest.mark.stress
@pytest.mark.parametrize("frac", [random.Random(f"fetch-{i}").uniform(0.1, 0.95) for i in range(5)])
def test_fetch_meta_kill(tmp_path, figures, frac):
    _fetch_meta_kill(tmp_path, figures, frac)


def test_rerun_after_a_kill_mid_write_leaves_no_temporaries(reference, tmp_path):
    """Regression (found by the stress kills): assign-labels killed inside `np.save` left
    `train/.chunk_ids.npy.<rand>.tmp`, and the rerun kept it, so data/labels differed from an
    uninterrupted run (and DVC would hash it into the output)."""
    from tests.faults.harness import copy_inputs

    for stage, out in (("assign-labels", "data/labels/train"), ("fit-kmeans", "data/kmeans")):
        root = copy_inputs(reference.root, tmp_path / stage, stage)
        (root / out).mkdir(parents=True)
        (root / out / ".labels.npy.k1ll3d.tmp").write_bytes(b"\x93NUMPY half")
        res = run_stage(root, stage)
        assert res.returncode == 0, res.stderr[-2000:]
        assert compare_outputs(reference.root, root, stage) == [], stage
