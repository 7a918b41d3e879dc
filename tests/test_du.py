"""`ups du` on a tiny DVC project whose file sizes are known."""

from __future__ import annotations

import os
from pathlib import Path

import orjson
import pytest
import yaml

from ups import cli, du

DATASET = {
    "source": "local", "local_root": "sample", "repo_id": "x/y", "revision": "main",
    "tar_cache_dir": "cache/tars", "cache_budget_gb": 2.0, "download_workers": 1,
    "max_retries": 0, "retry_backoff_s": 0.0, "timeout_s": 1.0,
}


def _write(path: Path, n_bytes: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * n_bytes)
    return path


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """dvc.yaml with three stages (a file, a dir holding a hard link, a persisted dict out), a tar
    cache, a DVC cache sharing an inode with an output, and a local remote."""
    from dvc.repo import Repo

    root = tmp_path / "proj"
    root.mkdir()
    Repo.init(str(root), no_scm=True).close()
    stages = {
        "one": {"cmd": "true", "outs": ["data/one.bin"]},
        "two": {"cmd": "true", "outs": ["data/two"]},
        "three": {"cmd": "true", "outs": [{"data/state": {"persist": True}}], "metrics": ["m.json"]},
        "no-outs": {"cmd": "true"},
    }
    (root / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}))
    (root / "params.yaml").write_text(yaml.safe_dump({"dataset": DATASET}))
    _write(root / "data/one.bin", 1000)
    a = _write(root / "data/two/a.bin", 300)
    _write(root / "data/two/b.bin", 700)
    os.link(a, root / "data/two/a-link.bin")  # same inode: counted once
    _write(root / "data/state/ckpt.bin", 5000)
    _write(root / "m.json", 10)
    _write(root / "cache/tars/000001.tar", 4096)
    _write(root / "cache/tars/000002.tar", 2048)
    cache_obj = root / ".dvc/cache/files/md5/ab/cdef"
    cache_obj.parent.mkdir(parents=True)
    os.link(root / "data/one.bin", cache_obj)  # hardlink cache: one inode in two rows
    _write(root / ".dvc/cache/files/md5/12/3456", 50)
    remote = tmp_path / "remote"
    _write(remote / "files/md5/ab/cdef", 1000)
    _write(remote / "files/md5/12/3456", 50)
    (root / ".dvc/config").write_text(
        "[core]\n    no_scm = True\n    remote = here\n['remote \"here\"']\n    url = ../../remote\n")
    return root


def _by_name(rows: list[du.Usage]) -> dict[str, du.Usage]:
    return {r.name: r for r in rows}


def test_rows_have_the_known_sizes(project: Path) -> None:
    rows = _by_name(du.collect(project, project / "params.yaml"))
    assert "no-outs" not in rows
    assert (rows["one"].files, rows["one"].apparent_bytes) == (1, 1000)
    assert rows["one"].paths == ["data/one.bin"]
    assert (rows["two"].files, rows["two"].apparent_bytes) == (2, 1000)  # the hard link once
    assert (rows["three"].files, rows["three"].apparent_bytes) == (2, 5010)  # persisted out + metric
    assert (rows["tar cache"].files, rows["tar cache"].apparent_bytes) == (2, 6144)
    assert rows["tar cache"].note == "budget 2 GB"
    assert (rows["dvc cache"].files, rows["dvc cache"].apparent_bytes) == (2, 1050)
    assert (rows["remote here"].files, rows["remote here"].apparent_bytes) == (2, 1050)
    assert rows["remote here"].paths == [str(project.parent / "remote")]
    # 1000 + 1000 + 5010 + 6144 + 1050 (cache: one.bin's object is the same inode) + 1050 (remote)
    tot = rows["total (links once)"]
    assert (tot.files, tot.apparent_bytes) == (1 + 2 + 2 + 2 + 1 + 2, 1000 + 1000 + 5010 + 6144 + 50 + 1050)
    for r in rows.values():
        assert r.disk_bytes is not None and r.disk_bytes >= 0


def test_cache_row_says_what_the_outputs_share_and_symlinks_count_once(project: Path) -> None:
    rows = _by_name(du.collect(project, project / "params.yaml"))
    assert rows["dvc cache"].note == "1000 B of it linked from the outputs"
    # cache.type symlink: the output is a symlink to its cache object, measured as the object.
    (project / "data/two/b.bin").unlink()
    obj = project / ".dvc/cache/files/md5/12/3456"
    (project / "data/two/b.bin").symlink_to(obj)
    (project / "data/two/dangling.bin").symlink_to(project / "nowhere")
    rows = _by_name(du.collect(project, project / "params.yaml"))
    link_size = len(str(project / "nowhere"))
    assert (rows["two"].files, rows["two"].apparent_bytes) == (3, 300 + 50 + link_size)
    assert rows["dvc cache"].note == "1.0 KiB of it linked from the outputs"
    tot = rows["total (links once)"]
    # the cache adds nothing: both its objects are outputs' files; the remote's are its own
    assert tot.apparent_bytes == 1000 + (300 + 50 + link_size) + 5010 + 6144 + 1050


def test_disk_bytes_follow_allocation_not_size(project: Path) -> None:
    sparse = project / "cache/tars/sparse.tar"
    with sparse.open("wb") as fh:
        fh.seek(64 * 1024 * 1024 - 1)
        fh.write(b"\0")
    rows = _by_name(du.collect(project, project / "params.yaml"))
    tar = rows["tar cache"]
    assert tar.apparent_bytes == 6144 + 64 * 1024 * 1024
    expected_disk = sum(p.stat().st_blocks * 512 for p in (project / "cache/tars").iterdir())
    assert tar.disk_bytes == expected_disk
    assert tar.disk_bytes < 1024 * 1024  # the 64 MiB hole takes no blocks


def test_absent_outputs_and_non_local_remote(project: Path) -> None:
    import shutil

    shutil.rmtree(project / "data")
    shutil.rmtree(project / "cache")
    cfg = (project / ".dvc/config").read_text().replace("url = ../../remote", "url = ssh://host/x")
    (project / ".dvc/config").write_text(cfg)
    rows = _by_name(du.collect(project, project / "params.yaml"))
    assert (rows["one"].files, rows["one"].note) == (0, "absent")
    assert rows["three"].note == "1 of 2 absent"
    assert rows["tar cache"].note == "absent"
    remote = rows["remote here"]
    assert (remote.files, remote.apparent_bytes, remote.disk_bytes) == (None, None, None)
    assert remote.note.startswith("unknown")


def test_cli_json_and_table(project: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["du", "--repo", str(project), "--json"]) == 0
    rows = {r["name"]: r for r in orjson.loads(capsys.readouterr().out)}
    assert rows["two"]["apparent_bytes"] == 1000 and rows["two"]["kind"] == "stage"
    assert set(rows["two"]) == {"name", "kind", "paths", "files", "apparent_bytes", "disk_bytes", "note"}
    assert cli.main(["du", "--repo", str(project)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:2] == ["what", "files"]
    line = next(x for x in table if x.startswith("tar cache"))
    assert "6.0 KiB" in line and "cache/tars" in line


def test_bad_params_fail_naming_the_parameter(project: Path) -> None:
    bad = dict(DATASET, cache_budget_gb=-1)
    (project / "params.yaml").write_text(yaml.safe_dump({"dataset": bad}))
    assert cli.main(["du", "--repo", str(project)]) == 2


@pytest.mark.parametrize(("n", "text"), [(0, "0 B"), (1023, "1023 B"), (1536, "1.5 KiB"),
                                         (5 * 1024**3, "5.0 GiB"), (None, "?")])
def test_human(n: int | None, text: str) -> None:
    assert du.human(n) == text
