import itertools

import pytest

from ups.config import ConfigError
from ups.work_share import WorkShare, work_share


def array(task: int, count: int, lo: int = 0, **extra: str) -> dict[str, str]:
    return {"SLURM_ARRAY_TASK_ID": str(task), "SLURM_ARRAY_TASK_COUNT": str(count),
            "SLURM_ARRAY_TASK_MIN": str(lo), "SLURM_ARRAY_TASK_MAX": str(lo + count - 1), **extra}


def test_one_process_takes_everything_and_finishes():
    s = work_share({})
    assert s == WorkShare() and s.take([4, 5, 6]) == [4, 5, 6]
    assert s.finishes and not s.collective and not s.in_array


def test_torchrun_ranks_meet_and_rank_0_finishes():
    r1 = work_share({"RANK": "1", "WORLD_SIZE": "3"})
    assert r1.take(list(range(8))) == [1, 4, 7] and r1.collective and not r1.finishes
    assert work_share({"RANK": "0", "WORLD_SIZE": "3"}).finishes


def test_array_task_counts_from_the_array_minimum_and_never_finishes():
    s = work_share(array(task=12, count=4, lo=10))
    assert (s.rank, s.world) == (2, 4) and s.in_array and not s.collective
    assert not s.finishes and s.take(list(range(10))) == [2, 6]
    assert not work_share(array(task=10, count=4, lo=10)).finishes  # task 0 too: tasks never meet


def test_torchrun_inside_an_array_task_splits_the_task_further():
    s = work_share({**array(task=1, count=2), "RANK": "1", "WORLD_SIZE": "2"})
    assert (s.rank, s.world) == (3, 4) and s.collective and not s.finishes


@pytest.mark.parametrize(("count", "group"), [(1, 1), (2, 1), (3, 2), (5, 3)])
def test_the_shares_cover_every_unit_once(count, group):
    units = list(range(17))
    taken = []
    for task, rank in itertools.product(range(count), range(group)):
        env = {**array(task=task + 7, count=count, lo=7), "RANK": str(rank), "WORLD_SIZE": str(group)}
        taken += work_share(env).take(units)
    assert sorted(taken) == units


def test_an_empty_array_id_is_no_array():
    assert work_share({"SLURM_ARRAY_TASK_ID": ""}) == WorkShare()


@pytest.mark.parametrize(("env", "match"), [
    ({"SLURM_ARRAY_TASK_ID": "1", "SLURM_ARRAY_TASK_COUNT": "3", "SLURM_ARRAY_TASK_MIN": "1",
      "SLURM_ARRAY_TASK_MAX": "7"}, "contiguous"),                       # --array=1,4,7
    (array(task=0, count=2, SLURM_ARRAY_TASK_STEP="4"), "contiguous"),   # a stepped range
    (array(task=9, count=2), "outside"),
    ({**array(task=0, count=2), "SLURM_ARRAY_TASK_ID": "x"}, "SLURM_ARRAY_TASK_ID must be an integer"),
    ({"SLURM_ARRAY_TASK_ID": "0"}, "SLURM_ARRAY_TASK_COUNT is not set"),
    ({"RANK": "3", "WORLD_SIZE": "2"}, "RANK must be in"),
])
def test_bad_variables_fail_naming_them(env, match):
    with pytest.raises(ConfigError, match=match):
        work_share(env)


def test_a_rerun_of_some_tasks_takes_the_shares_they_had_in_the_whole_array():
    units = list(range(10))
    whole = {t: work_share({**array(task=t, count=4), "UPS_ARRAY_SIZE": "4"}).take(units) for t in range(4)}
    # --array=1,3: Slurm says 2 tasks between 1 and 3, not a contiguous range
    rerun = {"SLURM_ARRAY_TASK_COUNT": "2", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_MAX": "3",
             "UPS_ARRAY_SIZE": "4"}
    for t in (1, 3):
        s = work_share({**rerun, "SLURM_ARRAY_TASK_ID": str(t)})
        assert s.take(units) == whole[t] and s.in_array and not s.finishes
    assert whole == {0: [0, 4, 8], 1: [1, 5, 9], 2: [2, 6], 3: [3, 7]}
    with pytest.raises(ConfigError, match=r"SLURM_ARRAY_TASK_ID 4 is outside \[0, 4\)"):
        work_share({**rerun, "SLURM_ARRAY_TASK_ID": "4"})
