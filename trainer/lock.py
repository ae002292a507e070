"""One trainer per dataset: an exclusive lock on the data directory, naming who holds it.

Two trainers on one dataset and model store would train the same feedback twice, each at full
CPU, and race on the store's state. The lock is an OS file lock (`flock`), so a killed holder
releases it with its process; the file says where the holder takes requests (its gRPC address,
empty for `flywheel train --once`), so a second `--once` can ask the running service instead.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class LockHolder:
    pid: int
    grpc_address: str  # where TriggerRound reaches the holder; '' for a process with no service


class DatasetLocked(RuntimeError):
    """Another trainer holds the dataset."""

    def __init__(self, path: Path, holder: LockHolder | None) -> None:
        self.holder = holder
        who = f"process {holder.pid}" if holder else "another process"
        where = f", serving gRPC at {holder.grpc_address}" if holder and holder.grpc_address else ""
        super().__init__(f"another trainer ({who}{where}) holds the dataset at {path.parent}; one trainer per dataset")


class DatasetLock:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None

    def acquire(self, grpc_address: str = "") -> None:
        """Take the lock or raise DatasetLocked (never waits)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise DatasetLocked(self.path, read_holder(self.path)) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "grpc_address": grpc_address}).encode(), 0)
        os.fsync(fd)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def read_holder(path: Path) -> LockHolder | None:
    """Who holds (or last held) the lock, from the file; None when it names nobody."""
    try:
        data = json.loads(path.read_text(encoding="utf-8") or "null")
        return LockHolder(int(data["pid"]), str(data.get("grpc_address", ""))) if data else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
