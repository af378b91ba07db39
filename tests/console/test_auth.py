"""Password hashes, the user list setting, and the loopback rule (pure logic)."""

from __future__ import annotations

import pytest

from common.settings import Settings, SettingsError
from console.auth import Users, hash_password, is_loopback, refusal_to_start, verify_password


def test_a_hash_verifies_its_password_only() -> None:
    hashed = hash_password("s3cret")
    assert hashed.startswith("scrypt.16384.8.1.")
    assert not set(hashed) & set("$:, ")
    assert verify_password("s3cret", hashed)
    assert not verify_password("s3cret ", hashed)
    assert not verify_password("s3cret", hashed[:-2] + ("AA" if not hashed.endswith("AA") else "BB"))
    assert hash_password("s3cret") != hashed  # salted
    with pytest.raises(ValueError):
        hash_password("")


def test_users_from_the_setting() -> None:
    env = {"INGEST_CONSOLE_USERS": f"alice:{hash_password('a')},bob:{hash_password('b')}"}
    users = Users(Settings.from_env(env, dotenv=False).console_users)
    assert users.check("alice", "a") and users.check("bob", "b")
    assert not users.check("alice", "b") and not users.check("carol", "a")


@pytest.mark.parametrize(
    "value", ["alice", "alice:plain-password", f"al ice:{hash_password('a')}", "alice:scrypt.1.2.3.x.y"]
)
def test_a_bad_user_list_is_refused_without_echoing_it(value: str) -> None:
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"INGEST_CONSOLE_USERS": value}, dotenv=False)
    assert "INGEST_CONSOLE_USERS is not valid" in str(refused.value)
    assert value not in str(refused.value)


def test_a_user_named_twice_is_refused() -> None:
    with pytest.raises(SettingsError, match="twice"):
        Settings.from_env({"INGEST_CONSOLE_USERS": f"a:{hash_password('x')},a:{hash_password('y')}"}, dotenv=False)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_addresses(host: str) -> None:
    assert is_loopback(host)
    assert refusal_to_start(host, Users(None)) is None


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "10.0.0.5", "console.example.com"])
def test_without_users_any_other_address_is_refused(host: str) -> None:
    reason = refusal_to_start(host, Users(None))
    assert reason is not None and "\n" not in reason and "INGEST_CONSOLE_USERS" in reason
    env = {"INGEST_CONSOLE_USERS": f"alice:{hash_password('a')}"}
    assert refusal_to_start(host, Users(Settings.from_env(env, dotenv=False).console_users)) is None
