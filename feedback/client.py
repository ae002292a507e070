"""Client side of the feedback admin route: `flywheel import FILE.jsonl` sends offline pairs.

Lines are checked before anything is sent (a JSON object with non-empty "chosen" and
"rejected"; optional "prompt"), then posted in chunks; the service's idempotency keys make a
re-run of the same file count nothing twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from rich.progress import Progress

CHUNK = 500


@dataclass
class ImportResult:
    accepted: int = 0
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        lines = [f"accepted {self.accepted}, already imported {self.duplicates}, rejected {len(self.rejected)}"]
        lines += [f"  {reason}" for reason in self.rejected[:20]]
        return "\n".join(lines)


def read_pairs(path: Path) -> tuple[list[dict], list[tuple[int, dict]], list[str]]:
    """(pairs to send, (line number, pair) for each, reasons for the lines refused here)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    pairs, numbered, refused = [], [], []
    with open(path, encoding="utf-8") as handle:
        for number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                refused.append(f"line {number}: not JSON ({exc.msg})")
                continue
            if not isinstance(row, dict) or not all(
                isinstance(row.get(k), str) and row[k] for k in ("chosen", "rejected")
            ):
                refused.append(f"line {number}: needs non-empty string fields 'chosen' and 'rejected'")
                continue
            pair = {k: row[k] for k in ("chosen", "rejected", "prompt") if isinstance(row.get(k), str)}
            pairs.append(pair)
            numbered.append((number, pair))
    return pairs, numbered, refused


def import_pairs(path: Path, feedback_url: str, admin_key: str, source: str = "import") -> ImportResult:
    pairs, numbered, refused = read_pairs(path)
    result = ImportResult(rejected=refused)
    url = f"{feedback_url.rstrip('/')}/v1/preferences/import"
    with httpx.Client(timeout=120) as client, Progress() as progress:
        task = progress.add_task(f"importing {path.name}", total=len(pairs))
        for start in range(0, len(pairs), CHUNK):
            chunk = pairs[start : start + CHUNK]
            try:
                response = client.post(
                    url, json={"pairs": chunk, "source": source}, headers={"Authorization": f"Bearer {admin_key}"}
                )
            except httpx.HTTPError as exc:
                raise RuntimeError(f"the feedback service at {feedback_url} did not answer: {exc}") from None
            if response.status_code != 202:
                try:
                    message = response.json()["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = response.text[:200]
                raise RuntimeError(f"import refused ({response.status_code}): {message}")
            body = response.json()
            result.accepted += body["accepted"]
            result.duplicates += body["duplicates"]
            for item in body.get("rejected", []):
                number = numbered[start + item["index"]][0]
                result.rejected.append(f"line {number}: {item['message']}")
            progress.advance(task, len(chunk))
    return result
