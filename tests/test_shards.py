"""Our shards are plain WebDataset tars: the webdataset library reads them as written."""

from __future__ import annotations

import io

import numpy as np
import orjson
import webdataset as wds

from ups.shards import ShardWriter, iter_shard


def test_webdataset_reads_our_shards(tmp_path):
    rng = np.random.default_rng(0)
    written = {}
    w = ShardWriter(tmp_path, tar_number=7, max_samples=3)
    for chunk_id in range(5):
        pcm = rng.integers(-2000, 2000, size=1600 + 160 * chunk_id, dtype=np.int16)
        meta = {"chunk_id": chunk_id, "key": "radio.show/ep.01 part", "n_samples": len(pcm)}
        w.write(f"{chunk_id:09d}", pcm, meta)
        written[f"{chunk_id:09d}"] = (pcm, meta)
    w.close()
    shards = sorted(str(p) for p in tmp_path.glob("*.tar"))
    assert len(shards) == 2  # 3 + 2 samples

    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        pcm = np.load(io.BytesIO(sample["pcm.npy"]), allow_pickle=False)
        seen[sample["__key__"]] = (pcm, orjson.loads(sample["json"]))
    assert seen.keys() == written.keys()
    for key, (pcm, meta) in written.items():
        assert np.array_equal(seen[key][0], pcm) and seen[key][1] == meta
    # and our own reader agrees
    ours = {k: (p, m) for s in shards for k, p, m in iter_shard(s)}
    assert all(np.array_equal(ours[k][0], written[k][0]) for k in written)
