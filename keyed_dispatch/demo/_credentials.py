"""The example servers' credentials: a shared webhook secret and an admin token.

Both come from the environment (:meth:`Credentials.from_env`) and are
compared in constant time (``hmac.compare_digest``), so an attacker cannot
learn a secret one character at a time from response times. A route whose
credential is not set is disabled (403): a server started without them
refuses webhooks and operator calls alike instead of accepting anyone's.
The checks are framework-neutral; each example turns a :class:`Refusal`
into its own HTTP answer before it parses, queues or changes anything.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "ADMIN_TOKEN_ENV",
    "WEBHOOK_SECRET_ENV",
    "WEBHOOK_SECRET_FIELD",
    "WEBHOOK_SECRET_HEADER",
    "Credentials",
    "Refusal",
]

# Names of where credentials are found, not credentials (hence the S105 noqa).
#: The environment variable holding the webhook secret.
WEBHOOK_SECRET_ENV = "KEYED_DISPATCH_WEBHOOK_SECRET"  # noqa: S105
#: The environment variable holding the admin bearer token.
ADMIN_TOKEN_ENV = "KEYED_DISPATCH_ADMIN_TOKEN"  # noqa: S105
#: The request header that carries the webhook secret.
WEBHOOK_SECRET_HEADER = "X-Webhook-Secret"  # noqa: S105
#: The payload field that carries it, for senders that cannot set headers.
WEBHOOK_SECRET_FIELD = "secret"  # noqa: S105


@dataclass(frozen=True)
class Refusal:
    """A request refused for its credentials: the HTTP status, the error, extra headers."""

    status: int
    error: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Credentials:
    """What the example servers accept: a webhook secret and an admin token.

    Each is printable ASCII without spaces (``secrets.token_urlsafe(32)``
    makes a good one), or None: the routes it guards are disabled. Neither
    shows in ``repr``.

    Attributes:
        webhook_secret: what ``POST /webhook`` must carry, in the
            ``X-Webhook-Secret`` header or in the payload's ``"secret"`` field.
        admin_token: what the admin routes must carry as
            ``Authorization: Bearer <token>``.

    Raises:
        ValueError: a credential is empty or not printable ASCII (the message
            never shows the value).
    """

    webhook_secret: str | None = field(default=None, repr=False)
    admin_token: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        for name, value in (("webhook_secret", self.webhook_secret), ("admin_token", self.admin_token)):
            if value is not None and not _well_formed(value):
                raise ValueError(f"{name} must be non-empty printable ASCII without spaces, or None")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Credentials:
        """Read ``KEYED_DISPATCH_WEBHOOK_SECRET`` and ``KEYED_DISPATCH_ADMIN_TOKEN``.

        An unset or empty variable leaves its routes disabled.

        Raises:
            ValueError: a variable is set to something unusable; the message
                names the variable, not its value.
        """
        env = os.environ if environ is None else environ
        values = {}
        for name, variable in (("webhook_secret", WEBHOOK_SECRET_ENV), ("admin_token", ADMIN_TOKEN_ENV)):
            value = env.get(variable) or None
            if value is not None and not _well_formed(value):
                raise ValueError(f"{variable} must be non-empty printable ASCII without spaces")
            values[name] = value
        return cls(**values)

    def check_webhook(self, header: str | None, payload: object) -> Refusal | None:
        """None if a webhook request may proceed, else why it is refused.

        The secret is the ``X-Webhook-Secret`` header when the request has
        one (the payload is then not looked at), else the payload's
        ``"secret"`` field.

        Returns:
            None; or a 403 Refusal when no webhook secret is set, a 401 one
            when the request's secret is missing or wrong.
        """
        expected = self.webhook_secret
        if expected is None:
            return Refusal(403, f"webhooks are disabled: the server has no {WEBHOOK_SECRET_ENV}")
        given = header
        if given is None and isinstance(payload, Mapping):
            given = payload.get(WEBHOOK_SECRET_FIELD)
        if not isinstance(given, str) or not _same(given, expected):
            return Refusal(
                401,
                f"a valid webhook secret is required, in the {WEBHOOK_SECRET_HEADER} header "
                f'or the "{WEBHOOK_SECRET_FIELD}" field',
            )
        return None

    def check_admin(self, authorization: str | None) -> Refusal | None:
        """None if an admin request may proceed, given its ``Authorization`` header, else why not.

        Returns:
            None; or a 403 Refusal when no admin token is set, a 401 one
            (with ``WWW-Authenticate: Bearer``) when the header is missing,
            not ``Bearer <token>``, or has the wrong token.
        """
        expected = self.admin_token
        if expected is None:
            return Refusal(403, f"admin routes are disabled: the server has no {ADMIN_TOKEN_ENV}")
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not _same(token.strip(), expected):
            return Refusal(
                401,
                "a valid admin token is required: Authorization: Bearer <token>",
                {"WWW-Authenticate": 'Bearer realm="keyed_dispatch admin"'},
            )
        return None

    def missing(self) -> list[str]:
        """What a server started with these credentials should warn about, one line each."""
        lines = []
        if self.webhook_secret is None:
            lines.append(f"{WEBHOOK_SECRET_ENV} is not set: POST /webhook answers 403")
        if self.admin_token is None:
            lines.append(f"{ADMIN_TOKEN_ENV} is not set: the admin routes answer 403")
        return lines


def _well_formed(value: str) -> bool:
    return bool(value) and value.isascii() and value.isprintable() and " " not in value


def _same(given: str, expected: str) -> bool:
    # compare_digest takes as long for a near miss as for a wild guess. On
    # bytes: it refuses str with non-ASCII characters, and a JSON string
    # may hold lone surrogates, which plain UTF-8 cannot encode.
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), expected.encode())
