"""The example servers' credential checks, without a server (the HTTP tests are in test_examples_webhooks)."""

from __future__ import annotations

import pytest

from keyed_dispatch.demo import ADMIN_TOKEN_ENV, WEBHOOK_SECRET_ENV, Credentials

SECRET = "s3cret-Value_1"  # noqa: S105 - the tests' own values
TOKEN = "t0ken-Value_2"  # noqa: S105 - idem
BOTH = Credentials(SECRET, TOKEN)


def test_from_env_reads_both_and_treats_empty_as_unset() -> None:
    assert Credentials.from_env({WEBHOOK_SECRET_ENV: SECRET, ADMIN_TOKEN_ENV: TOKEN}) == BOTH
    assert Credentials.from_env({WEBHOOK_SECRET_ENV: "", ADMIN_TOKEN_ENV: TOKEN}) == Credentials(None, TOKEN)
    assert Credentials.from_env({}) == Credentials()


def test_from_env_reads_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WEBHOOK_SECRET_ENV, SECRET)
    monkeypatch.delenv(ADMIN_TOKEN_ENV, raising=False)
    assert Credentials.from_env() == Credentials(SECRET, None)


@pytest.mark.parametrize("bad", ["with space", "tab\there", "café-key", "line\nbreak"])
def test_a_malformed_value_names_the_variable_not_the_value(bad: str) -> None:
    with pytest.raises(ValueError, match=ADMIN_TOKEN_ENV) as info:
        Credentials.from_env({ADMIN_TOKEN_ENV: bad})
    assert bad not in str(info.value)
    with pytest.raises(ValueError, match="webhook_secret") as info:
        Credentials(webhook_secret=bad)
    assert bad not in str(info.value)
    with pytest.raises(ValueError, match="admin_token"):
        Credentials(admin_token="")


def test_repr_shows_no_secret() -> None:
    assert SECRET not in repr(BOTH)
    assert TOKEN not in repr(BOTH)


@pytest.mark.parametrize(
    ("header", "payload", "allowed"),
    [
        (SECRET, None, True),
        (SECRET, {"secret": "wrong"}, True),  # the header decides when given
        (None, {"secret": SECRET, "seq": 1}, True),
        ("wrong", {"secret": SECRET}, False),
        (None, None, False),
        (None, [SECRET], False),
        (None, {"secret": 1}, False),
        (None, {"secret": "\ud800"}, False),  # a lone surrogate from JSON: refused, no crash
        ("", {"secret": SECRET}, False),
        (SECRET + " ", None, False),
        (SECRET[:-1], None, False),
    ],
)
def test_check_webhook(header: str | None, payload: object, allowed: bool) -> None:
    refused = BOTH.check_webhook(header, payload)
    if allowed:
        assert refused is None
    else:
        assert refused is not None
        assert refused.status == 401


@pytest.mark.parametrize(
    ("authorization", "allowed"),
    [
        (f"Bearer {TOKEN}", True),
        (f"bearer {TOKEN}", True),  # the scheme is case-insensitive
        (f"  Bearer   {TOKEN}  ", True),
        (None, False),
        ("", False),
        ("Bearer", False),
        (TOKEN, False),
        (f"Basic {TOKEN}", False),
        (f"Bearer {TOKEN}x", False),
        (f"Bearer {SECRET}", False),
        ("Bearer caf\u00e9", False),
    ],
)
def test_check_admin(authorization: str | None, allowed: bool) -> None:
    refused = BOTH.check_admin(authorization)
    if allowed:
        assert refused is None
    else:
        assert refused is not None
        assert refused.status == 401
        assert refused.headers["WWW-Authenticate"].startswith("Bearer ")


def test_unset_credentials_disable_their_routes() -> None:
    none = Credentials()
    webhook = none.check_webhook(SECRET, {"secret": SECRET})
    admin = none.check_admin(f"Bearer {TOKEN}")
    assert webhook is not None
    assert (webhook.status, WEBHOOK_SECRET_ENV in webhook.error) == (403, True)
    assert admin is not None
    assert (admin.status, ADMIN_TOKEN_ENV in admin.error) == (403, True)
    assert [line.split()[0] for line in none.missing()] == [WEBHOOK_SECRET_ENV, ADMIN_TOKEN_ENV]
    assert BOTH.missing() == []
