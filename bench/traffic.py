"""Simulated users for the fault suite and the load benchmark, and what the trainer stored of what they sent.

Each user chats, then sends one thumbs for the answer with an idempotency key of its own, and
retries it as a client would (connection errors, 429 and 503) until it is accepted or the time
is up. Every 202's event id is kept, so that the trainer's store can be checked against it.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import httpx

from bench.learning import Stack

ADMIN_KEY = "fault-suite-admin-key"
USERS = 4
ACCESS = {"FLYWHEEL_ADMIN_KEY": ADMIN_KEY,
          "FLYWHEEL_API_KEYS": ",".join(f"fault-key-{i}:fault-user-{i}" for i in range(USERS))}  # fmt: skip


class Traffic:
    """Simulated users in threads: chat, then one thumbs per answer, retried with its own key until accepted."""

    def __init__(self, stack: Stack, retry_s: float, threads: int = 2, max_tokens: int = 8, pause_s: float = 0.2,
                 ) -> None:  # fmt: skip
        self.stack, self.retry_s, self.max_tokens, self.pause_s = stack, retry_s, max_tokens, pause_s
        self.seconds: dict[str, list[tuple[float, float]]] = {"chat": [], "feedback": []}  # (when, latency)
        self.chat = Counter()  # outcome -> count
        self.feedback = Counter()  # sent, accepted, given_up, and each refusal's status
        self.accepted: set[str] = set()  # the event ids 202s named
        self.errors: list[str] = []  # answers no client should get: 5xx but 503, an unexpected 4xx
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._turn = 0
        self._threads = [threading.Thread(target=self._work, daemon=True) for _ in range(threads)]

    def start(self) -> Traffic:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.retry_s + 60)

    def _count(self, counter: Counter, outcome: str, detail: str = "") -> None:
        with self._lock:
            counter[outcome] += 1
            if detail and len(self.errors) < 50:
                self.errors.append(detail)

    def _work(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set():
                with self._lock:
                    self._turn += 1
                    turn = self._turn
                self._one(client, turn)
                self._stop.wait(self.pause_s)

    def _one(self, client: httpx.Client, turn: int) -> None:
        headers = {"Authorization": f"Bearer fault-key-{turn % USERS}"}
        body = {
            "messages": [{"role": "user", "content": f"Say something about the number {turn}."}],
            "max_tokens": self.max_tokens,
        }
        try:
            started = time.perf_counter()
            response = client.post(f"{self.stack.url('serving')}/v1/chat/completions", json=body, headers=headers)
            self.seconds["chat"].append((time.monotonic(), time.perf_counter() - started))
        except httpx.HTTPError as exc:
            self._count(self.chat, "unreachable" if isinstance(exc, httpx.ConnectError) else type(exc).__name__)
            self._stop.wait(1.0)
            return
        if response.status_code != 200:
            clear = response.status_code in (429, 503)
            self._count(self.chat, str(response.status_code), "" if clear else f"chat {response.status_code}: "
                        f"{response.text[:200]}")  # fmt: skip
            self._stop.wait(1.0)
            return
        self._count(self.chat, "ok")
        answer = response.json()
        choice = answer["choices"][0]
        rating = "up" if len((choice["message"]["content"] or "").split()) % 2 == 0 else "down"
        thumbs = {"completion_id": answer["id"], "choice_index": 0, "rating": rating,
                  "feedback_token": choice["feedback_token"], "idempotency_key": f"fault-{turn}"}  # fmt: skip
        self._send(client, thumbs, headers)

    def _send(self, client: httpx.Client, thumbs: dict, headers: dict) -> None:
        self._count(self.feedback, "sent")
        deadline = time.monotonic() + self.retry_s
        while True:
            try:
                started = time.perf_counter()
                response = client.post(f"{self.stack.url('feedback')}/v1/feedback", json=thumbs, headers=headers)
                self.seconds["feedback"].append((time.monotonic(), time.perf_counter() - started))
                status = str(response.status_code)
            except httpx.HTTPError as exc:
                response, status = None, "unreachable" if isinstance(exc, httpx.ConnectError) else type(exc).__name__
            if response is not None and response.status_code == 202:
                with self._lock:
                    self.feedback["accepted"] += 1
                    self.accepted.add(response.json()["event_id"])
                return
            unclear = response is not None and response.status_code not in (429, 503)
            detail = f"feedback {status}: {response.text[:200]}" if unclear else ""
            self._count(self.feedback, f"refused {status}", detail)
            if unclear or time.monotonic() > deadline:
                self._count(self.feedback, "given_up")
                return
            time.sleep(1.0)


def stored_feedback(data_dir: Path) -> list[tuple[str, str]]:
    """(idempotency key, event id) of every feedback event in the trainer's store."""
    from flywheel.settings import TOPIC_FEEDBACK

    path = data_dir / "trainer" / "dataset.sqlite"
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)) as db:
        query = "SELECT idempotency_key, event_id FROM events WHERE topic = ?"
        return db.execute(query, (TOPIC_FEEDBACK,)).fetchall()


def settle(stack: Stack, accepted: set[str], timeout_s: float) -> list[tuple[str, str]]:
    """Wait until the trainer holds every accepted event (or the time is up)."""
    deadline = time.monotonic() + timeout_s
    while True:
        rows = stored_feedback(stack.data_dir)
        if accepted <= {event_id for _, event_id in rows} or time.monotonic() > deadline:
            return rows
        time.sleep(2)


def feedback_counts(sent: Counter, accepted: set[str], rows: list[tuple[str, str]]) -> dict:
    """What the users sent against what the trainer stored: each 202 once, nothing lost."""
    stored_ids = Counter(event_id for _, event_id in rows)
    keys = Counter(key for key, _ in rows)
    return {
        **dict(sent),
        "stored": len(accepted & set(stored_ids)),
        "duplicates": sum(n - 1 for n in keys.values() if n > 1) + sum(n - 1 for n in stored_ids.values() if n > 1),
        "stored_unanswered": len(set(stored_ids) - accepted),  # committed, but its 202 never arrived
        "lost": len(accepted - set(stored_ids)),
        "lost_ids": sorted(accepted - set(stored_ids))[:20],  # to look up in the feedback outbox and the logs
    }


def report(run: Callable[[argparse.Namespace], dict], args: argparse.Namespace) -> int:
    """A benchmark's `main`: logs, signals that still stop the stack, the run; its JSON printed (and to --out)."""
    from bench.cleanup import stop_on_signals

    stop_on_signals()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    result = run(args)
    text = json.dumps(result, indent=2, default=str)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n", encoding="utf-8")
    print(text)
    return 0 if result["ok"] else 1
