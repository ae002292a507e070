"""Which policy version serves a request.

Knows versions and their LoRA adapters, not the engine: loading and roll-out decisions live in
serving/rollout.py. The base policy is always present; a canary is chosen by a sticky hash of the
user, so one user sees one version for a whole conversation. Requests hold their version while
they run (`using`), so a version is never unloaded under a request that started on it. While the
engine's own weights are swapped (a full-weight version), the router is closed: new requests wait
for it to open, so every request runs on the weights it is labelled with.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from vllm.lora.request import LoRARequest


class UnknownPolicyVersion(LookupError):
    """A request pinned a version that this replica does not serve."""


@dataclass(frozen=True)
class ServedPolicy:
    version: str
    lora: LoRARequest | None = None


@dataclass
class PolicyRouter:
    stable: ServedPolicy
    canary: ServedPolicy | None = None
    canary_fraction: float = 0.0
    loaded: dict[str, ServedPolicy] = field(default_factory=dict)
    in_flight: Counter[str] = field(default_factory=Counter)
    _open: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def __post_init__(self) -> None:
        self.loaded.setdefault(self.stable.version, self.stable)
        if self.canary is not None:
            self.loaded.setdefault(self.canary.version, self.canary)
        self._open.set()

    async def wait_open(self) -> None:
        """Return at once, or once a swap of the engine's weights is over."""
        await self._open.wait()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    @staticmethod
    def bucket(user_id: str) -> float:
        """A stable number in [0, 1) per user: the same user always lands on the same side."""
        digest = hashlib.sha256(user_id.encode("utf-8")).digest()
        return int.from_bytes(digest[:8], "big") / 2**64

    def pick_version(self, user_id: str, pinned: str | None = None) -> ServedPolicy:
        if pinned is not None:
            try:
                return self.loaded[pinned]
            except KeyError:
                raise UnknownPolicyVersion(
                    f"policy version {pinned!r} is not served here; loaded: {sorted(self.loaded)}"
                ) from None
        canary = self.canary
        if canary is not None and self.bucket(user_id) < self.canary_fraction:
            return canary
        return self.stable

    def role(self, version: str) -> str:
        if version == self.stable.version:
            return "stable"
        if self.canary is not None and version == self.canary.version:
            return "canary"
        return "loaded"

    @contextmanager
    def using(self, policy: ServedPolicy) -> Iterator[None]:
        """Mark `policy` busy while a request runs on it."""
        self.in_flight[policy.version] += 1
        try:
            yield
        finally:
            self.in_flight[policy.version] -= 1
            if self.in_flight[policy.version] <= 0:
                del self.in_flight[policy.version]

    def evictable(self, keep: int) -> list[ServedPolicy]:
        """Loaded versions to unload so that at most `keep` stay: idle, neither stable nor canary, oldest first."""
        spare = [
            policy
            for version, policy in self.loaded.items()
            if policy.lora is not None and self.role(version) == "loaded" and not self.in_flight[version]
        ]
        extra = len([p for p in self.loaded.values() if p.lora is not None]) - keep
        return spare[: max(0, extra)]
