"""Security: no pickle anywhere, safe tar members only, the HF token never written, no credentials
in the committed DVC config.
"""

from __future__ import annotations

import ast
import configparser
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
from hub_server import REPO_ID, SHA, HubServer, HubState

from tests.faults.harness import REPO, SAMPLE, run_stage, write_params
from ups.shards import iter_shard
from ups.skips import Skips
from ups.tar_reader import iter_members

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "joblib", "dill", "cloudpickle", "shelve", "marshal"}


def _python_files() -> list[Path]:
    return [p for d in ("ups", "tests", "bench", "scripts") for p in sorted((REPO / d).rglob("*.py"))]


def _violations(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    out = []
    for node in ast.walk(tree):
        where = f"{path.relative_to(REPO)}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import):
            out += [f"{where} import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            out.append(f"{where} from {node.module} import")
        elif isinstance(node, ast.Call):
            kw = {k.arg: k.value for k in node.keywords}
            name = ast.unparse(node.func)
            if "allow_pickle" in kw and not (isinstance(kw["allow_pickle"], ast.Constant)
                                             and kw["allow_pickle"].value is False):
                out.append(f"{where} {name}(allow_pickle=...)")
            if name.endswith("torch.load") or name == "load" and "weights_only" in kw:
                wo = kw.get("weights_only")
                if not (isinstance(wo, ast.Constant) and wo.value is True):
                    out.append(f"{where} {name} without weights_only=True")
            if name.endswith(("read_pickle", "to_pickle")):
                out.append(f"{where} {name}")
    return out


def test_no_pickle_in_the_code_base():
    files = _python_files()
    assert len(files) > 50
    bad = [v for p in files for v in _violations(p)]
    assert bad == []


def test_the_static_check_catches_what_it_should(tmp_path):
    src = tmp_path / "x.py"
    src.write_text("import pickle\nfrom joblib import dump\nimport torch, numpy as np\n"
                   "torch.load('a')\ntorch.load('a', weights_only=False)\nnp.load('a', allow_pickle=True)\n"
                   "torch.load('a', weights_only=True)\nnp.load('a', allow_pickle=False)\n")
    original = REPO
    try:
        globals()["REPO"] = tmp_path
        found = _violations(src)
    finally:
        globals()["REPO"] = original
    assert len(found) == 5, found


def test_dvc_config_in_the_repo_holds_no_credentials():
    cfg = configparser.ConfigParser()
    cfg.read_string((REPO / ".dvc/config").read_text())
    secret = ("password", "secret", "token", "access_key", "key_id", "credential", "keyfile", "ask_password")
    for section in cfg.sections():
        for key, value in cfg.items(section):
            assert not any(s in key.lower() for s in secret), (section, key)
            assert "@" not in value.split("://")[-1].split("/")[0], (section, key)  # user:pass@host
    assert ".dvc/config.local" in (REPO / ".dvc/.gitignore").read_text() or \
        "config.local" in (REPO / ".dvc/.gitignore").read_text()


# --- tar members --------------------------------------------------------------------------------

def test_links_devices_and_escapes_are_refused(tmp_path, figures):
    path = tmp_path / "evil.tar"
    with tarfile.open(path, "w") as tf:
        def add(name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"x", link: str = "") -> None:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = link
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tf.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        add("ok/a.mp3", data=b"good")
        add("/etc/x.mp3")
        add("../x.mp3")
        add("ok/../../x.mp3")
        add("ok/hard.mp3", tarfile.LNKTYPE, link="ok/a.mp3")
        add("ok/sym.mp3", tarfile.SYMTYPE, link="../../etc/passwd")
        add("ok/dev.mp3", tarfile.CHRTYPE)
        add("ok/fifo.mp3", tarfile.FIFOTYPE)
    skips = Skips("t")
    got = [(m.name, m.data) for m in iter_members(path, skips)]
    figures.bad_input("unsafe_tar_member", 7)
    assert got == [("ok/a.mp3", b"good")]
    assert skips.total >= 5, skips.counts  # device and fifo members carry no audio either
    assert not (tmp_path / "x.mp3").exists() and not Path("/etc/x.mp3").exists()


# --- artifact formats ---------------------------------------------------------------------------

ALLOWED = {".parquet", ".json", ".jsonl", ".npy", ".npz", ".safetensors", ".tar", ".png", ".csv",
           ".yaml", ".html", ".tsv"}


def _check_artifacts(root: Path) -> int:
    n = 0
    for p in sorted((root / d) for d in ("data", "models", "dvclive") if (root / d).exists()):
        for f in sorted(p.rglob("*")):
            if not f.is_file():
                continue
            n += 1
            if f.suffix == ".lock":  # a writer's flock target (prepare-audio): empty, never data
                assert f.stat().st_size == 0 and f.parent.name.endswith(".locks"), f
                continue
            assert f.suffix in ALLOWED, f
            head = f.read_bytes()[:8]
            if f.suffix == ".npy":
                assert head.startswith(b"\x93NUMPY"), f
                np.load(f, allow_pickle=False)
            elif f.suffix == ".npz":
                with np.load(f, allow_pickle=False) as z:
                    for k in z.files:
                        z[k]
            elif f.suffix == ".parquet":
                assert head.startswith(b"PAR1"), f
            elif f.suffix == ".safetensors":
                from safetensors.numpy import load_file
                load_file(str(f))
            elif f.suffix == ".tar" and "audio" in f.parts:
                for _, pcm, meta in iter_shard(f):
                    assert pcm.dtype == np.int16 and isinstance(meta, dict)
                with tarfile.open(f) as tf:
                    assert {Path(m.name).suffix for m in tf} <= {".npy", ".json"}, f
    return n


def test_every_artifact_is_a_safe_format(reference):
    assert _check_artifacts(reference.root) > 30


@pytest.mark.stress
def test_every_artifact_is_a_safe_format_with_training(reference_trained):
    assert _check_artifacts(reference_trained.root) > 40


# --- the HF token -------------------------------------------------------------------------------

SENTINEL = "hf_SENTINEL_b3f1c0ffee5ecret"


def test_sentinel_token_is_never_written(tmp_path, figures):
    files = {name: (SAMPLE / name).read_bytes() for name in (
        "vad_results.jsonl", "lang_id_results.jsonl", "audio/000001.tar", "audio/000002.tar",
        "audio2/005001.tar")}
    state = HubState(REPO_ID, files)
    state.fault("vad_results.jsonl", ("status", 500), ("drop", 5000))  # retries get logged
    root = tmp_path / "p"
    write_params(root, dataset={"source": "hub", "revision": "main", "repo_id": REPO_ID})
    captured = []
    with HubServer(state) as url:
        env = {"HF_ENDPOINT": url, "HF_TOKEN": SENTINEL, "HUGGING_FACE_HUB_TOKEN": SENTINEL}
        for stage in ("fetch-meta", "index-vad", "index-lang", "select", "prepare-audio"):
            res = run_stage(root, stage, env)
            captured.append(res.stdout + res.stderr)
            assert res.returncode == 0, f"{stage}: {res.stderr[-2000:]}"
    figures.fault("token_hygiene_run", 2)
    # the token really was used, as a header
    ours = [r for r in state.requests if r.path.startswith(("/api/datasets/", "/datasets/"))]
    assert ours and all(r.authorization == f"Bearer {SENTINEL}" for r in ours)
    assert any("/resolve/" in r.path and r.path.endswith(".tar") for r in state.requests)
    assert any(SHA in r.path for r in state.requests)
    logs = "\n".join(captured)
    assert "retrying" in logs and SENTINEL not in logs
    written = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert len(written) > 20
    leaks = [str(p) for p in written if SENTINEL.encode() in p.read_bytes()]
    assert leaks == []
