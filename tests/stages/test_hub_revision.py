"""One revision per run: fetch-meta resolves a branch once; prepare-audio (its prefetcher and every
worker) reads the sha from data/meta/fetch_meta.json; tar markers carry it. Against the local hub."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hub_server import REPO_ID, TOKEN, HubServer, HubState

from tests.stages.conftest import tree_bytes, ups, write_params
from ups.atomic import read_json

SHA_A = "a" * 40
SHA_B = "b" * 40


def _hub_files(corpus: Path) -> dict[str, bytes]:
    files = {p.relative_to(corpus / "sample").as_posix(): p.read_bytes()
             for p in sorted((corpus / "sample").rglob("*.tar"))}
    files["vad_results.jsonl"] = b'{"itemA/one": {"tar_number": "000001", "duration": 25.0}}\n'
    files["lang_id_results.jsonl"] = b"{}\n"
    return files


def _project(tmp_path: Path, corpus: Path, **dataset) -> Path:
    params = write_params(tmp_path / "params.yaml", corpus / "sample", prepare_audio={"workers": 2})
    p = yaml.safe_load(params.read_text())
    p["dataset"].update({"source": "hub", "revision": "main", "tar_cache_dir": str(tmp_path / "cache"),
                         "fetch": "tars",  # the tar cache keyed by content (members: test_member_fetch)
                         "retry_backoff_s": 0.01, "download_workers": 2, **dataset})
    params.write_text(yaml.safe_dump(p, sort_keys=False))
    return params


def _prepare(tmp_path: Path, corpus: Path, params: Path, env: dict):
    return ups("prepare-audio", "--params", str(params), "--chunks", str(corpus / "chunks.parquet"),
               "--meta", str(tmp_path / "data/meta/fetch_meta.json"),
               "--audio-dir", str(tmp_path / "audio"), "--features-dir", str(tmp_path / "features"),
               cwd=tmp_path, env=env)


@pytest.mark.slow
def test_branch_is_resolved_once_per_run_and_markers_carry_the_sha(corpus, tmp_path):
    state = HubState(REPO_ID, _hub_files(corpus), sha=SHA_A)
    params = _project(tmp_path, corpus)
    with HubServer(state) as url:
        env = {"HF_ENDPOINT": url, "HF_TOKEN": TOKEN, "UPS_PROGRESS": "0"}
        meta = ups("fetch-meta", "--params", str(params), "--out-dir", str(tmp_path / "data/meta"),
                   cwd=tmp_path, env=env)
        assert meta.returncode == 0, meta.stderr[-2000:]
        prep = _prepare(tmp_path, corpus, params, env)
        assert prep.returncode == 0, prep.stderr[-3000:]
        # fetch-meta resolved `main` once; prepare-audio, its prefetcher and both workers did not
        assert state.resolutions() == 1
        warnings = (meta.stderr + prep.stderr).count("NOT pinned")
        assert warnings == 1, meta.stderr + prep.stderr
        tar_gets = [r.path for r in state.requests if r.path.endswith(".tar")]
        assert tar_gets and all(f"/resolve/{SHA_A}/" in p for p in tar_gets)
        recorded = read_json(tmp_path / "data/meta/fetch_meta.json")["dataset"]
        assert recorded["resolved_revision"] == SHA_A and recorded["revision"] == "main"
        markers = sorted((tmp_path / "audio" / "_done").glob("*.done.json"))
        assert len(markers) == 3 and all(read_json(m)["revision"] == SHA_A for m in markers)
        first = tree_bytes(tmp_path / "audio")

        # Same commit again: every marker is trusted, nothing is fetched or redone.
        n_requests = len(state.requests)
        again = _prepare(tmp_path, corpus, params, env)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "3 tar(s) already done, 0 to do" in again.stderr
        assert not [r for r in state.requests[n_requests:] if r.path.endswith(".tar")]

        # `main` moves to another commit where tar 2 changed (same size): fetch-meta records the
        # new sha, markers made under the old one are not trusted (every tar is redone), the
        # changed tar is fetched again and the unchanged ones come from the cache (same sha256).
        state.sha = SHA_B
        t2 = bytearray(state.files["audio/000002.tar"])
        t2[-1] ^= 1  # the zero padding after the last member: the audio does not change
        state.files["audio/000002.tar"] = bytes(t2)
        meta = ups("fetch-meta", "--params", str(params), "--out-dir", str(tmp_path / "data/meta"),
                   cwd=tmp_path, env=env)
        assert meta.returncode == 0, meta.stderr[-2000:]
        moved = _prepare(tmp_path, corpus, params, env)
        assert moved.returncode == 0, moved.stderr[-2000:]
        assert "0 tar(s) already done, 3 to do" in moved.stderr
        assert all(read_json(m)["revision"] == SHA_B
                   for m in (tmp_path / "audio" / "_done").glob("*.done.json"))
        tar_gets = [r.path for r in state.requests[n_requests:] if r.path.endswith(".tar")]
        assert tar_gets == [f"/datasets/{REPO_ID}/resolve/{SHA_B}/audio/000002.tar"]
    # the same audio bytes (the corpus did not change): only the markers and report differ
    second = tree_bytes(tmp_path / "audio")
    shards = {k for k in first if k.endswith(".tar")}
    assert shards and {k: first[k] for k in shards} == {k: second[k] for k in shards}


def test_prepare_audio_refuses_metadata_of_another_revision(corpus, tmp_path):
    params = _project(tmp_path, corpus, revision="v2")
    meta = tmp_path / "data/meta/fetch_meta.json"
    meta.parent.mkdir(parents=True)
    meta.write_text(f'{{"dataset": {{"source": "hub", "repo_id": "{REPO_ID}", "revision": "main", '
                    f'"resolved_revision": "{SHA_A}"}}}}')
    res = _prepare(tmp_path, corpus, params, {"HF_ENDPOINT": "http://127.0.0.1:9", "UPS_PROGRESS": "0"})
    assert res.returncode != 0
    last = res.stderr.strip().splitlines()[-1]
    assert "dataset.revision" in last and "'v2'" in last and "'main'" in last and "fetch-meta" in last
