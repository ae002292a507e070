"""Feedback tokens: proof that a user was served a choice, checkable without a database.

Serving signs (completion id, choice index, choice count, user id, policy version, issue time)
with a secret it shares with the feedback service; the feedback service verifies the signature,
the token's age and that the claims match the request. Tokens are opaque strings to clients:
whatever a client sends instead, verify answers InvalidFeedbackToken, never another error.
"""

from __future__ import annotations

import base64
import hmac
import json
import time
from dataclasses import asdict, dataclass

_PREFIX = "fw1"


class InvalidFeedbackToken(ValueError):
    """The token is malformed, forged or altered."""


class ExpiredFeedbackToken(InvalidFeedbackToken):
    """The token is genuine but older than the tokens' time to live."""


@dataclass(frozen=True)
class TokenClaims:
    completion_id: str
    choice_index: int
    choice_count: int
    user_id: str
    policy_version: str
    issued_at: int


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FeedbackToken:
    """Signs and verifies feedback tokens with one HMAC-SHA256 key; `ttl_s` > 0 bounds their age."""

    def __init__(self, secret: str, ttl_s: float = 0) -> None:
        if not secret:
            raise ValueError("the feedback token secret must not be empty")
        self._key = secret.encode("utf-8")
        self.ttl_s = ttl_s

    def _sign(self, payload: str) -> str:
        return _b64(hmac.digest(self._key, payload.encode("ascii"), "sha256"))

    def issue(
        self,
        completion_id: str,
        choice_index: int,
        choice_count: int,
        user_id: str,
        policy_version: str,
        issued_at: int | None = None,
    ) -> str:
        claims = TokenClaims(
            completion_id=completion_id,
            choice_index=choice_index,
            choice_count=choice_count,
            user_id=user_id,
            policy_version=policy_version,
            issued_at=int(time.time()) if issued_at is None else issued_at,
        )
        payload = _b64(json.dumps(asdict(claims), separators=(",", ":")).encode("utf-8"))
        return f"{_PREFIX}.{payload}.{self._sign(payload)}"

    def verify(self, token: str) -> TokenClaims:
        """Return the token's claims, or raise InvalidFeedbackToken (malformed, forged, expired)."""
        # Issued tokens are ASCII; anything else would raise in _sign() or compare_digest() below.
        parts = token.split(".") if isinstance(token, str) and token.isascii() else []
        if len(parts) != 3 or parts[0] != _PREFIX:
            raise InvalidFeedbackToken("feedback_token is malformed")
        _, payload, signature = parts
        if not hmac.compare_digest(self._sign(payload), signature):
            raise InvalidFeedbackToken("feedback_token signature does not match")
        try:
            claims = TokenClaims(**json.loads(_unb64(payload)))
        except (ValueError, TypeError) as exc:
            raise InvalidFeedbackToken("feedback_token payload is malformed") from exc
        age = time.time() - claims.issued_at
        if self.ttl_s > 0 and age > self.ttl_s:
            raise ExpiredFeedbackToken(
                f"feedback_token has expired (issued {age / 3600:.0f} h ago; tokens are valid for "
                f"{self.ttl_s / 3600:g} h): rate a newer answer"
            )
        return claims
