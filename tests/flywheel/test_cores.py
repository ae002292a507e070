"""flywheel/cores.py: the engine and the trainer on cores of their own under `flywheel up` on a CPU machine."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from pydantic import ValidationError

from flywheel.cores import parse_cpus, split_cores
from flywheel.settings import ServingSettings, TrainerSettings
from tests.conftest import ROOT


def test_core_lists_parse_ids_and_ranges_and_bad_ones_are_refused_by_the_settings():
    assert parse_cpus("1-3,5") == {1, 2, 3, 5} and parse_cpus("0") == {0} and parse_cpus("") == set()
    assert ServingSettings(engine_cpus="1-3,5").engine_cpus == "1-3,5"
    for bad in ("one", "1-", "1;2", "-1"):
        with pytest.raises(ValidationError, match="engine_cpus"):
            ServingSettings(engine_cpus=bad)
        with pytest.raises(ValidationError, match="trainer_cpus"):
            TrainerSettings(trainer_cpus=bad)


def test_the_trainer_takes_the_first_core_and_the_engine_the_rest():
    assert split_cores({}, {0, 1}, gpu=False) == {
        "FLYWHEEL_ENGINE_CPUS": "1", "FLYWHEEL_TRAINER_CPUS": "0", "FLYWHEEL_DUTY_CYCLE": "1",
    }  # fmt: skip
    split = split_cores({"FLYWHEEL_DUTY_CYCLE": "0.5"}, {2, 3, 4, 5}, gpu=False)
    assert split == {"FLYWHEEL_ENGINE_CPUS": "3,4,5", "FLYWHEEL_TRAINER_CPUS": "2", "FLYWHEEL_DUTY_CYCLE": "0.5"}


@pytest.mark.parametrize(
    ("environ", "cpus", "gpu"),
    [
        ({"FLYWHEEL_ENGINE_CPUS": "auto"}, {0, 1}, False),  # the operator chose
        ({"FLYWHEEL_TRAINER_CPUS": "1"}, {0, 1}, False),
        ({"VLLM_CPU_OMP_THREADS_BIND": "0-1"}, {0, 1}, False),
        ({}, {0}, False),  # one core: nothing to split
        ({}, {0, 1}, True),  # the engine computes on the GPU
    ],
)
def test_nothing_is_split_where_the_operator_chose_or_there_is_nothing_to_split(environ, cpus, gpu):
    assert split_cores(environ, cpus, gpu=gpu) == {}


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="pinning to one of several cores needs two")
@pytest.mark.parametrize("setting", ["FLYWHEEL_TRAINER_CPUS", "FLYWHEEL_ENGINE_CPUS"])
def test_a_process_is_pinned_by_its_setting_threads_it_had_and_children_included(setting):
    code = f"""
import os, subprocess, sys, threading
sys.path.insert(0, {str(ROOT)!r})
from flywheel.cores import pin
release = threading.Event()
thread = threading.Thread(target=release.wait)
thread.start()  # a thread from before the pin: serving's front end has some (tokenizers, asyncio)
pin(os.environ[{setting!r}])
child = subprocess.run([sys.executable, "-c", "import os; print(sorted(os.sched_getaffinity(0)))"],
                       capture_output=True, text=True, check=True).stdout.strip()
print(sorted(os.sched_getaffinity(0)), sorted(os.sched_getaffinity(thread.native_id)), child)
release.set()
"""
    core = max(os.sched_getaffinity(0))
    env = {**os.environ, setting: str(core)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert done.stdout.strip() == f"[{core}] [{core}] [{core}]"
