"""The training state on disk: a kill at any point leaves at least one complete, loadable state."""

from __future__ import annotations

import shutil
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
