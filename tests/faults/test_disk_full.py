"""Disk full during a write: a clear error, no partial artifact trusted, and a rerun succeeds.

Real: the stage's project sits on a small tmpfs (mounted for the test; CI runs as root) sized so
the stage runs out of space part way; then the tmpfs grows and the rerun must give the reference
bytes. Injected: `ups.atomic` writes raise ENOSPC after a byte budget (in-process, no mount).
"""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest

from tests.faults.harness import compare_outputs, copy_inputs, output_files, run_stage
from ups import atomic
from ups.config import AssignLabelsConfig, FeaturesConfig, KmeansConfig, load_section
from ups.stages import assign_labels, fit_kmeans

PAGE = 4096


def _mount(path: Path, size: int) -> None:
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True,
                   capture_output=True)


def _resize(path: Path, size: int) -> None:
    subprocess.run(["mount", "-o", f"remount,size={size}", str(path)], check=True, capture_output=True)


def _used(path: Path) -> int:
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize


@pytest.fixture
def tmpfs(tmp_path):
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    try:
        _mount(mnt, 256 << 20)
    except (subprocess.CalledProcessError, FileNotFoundError) as exc:
        pytest.skip(f"cannot mount a tmpfs here ({exc}); the injected-ENOSPC tests still run")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def _disk_full(reference, tmpfs: Path, figures, stage: str, headroom: int) -> None:
    root = copy_inputs(reference.root, tmpfs / "p", stage)
    _resize(tmpfs, _used(tmpfs) + headroom)
    res = run_stage(root, stage)
    figures.fault(f"disk_full_{stage}")
    assert res.returncode != 0, f"{stage} fit in {headroom} bytes: make the headroom smaller"
    # the last lines name the cause and the file (numpy's short write says neither by itself)
    tail = "\n".join(res.stderr.strip().splitlines()[-3:])
    assert "No space left on device" in tail or "disk full while writing" in tail, tail
    leftovers = [p.name for p in root.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == [], leftovers
    _resize(tmpfs, 256 << 20)  # space comes back
    res = run_stage(root, stage)
    assert res.returncode == 0, res.stderr[-3000:]
    assert compare_outputs(reference.root, root, stage) == []


@pytest.mark.slow
@pytest.mark.parametrize(("stage", "headroom"), [("prepare-audio", 3 << 20), ("assign-labels", 8 * PAGE)])
def test_real_tmpfs_fills_up_ci(reference, tmpfs, figures, stage, headroom):
    _disk_full(reference, tmpfs, figures, stage, headroom)


@pytest.mark.stress
@pytest.mark.parametrize(("stage", "headroom"), [
    (s, h) for s in ("prepare-audio",) for h in (PAGE, 1 << 20, 6 << 20, 10 << 20)
] + [("fit-kmeans", 0), ("fit-kmeans", PAGE), ("assign-labels", 0), ("assign-labels", 4 * PAGE),
     ("fetch-meta", 8 * PAGE), ("index-vad", 4 * PAGE), ("select", PAGE)])
def test_real_tmpfs_fills_up(reference, tmpfs, figures, stage, headroom):
    _disk_full(reference, tmpfs, figures, stage, headroom)


@pytest.mark.stress
def test_real_tmpfs_fills_up_during_train(reference_trained, tmpfs, figures):
    _disk_full(reference_trained, tmpfs, figures, "train", 200 * 1024)


# --- injected ENOSPC ---------------------------------------------------------------------------

class _Budget:
    """A file wrapper whose writes fail with ENOSPC once `left` bytes have been written."""

    def __init__(self, fh, budget: list[int]) -> None:
        self._fh, self._budget = fh, budget

    def write(self, data) -> int:
        n = len(memoryview(data).cast("B"))
        if self._budget[0] < n:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        self._budget[0] -= n
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return self._fh.__exit__(*exc)


def _run_kmeans_and_labels(root: Path) -> None:
    params = root / "params.yaml"
    feats = load_section(FeaturesConfig, "features", params)
    fit_kmeans.run(load_section(KmeansConfig, "kmeans", params), feats,
                   features_dir=root / "data/features", audio_dir=root / "data/audio",
                   out_dir=root / "data/kmeans")
    assign_labels.run(load_section(AssignLabelsConfig, "assign_labels", params), feats,
                      model=root / "data/kmeans/model.npz", features_dir=root / "data/features",
                      audio_dir=root / "data/audio", chunks=root / "data/select/chunks.parquet",
                      out_dir=root / "data/labels")


@pytest.mark.identity
@pytest.mark.parametrize("budget", [0, 3000, 40_000])
def test_injected_enospc_in_atomic_writes(reference, tmp_path, monkeypatch, figures, budget):
    root = copy_inputs(reference.root, tmp_path / "p", "fit-kmeans")
    real_fdopen = os.fdopen
    left = [budget]
    monkeypatch.setattr(atomic.os, "fdopen", lambda fd, mode="r", *a, **k:
                        _Budget(real_fdopen(fd, mode, *a, **k), left))
    with pytest.raises(OSError) as info:
        _run_kmeans_and_labels(root)
    figures.fault("injected_enospc")
    assert info.value.errno == errno.ENOSPC
    assert any("disk full while writing" in n for n in getattr(info.value, "__notes__", []))
    assert not [p for p in root.rglob("*.tmp")]
    monkeypatch.undo()
    for stage in ("fit-kmeans", "assign-labels"):  # whatever landed is complete and correct
        for name, p in output_files(root, stage).items():
            if not name.endswith(".json"):
                assert p.read_bytes() == (reference.root / name).read_bytes(), name
    _run_kmeans_and_labels(root)
    assert compare_outputs(reference.root, root, "fit-kmeans") == []
    assert compare_outputs(reference.root, root, "assign-labels") == []
