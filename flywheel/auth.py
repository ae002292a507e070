"""Who is calling: Bearer API keys map to user ids; anonymous callers get a stable id.

Serving and feedback resolve identities with this one function, so a feedback token issued
to a user by serving names the same user the feedback service sees.
"""

from __future__ import annotations

import hashlib
import hmac

from pydantic import SecretStr


class Unauthorized(Exception):
    """No usable credentials and anonymous access is off."""


def bearer_key(authorization: str | None) -> str | None:
    if not authorization:
        return None
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return None
    return key.strip()


def admin_key_matches(authorization: str | None, admin_key: SecretStr) -> bool:
    """Whether a request's `Authorization` carries the admin key; constant time, any bytes.

    The one admin check of every service and transport (HTTP routes, gRPC metadata), so none
    compares keys with `!=` or leaks their length through timing.
    """
    key = bearer_key(authorization)
    if key is None:
        return False
    return hmac.compare_digest(key.encode("utf-8", "surrogateescape"), admin_key.get_secret_value().encode("utf-8"))


def resolve_user(
    authorization: str | None,
    api_keys: dict[str, str],
    allow_anonymous: bool,
    anonymous_hint: str | None = None,
) -> str:
    """Map a request's credentials to a user id.

    A known Bearer key gives its user. Otherwise, in anonymous mode, the caller gets
    `anon-key-<hash>` of the key it sent or, without one, `anon-ip-<hash>` of the hint (its
    address): stable across requests and the same in serving and feedback, so canary routing
    stays sticky and the feedback service sees the user its token names. The two prefixes keep
    a caller who sends another's address as a Bearer key from becoming that user.
    """
    key = bearer_key(authorization)
    if key is not None and key in api_keys:
        return api_keys[key]
    if not allow_anonymous:
        raise Unauthorized("a valid API key is required (Authorization: Bearer <key>)")
    if key:
        return "anon-key-" + _short_hash(key)
    return "anon-ip-" + _short_hash(anonymous_hint or "unknown")


def _short_hash(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:16]
