"""Network faults, fuzzed: random scripts of dropped connections, 500/503/429 answers, truncated
and corrupted bodies against the local hub stand-in (tests/hub_server.py).

The property: a download with at most `max_retries` faults ends with exactly the source's bytes
(resumed with Range requests where bytes were kept); with more, it fails with a DownloadError that
names the file and the number of attempts, and nothing lands at the final name (in the tar cache
either): a kept `.partial` is always a prefix of the true file. tests/test_download.py holds the
hand-written cases; here they are combined at random, and once through the CLI.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hub_server import REPO_ID, SHA, HubServer, HubState, hub_cfg, payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.faults.harness import run_stage, write_params
from ups.dataset import open_dataset
from ups.download import DownloadError

VAD = "vad_results.jsonl"
TAR = "audio/000001.tar"
SIZE = 60_000

FAULT = st.one_of(
    st.tuples(st.just("drop"), st.integers(0, 4000)),           # connection dropped mid-body
    st.tuples(st.just("status"), st.sampled_from([500, 502, 503])),
    st.tuples(st.just("status"), st.just(429), st.sampled_from([None, 0])),
    st.tuples(st.just("corrupt")),                               # one flipped byte
)
SCRIPT = st.tuples(st.lists(FAULT, max_size=6), st.integers(0, 4), st.booleans())


def _check_script(figures, faults: list[tuple], max_retries: int, as_tar: bool) -> None:
    files = {VAD: payload(SIZE, 1), TAR: payload(SIZE + 512, 2), "lang_id_results.jsonl": b"{}\n"}
    name = TAR if as_tar else VAD
    state = HubState(REPO_ID, files)
    state.fault(name, *faults)
    for f in faults:
        figures.fault(f"{f[0]}_{f[1]}" if f[0] == "status" else f[0])
    with tempfile.TemporaryDirectory() as d, HubServer(state) as url:
        tmp = Path(d)
        sleeps: list[float] = []

        old = os.environ.get("HF_ENDPOINT")
        os.environ["HF_ENDPOINT"] = url
        try:
            ds = open_dataset(hub_cfg(tmp, max_retries=max_retries), sleep=sleeps.append)
            dest = tmp / "out" / VAD
            try:
                if as_tar:
                    with ds.tar(1) as p:
                        got = p.read_bytes()
                else:
                    ds.fetch_file(VAD, dest)
                    got = dest.read_bytes()
                error = None
            except DownloadError as exc:
                error = str(exc)
        finally:
            if old is None:
                os.environ.pop("HF_ENDPOINT")
            else:
                os.environ["HF_ENDPOINT"] = old
        n_gets, same_twice = _expected(faults, max_retries)
        if n_gets > len(faults):
            assert error is None, (faults, max_retries, error)
            assert got == files[name]
            assert len(sleeps) == len(faults)
        else:
            assert error is not None and name in error
            assert ("same wrong bytes twice" if same_twice
                    else f"giving up after {max_retries + 1} attempt(s)") in error, error
            finals = [p for p in tmp.rglob("*") if p.is_file() and not p.name.endswith(".partial")
                      and p.name in (VAD, "000001.tar")]
            assert finals == [], finals  # nothing unverified at a name a later run trusts
            for p in tmp.rglob("*.partial"):
                assert files[name].startswith(p.read_bytes())
        assert len(state.gets(name)) == n_gets


def _expected(faults: list[tuple], max_retries: int) -> tuple[int, bool]:
    """(GET requests the fetch makes, whether it stops at the same wrong bytes twice): each fault
    fails one attempt; a corrupt answer flips the first byte it sends, at the offset the attempt
    resumes from, and the same flipped byte twice is the same wrong file, not fetched again."""
    offset, flipped = 0, set()
    for i, f in enumerate(faults):
        if f[0] == "drop":
            offset += f[1]
        elif f[0] == "corrupt":
            if offset in flipped:
                return i + 1, True
            flipped.add(offset)
            offset = 0  # the failed check deletes the partial
        if i + 1 > max_retries:
            return i + 1, False
    return len(faults) + 1, False


@settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
@given(SCRIPT)
def test_random_fault_scripts_ci(figures, script):
    _check_script(figures, *script)


@pytest.mark.stress
@settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
@given(SCRIPT)
def test_random_fault_scripts(figures, script):
    _check_script(figures, *script)


def test_cli_gives_a_clear_error_after_the_configured_tries(tmp_path, figures):
    files = {VAD: payload(SIZE, 3), "lang_id_results.jsonl": b"{}\n"}
    state = HubState(REPO_ID, files)
    state.fault(VAD, ("status", 500), ("drop", 100), ("status", 429, 0), ("corrupt",))
    figures.fault("cli_fetch_meta", 4)
    write_params(tmp_path, dataset={"source": "hub", "revision": SHA, "max_retries": 2,
                                    "retry_backoff_s": 0.01})
    with HubServer(state) as url:
        res = run_stage(tmp_path, "fetch-meta", {"HF_ENDPOINT": url})
        assert res.returncode == 1 and "Traceback" not in res.stderr  # one line, no traceback
        last = res.stderr.strip().splitlines()[-1]
        assert " ERROR " in last and VAD in last and "giving up after 3 attempt(s)" in last
        assert not (tmp_path / "data/meta" / VAD).exists()
        assert not (tmp_path / "data/meta/fetch_meta.json").exists()
        # the network heals: the rerun finishes the job (from the kept bytes) and verifies it
        res = run_stage(tmp_path, "fetch-meta", {"HF_ENDPOINT": url})
        assert res.returncode == 0, res.stderr[-2000:]
    assert (tmp_path / "data/meta" / VAD).read_bytes() == files[VAD]
    assert [r.range for r in state.gets(VAD)][-1] is None  # the 4th answer (corrupt) dropped the partial
