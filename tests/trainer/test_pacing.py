"""The trainer's duty cycle (trainer/pacing.py) and CPU policy (trainer/cpu.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
import torch

from trainer import pacing
from trainer.cpu import yield_cpu


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def pacer(duty: float, contended: bool = True) -> tuple[pacing.Pacer, Clock]:
    clock = Clock()
    return pacing.Pacer(duty, slice_s=0.2, contended=lambda: contended, clock=clock, sleep=clock.sleep), clock


def test_a_slice_of_compute_is_followed_by_a_pause_that_keeps_the_duty():
    pace, clock = pacer(0.25)
    clock.now += 0.1
    pace()
    assert clock.slept == []  # inside a slice: nothing
    clock.now += 0.2
    pace()
    assert clock.slept == [pytest.approx(0.3 * 3)]  # 0.3 s of compute at duty 1/4: 0.9 s of rest
    assert pace.slept_s == pytest.approx(0.9)
    clock.now += 0.3
    pace()
    assert clock.slept[-1] == pytest.approx(0.9)  # counted from the end of the last pause


def test_no_pause_while_the_machine_is_otherwise_idle():
    pace, clock = pacer(0.5, contended=False)
    for _ in range(10):
        clock.now += 1.0
        pace()
    assert clock.slept == [] and pace.slept_s == 0


def test_a_long_stretch_without_a_hook_pauses_at_most_a_capped_time():
    pace, clock = pacer(0.5)
    clock.now += 60.0  # a long backward pass: no module hook fires inside it
    pace()
    assert clock.slept == [pytest.approx(5.0)]


@pytest.mark.parametrize("duty", [0.0, -0.5, 1.5])
def test_a_duty_outside_zero_to_one_is_refused(duty):
    with pytest.raises(ValueError, match="duty"):
        pacing.Pacer(duty)


def test_others_busy_sees_another_process_burn_a_core_and_not_itself():
    busy = pacing.OthersBusy(threshold=0.5)
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:  # this process burns a core: not "others"
        pass
    alone = busy.others_cores()
    burner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(1.5)
        busy()  # restart the window once the burner runs
        time.sleep(1.0)
        beside = busy.others_cores()
    finally:
        burner.kill()
        burner.wait()
    # relative, not absolute: the tests' own services may be using a little CPU meanwhile
    assert beside - alone > 0.6, (alone, beside)


def test_the_installed_hook_paces_real_torch_modules():
    layer = torch.nn.Linear(64, 64)
    try:
        pace = pacing.install(0.5)
        pace.contended = lambda: True
        pace.slice_s = 0.0
        x = torch.randn(4, 64)
        started = time.process_time()  # the pacer counts compute in CPU time: a busy machine gives less of it
        while time.process_time() - started < 0.3:
            layer(x)
        assert pace.slept_s > 0.1  # duty 0.5: about as long asleep as computing
        assert pacing.install(1.0) is None  # duty 1: the hook is gone
        slept = pace.slept_s
        layer(x)
        assert pace.slept_s == slept
    finally:
        pacing.uninstall()


def test_cpu_policies_in_a_child_process():
    code = (
        "import os, sys; sys.path.insert(0, {root!r}); from trainer.cpu import yield_cpu; "
        "yield_cpu({policy!r}, nice=7, threads=1); import torch; "
        "print(os.sched_getscheduler(0), os.nice(0), torch.get_num_threads())"
    )
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    outputs = {}
    for policy in ("idle", "nice", "normal"):
        done = subprocess.run([sys.executable, "-c", code.format(root=root, policy=policy)],
                              capture_output=True, text=True, check=True)  # fmt: skip
        outputs[policy] = done.stdout.split()
    assert outputs["idle"][0] == str(os.SCHED_IDLE)
    assert outputs["nice"][1] == "7" and outputs["nice"][0] == str(os.SCHED_OTHER)
    assert outputs["normal"] == [str(os.SCHED_OTHER), "0", "1"]


def test_an_unknown_cpu_policy_is_refused():
    with pytest.raises(ValueError, match="idle, nice or normal"):
        yield_cpu("greedy", threads=None)
