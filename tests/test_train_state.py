"""The training state on disk: a kill at any point leaves at least one complete, loadable state."""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from ups import train_state
from ups.train_state import latest_state, load_state, save_state


def _save(state_dir: Path, step: int, value: float) -> Path:
    model = {"w": torch.full((4, 4), value)}
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(4, 4))], lr=0.1).state_dict()
    return save_state(state_dir, step, model=model, optimizer=opt, rng={"cpu": torch.zeros(2)},
                      info={"fingerprint": "f"}, history=[{"step": step}])


class Killed(BaseException):
    pass


def test_a_kill_while_a_state_of_the_same_step_is_replaced_leaves_a_loadable_state(tmp_path, monkeypatch):
    # The end of a run saves its last step again (a save step, then the final save): the old
    # directory of that step was deleted before the new one took its name, so a kill inside that
    # delete left `done.json` without the weights, and every rerun failed to load it.
    _save(tmp_path, 4, 1.0)
    _save(tmp_path, 6, 2.0)
    real_rmtree = shutil.rmtree

    def killed_mid_delete(path, *a, **kw):
        path = Path(path)
        if path.name.startswith("step-000000006"):
            (path / "model.safetensors").unlink()
            raise Killed
        return real_rmtree(path, *a, **kw)

    monkeypatch.setattr(train_state.shutil, "rmtree", killed_mid_delete)
    with pytest.raises(Killed):
        _save(tmp_path, 6, 3.0)
    monkeypatch.setattr(train_state.shutil, "rmtree", real_rmtree)
    latest = latest_state(tmp_path)
    assert latest is not None
    state = load_state(latest)
    assert state["info"]["step"] in (4, 6)
    assert float(state["model"]["w"][0, 0]) in (1.0, 2.0, 3.0)
    # the next save cleans up what the kill left
    _save(tmp_path, 8, 4.0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.json", "step-000000006",
                                                          "step-000000008"]


# --- bookkeeping: progress, fingerprint, which state to resume ---------------------------------


def test_progress_round_trips_through_a_state_and_rank_0_carries_the_epoch_counters():
    prog = train_state.Progress(total_steps=10, step=4, epoch=1, steps_in_epoch=2, bad_in_row=1,
                                skipped_steps=1, empty_steps=1, epoch_chunks=3, epoch_samples=300,
                                epochs=[{"epoch": 0, "steps": 3}])
    info = {**prog.info(epoch_chunks=12, epoch_samples=1200), "step": prog.step}  # summed over ranks
    assert info["format"] == train_state.STATE_FORMAT
    main = train_state.Progress.restore(info, [{"step": 4}], is_main=True)
    other = train_state.Progress.restore(info, [{"step": 4}], is_main=False)
    assert main == train_state.Progress(total_steps=10, step=4, epoch=1, steps_in_epoch=2, bad_in_row=1,
                                        skipped_steps=1, empty_steps=1, epoch_chunks=12, epoch_samples=1200,
                                        history=[{"step": 4}], epochs=[{"epoch": 0, "steps": 3}])
    assert (other.epoch_chunks, other.epoch_samples) == (0, 0) and other.step == 4


def test_the_fingerprint_ignores_runtime_keys_and_sees_config_labels_and_shards(tmp_path):
    from dataclasses import replace

    import numpy as np

    from ups.config import TrainConfig

    labels = tmp_path / "labels"
    for split in ("train", "valid"):
        (labels / split).mkdir(parents=True)
        np.save(labels / split / "labels.npy", np.arange(6, dtype=np.int16) % 3)
    shards = [Path("train-000000.tar")]
    cfg = TrainConfig()
    base = train_state.fingerprint(cfg, 3, labels, shards)
    assert train_state.fingerprint(replace(cfg, gpus=8, batch_size=4, max_steps=9), 3, labels, shards) == base
    assert train_state.fingerprint(replace(cfg, learning_rate=1e-3), 3, labels, shards) != base
    assert train_state.fingerprint(cfg, 4, labels, shards) != base
    assert train_state.fingerprint(cfg, 3, labels, [Path("train-000001.tar")]) != base
    np.save(labels / "valid" / "labels.npy", (np.arange(6, dtype=np.int16) + 1) % 3)  # renumbered
    assert train_state.fingerprint(cfg, 3, labels, shards) != base
    saved = {"config": asdict(replace(cfg, learning_rate=1e-3, gpus=2))}
    assert train_state.changed_keys(saved, cfg) == ["train.learning_rate"]


def test_choose_state_resumes_its_own_run_and_sets_another_aside(tmp_path):
    from dataclasses import replace

    from ups.config import TrainConfig

    cfg = TrainConfig()
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1).state_dict()

    def save(step: int, fp: str) -> Path:
        info = {"format": train_state.STATE_FORMAT, "fingerprint": fp, "config": asdict(cfg)}
        return save_state(tmp_path, step, model={"w": torch.zeros(2)}, optimizer=opt, rng={}, info=info,
                          history=[])

    assert train_state.choose_state(tmp_path, "a" * 64, cfg) is None  # nothing there
    mine = save(2, "a" * 64)
    assert train_state.choose_state(tmp_path, "a" * 64, cfg) == str(mine)
    assert train_state.choose_state(tmp_path, "b" * 64, cfg) is None  # another run's: set aside
    assert latest_state(tmp_path) is None and (tmp_path / "aside" / ("a" * 16) / mine.name).is_dir()
    back = train_state.choose_state(tmp_path, "a" * 64, cfg)  # the first run again: taken back
    assert back == str(mine) and latest_state(tmp_path) == mine
    assert train_state.choose_state(tmp_path, "a" * 64, replace(cfg, resume=False)) is None
    assert latest_state(tmp_path) is None  # train.resume false: a fresh start, its own states aside
