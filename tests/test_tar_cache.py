"""The tar cache's disk budget: pins of live processes count, a download reserves its full size."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson

from ups.tar_cache import TarCache


def test_pins_of_other_processes_count_and_dead_ones_do_not(tmp_path):
    cache = TarCache(tmp_path / "c", budget_bytes=250)
    for i, rel in enumerate(["audio/000001.tar", "audio/000002.tar"]):
        p = cache.path(rel)
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"x" * 100)
        os.utime(p, (i + 1, i + 1))
    cache.pins_dir.mkdir(parents=True)
    alive = os.getppid()  # another live process (pytest's parent) holds tar 1
    (cache.pins_dir / "a.pin").write_bytes(orjson.dumps(
        {"pid": alive, "path": "audio/000001.tar", "reserve_bytes": 0}))
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    dead_pid = int(dead.stdout)
    (cache.pins_dir / "b.pin").write_bytes(orjson.dumps(
        {"pid": dead_pid, "path": "audio/000002.tar", "reserve_bytes": 0}))
    assert cache.live_pins() == {"audio/000001.tar": 0}
    assert not (cache.pins_dir / "b.pin").exists()  # the stale pin is cleaned up
    evicted = cache.make_room("audio/000003.tar", 100)
    assert evicted == ["audio/000002.tar"]


def test_download_in_progress_reserves_its_full_size(tmp_path):
    cache = TarCache(tmp_path / "c", budget_bytes=2000)
    old = cache.path("audio/000001.tar")
    old.parent.mkdir(parents=True)
    old.write_bytes(b"x" * 500)
    with cache.pinned("audio/000009.tar", reserve_bytes=1000):
        (cache.path("audio/000009.tar.partial")).write_bytes(b"y" * 10)  # 10 bytes arrived
        assert cache.used_bytes() == 1500
        assert cache.make_room("audio/000002.tar", 600) == ["audio/000001.tar"]
    assert cache.used_bytes() == 10  # an unpinned partial counts as what it holds
