from __future__ import annotations

import pytest

from ups.atomic import atomic_dir, atomic_write, mark_done, read_done, read_json, write_json


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write(b"half")
            raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.bin"]  # no temp file left
    with atomic_write(target) as fh:
        fh.write(b"new")
    assert target.read_bytes() == b"new"


def test_atomic_dir(tmp_path):
    target = tmp_path / "d"
    with atomic_dir(target) as d:
        (d / "a").write_text("1")
    with pytest.raises(ValueError):
        with atomic_dir(target) as d:
            (d / "b").write_text("2")
            raise ValueError
    assert sorted(p.name for p in target.iterdir()) == ["a"]
    assert not (tmp_path / "d.partial").exists()
    with atomic_dir(target) as d:
        (d / "c").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["c"]


def test_markers_and_json(tmp_path):
    assert read_done(tmp_path, "000001") is None
    mark_done(tmp_path, "000001", {"n": 3})
    assert read_done(tmp_path, "000001") == {"unit": "000001", "n": 3}
    (tmp_path / "000002.done.json").write_text("{trunc")
    assert read_done(tmp_path, "000002") is None
    write_json(tmp_path / "x.json", {"b": 1, "a": [1, 2]})
    assert read_json(tmp_path / "x.json") == {"a": [1, 2], "b": 1}


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_get_the_mode_the_umask_allows(tmp_path, umask, mode):
    """mkstemp's 0600 is not what an output should be: other users read what the umask allows."""
    import stat
    import subprocess
    import sys

    code = ("import sys; from ups.atomic import write_bytes, write_json; "
            "write_bytes(sys.argv[1], b'x'); write_json(sys.argv[2], {'a': 1})")
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "b.json"
    subprocess.run([sys.executable, "-c", code, str(a), str(b)], check=True, umask=umask, timeout=60)
    assert stat.S_IMODE(a.stat().st_mode) == mode
    assert stat.S_IMODE(b.stat().st_mode) == mode
