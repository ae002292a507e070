import pytest
from pydantic import SecretStr, ValidationError

from flywheel.auth import Unauthorized, admin_key_matches, resolve_user
from flywheel.settings import PLACEHOLDER_SECRET, FeedbackSettings, ServingSettings, TrainerSettings, is_loopback


def test_placeholder_secret_is_refused_outside_local(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_ENV", "production")
    with pytest.raises(ValidationError, match="placeholder"):
        ServingSettings()
    monkeypatch.setenv("FLYWHEEL_FEEDBACK_TOKEN_SECRET", "a-real-secret")
    with pytest.raises(ValidationError, match="FLYWHEEL_ADMIN_KEY still holds the placeholder"):
        ServingSettings()  # the admin key guards serving's control plane too
    monkeypatch.setenv("FLYWHEEL_ADMIN_KEY", "a-real-admin-key")
    assert ServingSettings().feedback_token_secret.get_secret_value() == "a-real-secret"
    assert ServingSettings().admin_key.get_secret_value() == "a-real-admin-key"


def test_placeholder_secret_is_allowed_locally(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_FEEDBACK_TOKEN_SECRET", raising=False)
    monkeypatch.setenv("FLYWHEEL_ENV", "local")
    assert ServingSettings().feedback_token_secret.get_secret_value() == PLACEHOLDER_SECRET


@pytest.mark.parametrize("settings_class", [ServingSettings, FeedbackSettings, TrainerSettings])
def test_the_placeholder_admin_key_is_refused_beyond_loopback_even_locally(monkeypatch, settings_class):
    monkeypatch.delenv("FLYWHEEL_ADMIN_KEY", raising=False)
    monkeypatch.setenv("FLYWHEEL_ENV", "local")
    for host in ("0.0.0.0", "", "::", "10.1.2.3", "flywheel.example.com"):
        with pytest.raises(ValidationError, match="FLYWHEEL_ADMIN_KEY still holds the placeholder"):
            settings_class(host=host)
    for host in ("127.0.0.1", "localhost", "::1"):
        assert settings_class(host=host).admin_key.get_secret_value() == PLACEHOLDER_SECRET
    assert settings_class(host="0.0.0.0", admin_key="a-real-admin-key").host == "0.0.0.0"


def test_loopback_hosts_are_those_that_reach_this_machine_only():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.8.9.10", "localhost", "LOCALHOST", "::1", "[::1]"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "", "::", "192.168.1.4", "example.com", "127.0.0.1.nip.io"))


@pytest.mark.parametrize("settings_class", [ServingSettings, FeedbackSettings, TrainerSettings])
def test_the_logged_configuration_masks_every_secret(monkeypatch, settings_class):
    monkeypatch.setenv("FLYWHEEL_ADMIN_KEY", "admin-key-value-1")
    monkeypatch.setenv("FLYWHEEL_FEEDBACK_TOKEN_SECRET", "token-secret-value-2")
    monkeypatch.setenv("FLYWHEEL_API_KEYS", "user-key-value-3:alice")
    described = settings_class().describe()
    for secret in ("admin-key-value-1", "token-secret-value-2", "user-key-value-3", "change-me-local-only"):
        assert secret not in described
    assert '"admin_key":"**********"' in described
    assert '"data_dir"' in described  # the rest of the configuration is all there


def test_a_malformed_api_key_entry_is_named_by_position_not_by_its_text():
    with pytest.raises(ValueError) as raised:
        ServingSettings(api_keys="k1:alice,secretkeytext").api_key_map()
    assert "entry 2" in str(raised.value)
    assert "secretkeytext" not in str(raised.value)


def test_the_admin_check_is_exact_and_takes_any_bytes():
    key = SecretStr("the-admin-key")
    assert admin_key_matches("Bearer the-admin-key", key)
    for wrong in (None, "", "Bearer", "Bearer the-admin-ke", "Basic the-admin-key", "Bearer clé-\udcff"):
        assert not admin_key_matches(wrong, key)


def test_api_keys_parse_and_reject_malformed_entries():
    assert ServingSettings(api_keys="k1:alice, k2:bob").api_key_map() == {"k1": "alice", "k2": "bob"}
    with pytest.raises(ValueError, match="not 'key:user_id'"):
        ServingSettings(api_keys="k1alice").api_key_map()


def test_users_resolve_from_keys_or_stable_anonymous_ids():
    keys = {"k1": "alice"}
    assert resolve_user("Bearer k1", keys, allow_anonymous=False) == "alice"
    anon = resolve_user(None, keys, allow_anonymous=True, anonymous_hint="user-7")
    assert anon.startswith("anon-ip-")
    assert anon == resolve_user(None, keys, allow_anonymous=True, anonymous_hint="user-7")
    assert anon != resolve_user(None, keys, allow_anonymous=True, anonymous_hint="user-8")
    with pytest.raises(Unauthorized):
        resolve_user("Bearer unknown", keys, allow_anonymous=False)


def test_an_anonymous_key_and_an_address_never_give_the_same_id():
    by_address = resolve_user(None, {}, allow_anonymous=True, anonymous_hint="10.0.0.7")
    by_key = resolve_user("Bearer 10.0.0.7", {}, allow_anonymous=True, anonymous_hint="10.9.9.9")
    assert by_address.startswith("anon-ip-") and by_key.startswith("anon-key-")
    assert by_address.removeprefix("anon-ip-") == by_key.removeprefix("anon-key-")  # same hash, told apart
    assert by_key == resolve_user("Bearer 10.0.0.7", {}, allow_anonymous=True, anonymous_hint="10.0.0.8")


def test_anonymous_access_is_on_locally_and_off_in_production_unless_enabled(monkeypatch):
    monkeypatch.setenv("FLYWHEEL_FEEDBACK_TOKEN_SECRET", "a-real-secret")
    monkeypatch.setenv("FLYWHEEL_ADMIN_KEY", "a-real-admin-key")
    assert ServingSettings(env="local").allow_anonymous is True
    assert ServingSettings(env="production").allow_anonymous is False
    assert FeedbackSettings(env="production", allow_anonymous=True).allow_anonymous is True
