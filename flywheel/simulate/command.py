"""The `flywheel simulate` command: check the services, run with a live progress line, report."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.text import Text

from flywheel.simulate.preferences import load_preference
from flywheel.simulate.report import build_report, load_prompts, progress_line, summary_text, write_outputs
from flywheel.simulate.runner import Simulation, SimulationConfig, check_services


def simulate(
    config: SimulationConfig,
    preference_spec: str,
    out_dir: Path,
    prompts_path: Path | None = None,
    window_s: float | None = None,
) -> int:
    """Run a simulation against the running stack; writes report.json and satisfaction.png.

    Returns the exit status: 0 when feedback was accepted, 1 when none was (or the keys were
    refused), 130 when interrupted (the report of what was done is still written).
    """
    for name in ("httpx", "httpx2", "openai"):  # the live line stands for their per-request logs
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))
    _interrupt_on_signals()
    preference = load_preference(preference_spec)
    prompts = load_prompts(prompts_path)
    try:
        model = check_services(config)
    except KeyboardInterrupt:
        return 130
    simulation = Simulation(config, preference, prompts, model)
    status = Console(stderr=True)
    interrupted = False
    with Live(get_renderable=lambda: Text(progress_line(simulation)), console=status, refresh_per_second=2,
              transient=False), _status_lines(simulation, status):  # fmt: skip
        try:
            interrupted = asyncio.run(_run_until_signalled(simulation))
        except KeyboardInterrupt:
            interrupted = True
    report = build_report(simulation, window_s, interrupted)
    json_path, png_path = write_outputs(report, out_dir, simulation.tally)
    print(summary_text(report, json_path, png_path))  # noqa: T201 - the command's own output
    if simulation.fatal:
        print(f"flywheel: {simulation.fatal}", file=sys.stderr)  # noqa: T201
        return 1
    if interrupted:
        return 130
    return 0 if report["overall"]["events_accepted"] else 1


async def _run_until_signalled(simulation: Simulation) -> bool:
    """Run the simulation; SIGINT or SIGTERM cancels it cleanly (True: it was stopped so)."""
    loop, task = asyncio.get_running_loop(), asyncio.current_task()
    stopped = False

    def stop() -> None:
        nonlocal stopped
        stopped = True
        task.cancel()

    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop)
    try:
        await simulation.run()
    except asyncio.CancelledError:
        if not stopped:
            raise
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        _interrupt_on_signals()  # removing them restored the defaults: keep the report safe while it is written
    return stopped


def _interrupt(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt


def _interrupt_on_signals() -> None:
    """SIGTERM and SIGINT stop the run with its report, even when started in the background
    (a shell starts background jobs with SIGINT ignored, so Ctrl-C's signal would do nothing)."""
    signal.signal(signal.SIGTERM, _interrupt)
    signal.signal(signal.SIGINT, _interrupt)


@contextmanager
def _status_lines(simulation: Simulation, console: Console, every_s: float = 30.0) -> Iterator[None]:
    """Where stderr is no terminal (a log file), the live line cannot redraw: print it every `every_s`."""
    if console.is_terminal:
        yield
        return
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(every_s):
            print(progress_line(simulation), file=sys.stderr, flush=True)  # noqa: T201

    thread = threading.Thread(target=report, name="simulate-status", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
