import numpy as np
import pytest

from tests.stages.conftest import CHUNKS, slurm_array_task, tree_bytes, ups, write_params
from ups.atomic import read_json
from ups.audio import from_int16
from ups.config import DatasetConfig, FeaturesConfig, PrepareAudioConfig, load_section
from ups.frames import n_cnn_frames
from ups.mfcc import hubert_mfcc
from ups.shards import iter_shard
from ups.stages import prepare_audio


def run_stage(corpus, out, **cfg_overrides):
    params = write_params(out / "params.yaml", corpus / "sample", prepare_audio=cfg_overrides)
    cfg = load_section(PrepareAudioConfig, "prepare_audio", params)
    feats = load_section(FeaturesConfig, "features", params)
    ds = load_section(DatasetConfig, "dataset", params)
    return prepare_audio.run(cfg, feats.mfcc, ds, chunks=corpus / "chunks.parquet",
                             audio_dir=out / "audio", features_dir=out / "features",
                             report=out / "audio" / "report.json")


@pytest.fixture(scope="module")
def done(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep")
    summary = run_stage(corpus, out)
    return out, summary


def test_shards_hold_every_good_chunk_with_exact_lengths(done):
    out, summary = done
    samples = {}
    for split in ("train", "valid"):
        for shard in sorted((out / "audio" / split).glob("*.tar")):
            for key, pcm, meta in iter_shard(shard):
                assert meta["split"] == split and key == f"{meta['chunk_id']:09d}"
                assert pcm.dtype == np.int16 and pcm.ndim == 1
                samples[meta["chunk_id"]] = (pcm, meta)
    # chunks 2 (past end), 4 (corrupt), 5 (missing) are skipped; the rest are there
    assert sorted(samples) == [0, 1, 3, 6, 7, 8, 9]
    for cid, (pcm, meta) in samples.items():
        tar, key, start, end, lang, split = CHUNKS[cid]
        assert (meta["tar"], meta["key"], meta["start_s"], meta["end_s"], meta["language"]) == (
            tar, key, start, end, lang)
        assert len(pcm) == meta["n_samples"] == round((end - start) * 16000)
        assert np.abs(pcm).max() > 1000  # real audio, not silence
    names = sorted(p.name for p in (out / "audio" / "train").glob("*.tar"))
    assert names == ["000001-000.tar", "000002-000.tar", "000003-000.tar"]  # 2 chunks per shard max
    assert summary["n_chunks_written"] == 7


def test_bad_inputs_are_counted_and_reported(done):
    out, _ = done
    report = read_json(out / "audio" / "report.json")
    counts = report["skipped"]["counts"]
    assert counts["chunk_past_end"] == 1
    assert counts["corrupt_mp3"] == 1 and counts["chunk_in_corrupt_mp3"] == 1
    assert counts["missing_member"] == 1
    assert report["n_chunks_selected"] == 10 and report["n_chunks_written"] == 7
    assert report["config"]["shard_max_chunks"] == 2


def test_features_are_mfcc_of_the_stored_pcm_one_row_per_cnn_frame(done):
    out, _ = done
    pcm_by_id = {}
    for shard in sorted((out / "audio").glob("*/*.tar")):
        for _, pcm, meta in iter_shard(shard):
            pcm_by_id[meta["chunk_id"]] = pcm
    for split in ("train", "valid"):
        for f in sorted((out / "features" / split).glob("*.feats.npy")):
            tag = f.name.split(".")[0]
            feats = np.load(f)
            ids = np.load(f.with_name(f"{tag}.chunk_ids.npy"))
            offsets = np.load(f.with_name(f"{tag}.offsets.npy"))
            assert feats.dtype == np.float32 and feats.shape[1] == 39
            assert offsets[0] == 0 and offsets[-1] == len(feats) and len(offsets) == len(ids) + 1
            for i, cid in enumerate(ids):
                pcm = pcm_by_id[int(cid)]
                assert offsets[i + 1] - offsets[i] == n_cnn_frames(len(pcm))
                np.testing.assert_array_equal(feats[offsets[i]:offsets[i + 1]],
                                              hubert_mfcc(from_int16(pcm)))


def test_second_run_skips_done_tars_and_changes_nothing(done, corpus):
    out, _ = done
    before = tree_bytes(out / "audio") | {"f/" + k: v for k, v in tree_bytes(out / "features").items()}
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.tar")}
    run_stage(corpus, out)
    after = tree_bytes(out / "audio") | {"f/" + k: v for k, v in tree_bytes(out / "features").items()}
    assert before == after
    assert mtimes == {p: p.stat().st_mtime_ns for p in (out / "audio").rglob("*.tar")}


def test_two_workers_give_the_same_bytes(done, corpus, tmp_path):
    out, _ = done
    run_stage(corpus, tmp_path, workers=2)
    a, b = tree_bytes(tmp_path / "audio"), tree_bytes(out / "audio")
    assert a.pop("report.json") != b.pop("report.json")  # its config says workers: 2
    assert a == b
    assert tree_bytes(tmp_path / "features") == tree_bytes(out / "features")


@pytest.mark.identity
@pytest.mark.parametrize("fail_after", ["1", "4"])
def test_killed_run_resumes_to_identical_bytes(done, corpus, tmp_path, fail_after):
    out, _ = done
    params = write_params(tmp_path / "params.yaml", corpus / "sample")
    args = ["prepare-audio", "--params", str(params), "--chunks", str(corpus / "chunks.parquet"),
            "--audio-dir", str(tmp_path / "audio"), "--features-dir", str(tmp_path / "features")]
    killed = ups(*args, env={"UPS_FAIL_AFTER_CHUNKS": fail_after})
    assert killed.returncode == 86, killed.stderr
    assert not (tmp_path / "audio" / "report.json").exists()
    resumed = ups(*args)
    assert resumed.returncode == 0, resumed.stderr
    assert tree_bytes(tmp_path / "audio") == tree_bytes(out / "audio")
    assert tree_bytes(tmp_path / "features") == tree_bytes(out / "features")


@pytest.mark.identity
def test_torchrun_two_gloo_ranks_give_the_same_shards(done, corpus, tmp_path):
    import os
    import subprocess
    import sys

    from tests.stages.conftest import REPO

    out, _ = done
    params = write_params(tmp_path / "params.yaml", corpus / "sample")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           "29571", "-m", "ups", "prepare-audio", "--params", str(params),
           "--chunks", str(corpus / "chunks.parquet"), "--audio-dir", str(tmp_path / "audio"),
           "--features-dir", str(tmp_path / "features")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert tree_bytes(tmp_path / "audio") == tree_bytes(out / "audio")
    assert tree_bytes(tmp_path / "features") == tree_bytes(out / "features")


@pytest.mark.identity
def test_slurm_array_tasks_then_one_final_run_give_the_same_bytes(done, corpus, tmp_path, monkeypatch,
                                                                 caplog):
    out, _ = done
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    from threadpoolctl import threadpool_limits

    for task, threads in ((1, 1), (0, 2)):  # array tasks run in any order, on any thread count
        slurm_array_task(monkeypatch, task)
        with threadpool_limits(threads):
            assert run_stage(corpus, tmp_path) == {}
    assert not (tmp_path / "audio" / "report.json").exists()  # no task finishes the stage
    assert sorted(p.name for p in (tmp_path / "audio" / "_done").iterdir()) == [
        "000001.done.json", "000002.done.json", "000003.done.json"]
    slurm_array_task(monkeypatch, None)
    caplog.clear()
    with caplog.at_level("INFO"):
        summary = run_stage(corpus, tmp_path)  # the final step: nothing left to decode
    assert "3 tar(s) already done, 0 to do" in caplog.text and summary["n_chunks_written"] == 7
    assert tree_bytes(tmp_path / "audio") == tree_bytes(out / "audio")
    assert tree_bytes(tmp_path / "features") == tree_bytes(out / "features")


def test_bad_selection_column_fails_naming_it(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"chunk_id": [0], "tar": [1]}), tmp_path / "c.parquet")
    with pytest.raises(ValueError, match="key"):
        prepare_audio.read_chunks(tmp_path / "c.parquet")


def test_feature_sink_writes_the_bytes_of_np_save_and_leaves_no_temporary(tmp_path):
    import io

    import numpy as np

    from ups.tar_output import FeatureSink

    a = np.random.default_rng(0).standard_normal((1234, 39)).astype(np.float32)
    sink = FeatureSink(tmp_path / "f" / "000001.feats.npy", 39)
    for s in range(0, len(a), 500):
        sink.write(a[s:s + 500])
    sink.finish()
    ref = io.BytesIO()
    np.save(ref, a, allow_pickle=False)
    assert (tmp_path / "f" / "000001.feats.npy").read_bytes() == ref.getvalue()
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["000001.feats.npy"]
    bad = FeatureSink(tmp_path / "g" / "x.feats.npy", 39)
    with pytest.raises(ValueError, match="expected"):
        bad.write(a[:, :13])
    bad.abort()
    assert list((tmp_path / "g").iterdir()) == []


def _selection(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = list(zip(*rows, strict=True))
    pq.write_table(pa.table({
        "chunk_id": pa.array(range(len(rows)), pa.int64()), "tar": pa.array(cols[0], pa.int32()),
        "key": list(cols[1]), "start_s": pa.array(cols[2], pa.float64()),
        "end_s": pa.array(cols[3], pa.float64()), "language": list(cols[4]), "split": list(cols[5]),
        "speech_ratio": [0.9] * len(rows), "file_duration_s": pa.array(cols[6], pa.float64())}), path)
    return path


def test_a_member_cut_mid_frame_is_a_truncated_mp3_and_its_lost_chunks_are_counted(tmp_path):
    # 63.7 s encoded, the member cut at 40 % of its bytes + 13 (inside an MP3 frame): libsndfile
    # decodes 25.4 s without an error. The index still says 63.7 s.
    from tests.conftest import make_tar
    from tests.stages.conftest import mp3

    whole = mp3(63.7, 44100, 2, 7)
    make_tar(tmp_path / "sample" / "audio" / "000001.tar", {
        "item/cut.mp3": whole[:int(len(whole) * 0.4) + 13],
        "item/ok.mp3": mp3(12.0, 16000, 1, 8),
    })
    chunks = _selection(tmp_path / "chunks.parquet", [
        (1, "item/cut", 0.0, 10.0, "en", "train", 63.7),    # inside the decoded 25.4 s: kept
        (1, "item/cut", 30.0, 40.0, "en", "train", 63.7),   # lost to the truncation
        (1, "item/cut", 50.0, 60.0, "en", "valid", 63.7),   # lost to the truncation
        (1, "item/ok", 0.0, 10.0, "sw", "eval", 12.0),      # the held-out evaluation split
        (1, "item/ok", 10.0, 20.0, "sw", "eval", 12.0),     # past the end of an intact file
    ])
    params = write_params(tmp_path / "params.yaml", tmp_path / "sample")
    cfg = load_section(PrepareAudioConfig, "prepare_audio", params)
    ds = load_section(DatasetConfig, "dataset", params)
    summary = prepare_audio.run(cfg, load_section(FeaturesConfig, "features", params).mfcc, ds,
                                chunks=chunks, audio_dir=tmp_path / "audio",
                                features_dir=tmp_path / "features", report=tmp_path / "audio" / "report.json")
    counts = read_json(tmp_path / "audio" / "report.json")["skipped"]["counts"]
    assert counts == {"truncated_mp3": 1, "chunk_in_corrupt_mp3": 2, "chunk_past_end": 1}
    assert summary["n_chunks_written"] == 2
    example = read_json(tmp_path / "audio" / "report.json")["skipped"]["examples"]["truncated_mp3"][0]
    assert "item/cut" in example and "63.70 s indexed" in example
    ev = [meta for shard in sorted((tmp_path / "audio" / "eval").glob("*.tar"))
          for _, _, meta in iter_shard(shard)]
    assert [(m["chunk_id"], m["split"]) for m in ev] == [(3, "eval")]
    assert summary["hours_written"]["eval"] == pytest.approx(10 / 3600, abs=1e-6)


def test_truncation_rule_tolerates_encoder_delay():
    # decoded vs asked/indexed lengths, in seconds: short of both by more than 0.5 s = truncated
    from ups.tar_output import truncated as f
    assert not f(decoded_s=63.69, asked_s=70.0, indexed_s=63.7)
    assert not f(decoded_s=63.25, asked_s=70.0, indexed_s=63.7)  # within the 0.5 s tolerance
    assert f(decoded_s=63.1, asked_s=70.0, indexed_s=63.7)
    assert not f(decoded_s=11.0, asked_s=11.0, indexed_s=63.7)  # decoded all it asked for
    assert f(decoded_s=25.4, asked_s=41.0, indexed_s=63.7)
    assert not f(decoded_s=25.4, asked_s=41.0, indexed_s=None)  # no indexed duration: no check


def test_report_accounts_for_every_selected_hour(done):
    out, summary = done
    rep = read_json(out / "audio" / "report.json")
    h = 1 / 3600
    assert rep["hours_selected"] == pytest.approx(
        {"train": 75 * h, "valid": 16 * h, "eval": 0.0, "total": 91 * h}, abs=1e-5)
    assert rep["hours_written"] == pytest.approx(
        {"train": 45 * h, "valid": 16 * h, "eval": 0.0, "total": 61 * h}, abs=1e-5)
    assert rep["hours_not_written"] == pytest.approx(
        {"chunk_past_end": 10 * h, "chunk_in_corrupt_mp3": 10 * h, "chunk_in_missing_member": 10 * h,
         "total": 30 * h}, abs=1e-5)
    assert rep["hours_selected"]["total"] == pytest.approx(
        rep["hours_written"]["total"] + rep["hours_not_written"]["total"], abs=1e-5)
    assert summary["hours_written"]["total"] == rep["hours_written"]["total"]


@pytest.mark.identity
def test_two_arrays_over_the_stage_at_once_write_each_tar_once_and_the_same_bytes(done, corpus, tmp_path):
    import os
    import subprocess
    import sys

    from tests.stages.conftest import REPO

    out, _ = done
    params = write_params(tmp_path / "params.yaml", corpus / "sample", prepare_audio={"workers": 1})
    cmd = [sys.executable, "-m", "ups", "prepare-audio", "--params", str(params),
           "--chunks", str(corpus / "chunks.parquet"), "--audio-dir", str(tmp_path / "audio"),
           "--features-dir", str(tmp_path / "features")]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "SLURM_ARRAY_TASK_ID": "0",
           "SLURM_ARRAY_TASK_COUNT": "1", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_MAX": "0"}
    env.pop("WORLD_SIZE", None)
    procs = [subprocess.Popen(cmd, cwd=REPO, env=env, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    logs = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], logs[0][-2000:] + logs[1][-2000:]
    import re

    to_do = sum(int(m) for log in logs for m in re.findall(r"already done, (\d+) to do", log))
    by_other = sum(log.count("was written by another process meanwhile") for log in logs)
    assert to_do - by_other == 3  # three tars, each written by one of the two
    assert not [p for p in tmp_path.rglob("*") if ".partial" in p.name or p.name.endswith(".tmp")]
    env = {k: v for k, v in env.items() if not k.startswith("SLURM_")}
    res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)  # the finish
    assert res.returncode == 0, res.stderr[-3000:]
    assert tree_bytes(tmp_path / "audio") == tree_bytes(out / "audio")
    assert tree_bytes(tmp_path / "features") == tree_bytes(out / "features")


def test_two_writers_of_one_shard_or_feature_file_never_share_a_temporary(tmp_path):
    import numpy as np

    from ups.shards import ShardWriter
    from ups.tar_output import FeatureSink

    pcm = np.zeros(160, np.int16)
    a, b = ShardWriter(tmp_path / "s", 1, 10), ShardWriter(tmp_path / "s", 1, 10)
    a.write("k1", pcm, {"n": 1})
    b.write("k1", pcm, {"n": 1})  # the same shard, opened by a second writer before the first closes
    a.close()
    b.close()
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["000001-000.tar"]
    rows = np.ones((3, 39), np.float32)
    s1, s2 = (FeatureSink(tmp_path / "f" / "000001.feats.npy", 39) for _ in range(2))
    for s in (s1, s2):
        s.write(rows)
    s1.finish()
    s2.finish()
    assert np.array_equal(np.load(tmp_path / "f" / "000001.feats.npy"), rows)
    assert [p.name for p in (tmp_path / "f").iterdir()] == ["000001.feats.npy"]
