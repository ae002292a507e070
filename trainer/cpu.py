"""How the trainer yields the CPU to serving on a shared machine: a scheduling policy for its process.

`flywheel train` applies `nice` (its `nice` setting); `bench/sharing.py` measures all three with this same code.
`idle` is Linux's SCHED_IDLE: the trainer runs only on a core no other task wants, and a waking
serving thread takes the core back at once; `nice` lowers the trainer's weight by the `nice`
setting but still gives it time slices, and `normal` competes on equal terms.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def yield_cpu(policy: str, nice: int = 10, threads: int | None = 1) -> None:
    """Apply `policy` to this process (inherited by the threads and children it starts afterwards)."""
    if policy == "idle":
        if hasattr(os, "SCHED_IDLE"):
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        else:  # not Linux: the lowest niceness is the nearest thing
            os.nice(19)
    elif policy == "nice":
        os.nice(nice)
    elif policy != "normal":
        raise ValueError(f"cpu policy must be idle, nice or normal, not {policy!r}")
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    log.info("the trainer yields the CPU by policy %s (nice %d, %s torch threads)", policy, os.nice(0), threads)
