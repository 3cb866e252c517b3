"""The webhook race demo (``python -m keyed_dispatch demo``) and the parts the examples share.

A fake exchange whose calls take time (:class:`FakeExchange`), a SQLite
order table (:class:`OrderStore`), the example servers' credentials
(:class:`Credentials`), the webhook handler of the lock-manager
design (:class:`WebhookHandler`, :func:`parse_webhook`) with the audit of
its end state (:func:`audit`), the lock-per-key manager of that design
(:class:`WebhookLockManager`), and the harness that fires one burst of
webhooks through each way of running the handler (:func:`run_mode`,
:func:`main`).

Demonstration code: the library itself never imports this package. The
distributed row (``--distributed``) lives in
``keyed_dispatch.demo._distributed`` and needs the ``postgres-embedded``
extra; it is imported only when asked for.
"""

from __future__ import annotations

from ._credentials import (
    ADMIN_TOKEN_ENV,
    WEBHOOK_SECRET_ENV,
    WEBHOOK_SECRET_FIELD,
    WEBHOOK_SECRET_HEADER,
    Credentials,
    Refusal,
)
from ._exchange import ExchangeError, ExchangeOrder, FakeExchange
from ._harness import (
    CHECKED_MODES,
    MODES,
    OPT_IN_MODES,
    POSTGRES_MODES,
    Harness,
    ModeRunner,
    format_table,
    main,
    register_mode,
    run_mode,
)
from ._locks import LockPoolExhaustedError, WebhookLockManager
from ._run import SYMBOLS, Burst, DemoOptions, ModeResult, Progress, make_burst
from ._store import OrderRow, OrderStore
from ._webhooks import (
    Audit,
    InvalidWebhookError,
    LimitOrder,
    OrderTable,
    ProcessingLog,
    Webhook,
    WebhookHandler,
    WebhookResult,
    audit,
    parse_webhook,
)

__all__ = [
    "ADMIN_TOKEN_ENV",
    "CHECKED_MODES",
    "MODES",
    "OPT_IN_MODES",
    "POSTGRES_MODES",
    "SYMBOLS",
    "WEBHOOK_SECRET_ENV",
    "WEBHOOK_SECRET_FIELD",
    "WEBHOOK_SECRET_HEADER",
    "Audit",
    "Burst",
    "Credentials",
    "DemoOptions",
    "ExchangeError",
    "ExchangeOrder",
    "FakeExchange",
    "Harness",
    "InvalidWebhookError",
    "LimitOrder",
    "LockPoolExhaustedError",
    "ModeResult",
    "ModeRunner",
    "OrderRow",
    "OrderStore",
    "OrderTable",
    "ProcessingLog",
    "Progress",
    "Refusal",
    "Webhook",
    "WebhookHandler",
    "WebhookLockManager",
    "WebhookResult",
    "audit",
    "format_table",
    "main",
    "make_burst",
    "parse_webhook",
    "register_mode",
    "run_mode",
]
