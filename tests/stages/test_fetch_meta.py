"""fetch-meta on a tiny local mirror and against the local hub stand-in: outputs, report, resume."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import yaml
from hub_server import REPO_ID, SHA, TOKEN, HubServer, HubState, hub_cfg, payload

from ups.config import DatasetConfig, FetchMetaConfig
from ups.stages import fetch_meta

REPO = Path(__file__).resolve().parents[2]
VAD, LID = "vad_results.jsonl", "lang_id_results.jsonl"


def make_mirror(root: Path) -> dict[str, bytes]:
    files = {
        VAD: b'{"item/a b.c": {"tar_number": "000001", "duration": 3.5, "timestamps": '
             b'[{"start": 0, "end": 16000}]}}\n' * 500,
        LID: b'{"tar_number": "000001", "filepath": "/data/item/a b.c.mp3", "prediction": "en"}\n'
             * 300,
    }
    root.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (root / name).write_bytes(data)
    return files


def local_cfg(root: Path, tmp_path: Path) -> DatasetConfig:
    return DatasetConfig(source="local", local_root=str(root), repo_id=REPO_ID, revision="main",
                         tar_cache_dir=str(tmp_path / "cache"), cache_budget_gb=1.0,
                         download_workers=1, max_retries=2, retry_backoff_s=0.0, timeout_s=5.0)


def test_local_mirror_outputs_and_report(tmp_path):
    files = make_mirror(tmp_path / "mirror")
    out = tmp_path / "data" / "meta"
    body = fetch_meta.run(FetchMetaConfig(), local_cfg(tmp_path / "mirror", tmp_path), out)
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    assert sorted(p.name for p in out.iterdir()) == sorted([VAD, LID, "fetch_meta.json"])
    report = orjson.loads((out / "fetch_meta.json").read_bytes())
    assert report["stage"] == "fetch-meta" and report == {**report, **body}
    assert report["dataset"] == {"source": "local", "local_root": str(tmp_path / "mirror")}
    assert report["files"][VAD]["size"] == len(files[VAD])
    assert report["config"]["fetch_meta"] == {"vad_file": VAD, "lid_file": LID}


def test_local_partial_copy_is_resumed(tmp_path):
    files = make_mirror(tmp_path / "mirror")
    out = tmp_path / "meta"
    out.mkdir()
    (out / (VAD + ".partial")).write_bytes(files[VAD][:5000])
    (out / LID).write_bytes(files[LID][:-3] + b"xx\n")  # a wrong file at the final name
    fetch_meta.run(FetchMetaConfig(), local_cfg(tmp_path / "mirror", tmp_path), out)
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    assert not list(out.glob("*.partial"))


def test_hub_report_has_resolved_revision_and_no_token(tmp_path, monkeypatch):
    state = HubState(REPO_ID, make_mirror(tmp_path / "src"))
    with HubServer(state) as url:
        monkeypatch.setenv("HF_ENDPOINT", url)
        monkeypatch.setenv("HF_TOKEN", TOKEN)
        fetch_meta.run(FetchMetaConfig(), hub_cfg(tmp_path, revision="main"), tmp_path / "meta")
    report = orjson.loads((tmp_path / "meta" / "fetch_meta.json").read_bytes())
    assert report["dataset"]["resolved_revision"] == SHA and report["dataset"]["pinned"] is False
    assert report["dataset"]["revision"] == "main"
    assert TOKEN not in (tmp_path / "meta" / "fetch_meta.json").read_text()
    for name in (VAD, LID):
        assert (tmp_path / "meta" / name).read_bytes() == state.files[name]


def test_killed_cli_run_is_resumed_with_a_range_request(tmp_path):
    """Kill `ups fetch-meta` mid-download (SIGKILL), rerun: it continues from the partial."""
    files = {VAD: payload(400_000, 3), LID: payload(2_000, 4)}
    state = HubState(REPO_ID, files)
    state.fault(VAD, ("stall", 150_000, 5.0))
    params = tmp_path / "params.yaml"
    cfg = hub_cfg(tmp_path)
    params.write_text(yaml.safe_dump({
        "dataset": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
        "fetch_meta": {"vad_file": VAD, "lid_file": LID}}))
    out = tmp_path / "meta"
    partial = out / (VAD + ".partial")
    with HubServer(state) as url:
        env = {**os.environ, "HF_ENDPOINT": url, "HF_TOKEN": TOKEN, "PYTHONPATH": str(REPO)}
        cmd = [sys.executable, "-m", "ups", "fetch-meta", "--params", str(params),
               "--out-dir", str(out)]
        proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 20
        while not (partial.is_file() and partial.stat().st_size >= 150_000):
            assert time.monotonic() < deadline and proc.poll() is None, proc.stdout.read()
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert not (out / VAD).exists() and partial.stat().st_size == 150_000
        done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert TOKEN not in done.stdout + done.stderr
    assert [r.range for r in state.gets(VAD)] == [None, "bytes=150000-"]
    for name, data in files.items():
        assert (out / name).read_bytes() == data
    report = orjson.loads((out / "fetch_meta.json").read_bytes())
    assert report["files"][VAD]["size"] == 400_000
