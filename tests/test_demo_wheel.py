"""`ups demo` from a built wheel, installed without `-e` into a fresh venv, as docker/Dockerfile does.

The wheel holds only the package; the venv reuses this venv's dependencies through a .pth line
(their pins are requirements.txt's, and nothing is downloaded), so the only ups it can import is
the one in its own site-packages.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"  # a copy: building in the checkout would leave build/ there
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    shutil.copytree(REPO / "ups", src / "ups", ignore=shutil.ignore_patterns("__pycache__"))
    res = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                          "-w", str(root / "dist"), str(src)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    (wheel,) = (root / "dist").glob("ups-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "reuse-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    res = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                          str(wheel)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    where = subprocess.run([str(py), "-c", "import ups; print(ups.__file__)"], cwd="/", capture_output=True,
                           text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(site), where  # the wheel's copy, not this checkout
    return venv


def test_ups_demo_from_an_installed_wheel_takes_the_project_from_the_current_directory(installed, tmp_path):
    env = {"PATH": f"{installed / 'bin'}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path)}
    run_dir = tmp_path / "demo"
    res = subprocess.run([str(installed / "bin" / "ups"), "demo", "--dry-run", "--run-dir", str(run_dir)],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (run_dir / "dvc.yaml").read_bytes() == (REPO / "dvc.yaml").read_bytes()
    assert (run_dir / "ups" / "cli.py").read_bytes() == (REPO / "ups" / "cli.py").read_bytes()
    params = yaml.safe_load((run_dir / "params.yaml").read_text())
    assert Path(params["dataset"]["local_root"]) == (REPO / "sample").resolve()
    # outside a checkout it says what it needs instead of looking inside site-packages
    res = subprocess.run([str(installed / "bin" / "ups"), "demo", "--dry-run", "--run-dir", str(run_dir)],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode != 0 and "needs a checkout of the ups repository" in res.stderr, res.stderr[-2000:]


@pytest.mark.e2e
@pytest.mark.slow
def test_the_whole_demo_runs_from_the_installed_wheel(installed, tmp_path):
    env = {"PATH": f"{installed / 'bin'}:/usr/bin:/bin", "DVC_NO_ANALYTICS": "1", "HOME": str(tmp_path),
           "OMP_NUM_THREADS": "1"}
    run_dir = tmp_path / "demo"
    res = subprocess.run([str(installed / "bin" / "ups"), "demo", "--run-dir", str(run_dir)], cwd=REPO,
                         env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"model: {run_dir / 'models/hubert-cpt'}" in res.stdout.replace("     model", "model")
    metrics = yaml.safe_load((run_dir / "reports/evaluate/metrics.json").read_text())
    assert {"init", "continued"} <= set(metrics["probe"]), metrics
