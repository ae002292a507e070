import pytest
from pydantic import ValidationError

from flywheel.auth import Unauthorized, resolve_user
from flywheel.settings import PLACEHOLDER_SECRET, ServingSettings


def test_placeholder_secret_is_refused_outside_local(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_ENV", "production")
    with pytest.raises(ValidationError, match="placeholder"):
        ServingSettings()
    monkeypatch.setenv("FLYWHEEL_FEEDBACK_TOKEN_SECRET", "a-real-secret")
    with pytest.raises(ValidationError, match="FLYWHEEL_ADMIN_KEY still holds the placeholder"):
        ServingSettings()  # the admin key guards serving's control plane too
    monkeypatch.setenv("FLYWHEEL_ADMIN_KEY", "a-real-admin-key")
    assert ServingSettings().feedback_token_secret == "a-real-secret"
    assert ServingSettings().admin_key == "a-real-admin-key"


def test_placeholder_secret_is_allowed_locally(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_FEEDBACK_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("FLYWHEEL_ENV", "local")
    assert ServingSettings().feedback_token_secret == PLACEHOLDER_SECRET


def test_api_keys_parse_and_reject_malformed_entries():
    assert ServingSettings(api_keys="k1:alice, k2:bob").api_key_map() == {"k1": "alice", "k2": "bob"}
    with pytest.raises(ValueError, match="not 'key:user_id'"):
        ServingSettings(api_keys="k1alice").api_key_map()


def test_users_resolve_from_keys_or_stable_anonymous_ids():
    keys = {"k1": "alice"}
    assert resolve_user("Bearer k1", keys, allow_anonymous=False) == "alice"
    anon = resolve_user(None, keys, allow_anonymous=True, anonymous_hint="user-7")
    assert anon.startswith("anon-")
    assert anon == resolve_user(None, keys, allow_anonymous=True, anonymous_hint="user-7")
    assert anon != resolve_user(None, keys, allow_anonymous=True, anonymous_hint="user-8")
    with pytest.raises(Unauthorized):
        resolve_user("Bearer unknown", keys, allow_anonymous=False)
