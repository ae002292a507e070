"""Which policy version serves a request.

Knows versions and their LoRA adapters, not the engine: loading and roll-out decisions live
elsewhere. The base policy is always present; a canary is chosen by a sticky hash of the user.
"""

from __future__ import annotations

import hashlib
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

    def __post_init__(self) -> None:
        self.loaded.setdefault(self.stable.version, self.stable)
        if self.canary is not None:
            self.loaded.setdefault(self.canary.version, self.canary)

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
        if self.canary is not None and self.bucket(user_id) < self.canary_fraction:
            return self.canary
        return self.stable
