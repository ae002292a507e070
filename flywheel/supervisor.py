"""`flywheel up`: the whole system on one machine as supervised child processes.

Starts each child in its own process group (vLLM's engine processes die with their parent's
group), waits on health checks with a live status display, restarts a crashed child with
back-off, and stops everything in reverse order on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.console import Console
from rich.live import Live
from rich.table import Table

from flywheel.broker import port_open
from flywheel.settings import ServingSettings

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0


def http_ready(url: str) -> Callable[[], bool]:
    def check() -> bool:
        try:
            return httpx.get(url, timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    return check


def wait_http_ready(url: str, process: subprocess.Popen | None = None, timeout_s: float = 300.0) -> None:
    """Poll `url` until it answers 200; fail early if `process` exits first."""
    ready = http_ready(url)
    deadline = time.monotonic() + timeout_s
    while not ready():
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the process exited with code {process.returncode} before {url} was ready")
        if time.monotonic() > deadline:
            raise TimeoutError(f"{url} not ready within {timeout_s:.0f} s")
        time.sleep(0.5)


def tcp_ready(host: str, port: int) -> Callable[[], bool]:
    return lambda: port_open(host, port)


@dataclass
class Child:
    name: str
    argv: list[str]
    ready: Callable[[], bool]
    url: str
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen | None = None
    state: str = "stopped"
    restarts: int = 0
    next_start: float = 0.0
    started_at: float = 0.0

    def start(self, logs_dir: Path) -> None:
        logs_dir.mkdir(parents=True, exist_ok=True)
        log_file = open(logs_dir / f"{self.name}.log", "ab")  # noqa: SIM115 - the child holds it
        self.process = subprocess.Popen(
            self.argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env={**os.environ, **self.env},
            start_new_session=True,
        )
        log_file.close()
        self.state = "starting"
        self.started_at = time.monotonic()

    def stop(self, timeout_s: float = 20.0) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("%s did not stop in %.0f s; killing it", self.name, timeout_s)
        try:
            os.killpg(self.process.pid, signal.SIGKILL)  # whatever the child left in its group
        except ProcessLookupError:
            pass
        self.process.wait()
        self.state = "stopped"


class Supervisor:
    def __init__(self, children: list[Child], logs_dir: Path, console: Console | None = None) -> None:
        self.children = children
        self.logs_dir = logs_dir
        self.console = console or Console(stderr=True)
        self._stopping = False

    def _table(self) -> Table:
        table = Table(title="flywheel up", expand=False)
        for column in ("process", "state", "pid", "restarts", "address"):
            table.add_column(column)
        for child in self.children:
            pid = str(child.process.pid) if child.process and child.process.poll() is None else "-"
            table.add_row(child.name, child.state, pid, str(child.restarts), child.url)
        return table

    def _tick(self) -> None:
        now = time.monotonic()
        for child in self.children:
            if child.state == "backoff" and now >= child.next_start:
                child.start(self.logs_dir)
            elif child.process is not None and child.process.poll() is not None and child.state != "backoff":
                child.restarts += 1
                delay = min(MAX_BACKOFF_S, 2.0 ** min(child.restarts, 5))
                log.error(
                    "%s exited with code %s; restarting in %.0f s (log: %s)",
                    child.name,
                    child.process.returncode,
                    delay,
                    self.logs_dir / f"{child.name}.log",
                )
                child.state = "backoff"
                child.next_start = now + delay
            elif child.state == "starting" and child.ready():
                child.state = "ready"
                log.info("%s ready in %.0f s", child.name, now - child.started_at)

    def _handle_signal(self, *_: object) -> None:
        self._stopping = True

    def run(self, on_ready: Callable[[], None] | None = None) -> int:
        signal.signal(signal.SIGTERM, self._handle_signal)
        signal.signal(signal.SIGINT, self._handle_signal)
        announced = False
        try:
            with Live(self._table(), console=self.console, refresh_per_second=2, transient=False) as live:
                # Start in order, each once the previous one is ready (serving needs the broker).
                for child in self.children:
                    child.start(self.logs_dir)
                    while not self._stopping and child.state != "ready":
                        self._tick()
                        live.update(self._table())
                        time.sleep(0.5)
                    if self._stopping:
                        break
                while not self._stopping:
                    self._tick()
                    live.update(self._table())
                    if not announced and all(c.state == "ready" for c in self.children):
                        announced = True
                        if on_ready:
                            live.stop()
                            on_ready()
                            live.start()
                    time.sleep(0.5)
        finally:
            self.console.print("stopping…")
            for child in reversed(self.children):
                child.stop()
            self.console.print("all processes stopped")
        return 0


def python_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "flywheel.cli", *args]


# -- `flywheel up`


@dataclass(frozen=True)
class Ports:
    """Where `flywheel up` puts each service on 127.0.0.1."""

    broker: int
    serving: int
    serving_grpc: int
    feedback: int
    feedback_grpc: int
    trainer: int
    trainer_grpc: int


def up(settings: ServingSettings, ports: Ports) -> int:
    """Broker, serving, feedback and trainer as children of one supervisor, until Ctrl-C."""
    from flywheel.cores import split_cores
    from flywheel.models import resolve_model
    from flywheel.settings import PLACEHOLDER_SECRET

    data_dir = settings.data_dir.resolve()
    model = resolve_model(settings.model, data_dir / "models")  # converts the default once, with progress
    kafka = f"127.0.0.1:{ports.broker}"
    serving_url = f"http://127.0.0.1:{ports.serving}"
    feedback_url = f"http://127.0.0.1:{ports.feedback}"
    trainer_url = f"http://127.0.0.1:{ports.trainer}"
    env = {
        "FLYWHEEL_DATA_DIR": str(data_dir),
        "FLYWHEEL_KAFKA_BOOTSTRAP": kafka,
        # The pages (served by serving) call feedback and the trainer from the browser: serving must
        # know where they are, and they must allow serving's origin (CORS).
        "FLYWHEEL_FEEDBACK_PUBLIC_URL": feedback_url,
        "FLYWHEEL_TRAINER_PUBLIC_URL": trainer_url,
        "FLYWHEEL_JUDGE__FEEDBACK_URL": feedback_url,  # an AI judge's verdicts go through this stack's feedback
        "FLYWHEEL_CORS_ORIGINS": f"{serving_url},http://localhost:{ports.serving}",
        **split_cores(os.environ),
    }
    children = [
        Child(
            "broker",
            python_cli("broker", "--port", str(ports.broker)),
            tcp_ready("127.0.0.1", ports.broker),
            kafka,
            env,
        ),
        Child(
            "serving",
            python_cli(
                "serve", "--model", model, "--port", str(ports.serving), "--grpc-port", str(ports.serving_grpc)
            ),
            http_ready(f"{serving_url}/readyz"),
            serving_url,
            env,
        ),
        Child(
            "feedback",
            python_cli("feedback", "--port", str(ports.feedback), "--grpc-port", str(ports.feedback_grpc)),
            http_ready(f"{feedback_url}/readyz"),
            f"{feedback_url} (gRPC :{ports.feedback_grpc})",
            env,
        ),
        Child(
            "trainer",
            python_cli(
                "train", "--model", model, "--port", str(ports.trainer), "--grpc-port", str(ports.trainer_grpc)
            ),
            http_ready(f"{trainer_url}/readyz"),
            f"{trainer_url}/status (gRPC :{ports.trainer_grpc})",
            env,
        ),
    ]

    admin_key_hint = (
        f"admin key: {PLACEHOLDER_SECRET!r}, the local placeholder; set FLYWHEEL_ADMIN_KEY to change it"
        if settings.admin_key.get_secret_value() == PLACEHOLDER_SECRET
        else "admin key: the value of FLYWHEEL_ADMIN_KEY"
    )

    def announce() -> None:
        print(  # noqa: T201
            f"\nFlywheel is up.\n  chat page:     {serving_url}/\n"
            f"  operator page: {serving_url}/ops ({admin_key_hint})\n"
            f"  chat API:      {serving_url}/v1/chat/completions\n"
            f"  feedback API:  {feedback_url}/v1/feedback, /v1/comparisons (gRPC 127.0.0.1:{ports.feedback_grpc})\n"
            f"  trainer:       {trainer_url}/status (flywheel status; gRPC 127.0.0.1:{ports.trainer_grpc})\n"
            f"  roll-out:      {serving_url}/v1/policy (flywheel versions | promote | rollback | canary;"
            f" gRPC 127.0.0.1:{ports.serving_grpc})\n"
            f"  metrics:       {serving_url}/metrics, {feedback_url}/metrics, {trainer_url}/metrics\n"
            f"  Kafka:         {kafka}\n"
            f"  logs:          {data_dir / 'logs'}\nCtrl-C stops everything."
        )

    return Supervisor(children, data_dir / "logs").run(on_ready=announce)
