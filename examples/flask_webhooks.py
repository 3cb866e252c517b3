"""A strategy-webhook server on Flask, with per-key order from KeyedDispatcher.

Every ``POST /webhook`` is handled by the demo's webhook handler (CANCEL_ALL, then
LIMIT orders, kept in step with a SQLite order table), submitted to one
dispatcher keyed by ``(strategy_id, symbol)``: webhooks for one key run one
at a time in arrival order, other keys run in parallel, and a multi-symbol
webhook holds all its keys at once (``submit_multi``). The request thread
waits for the result and answers with it.

Run it (a fake exchange with 20 ms per call, an in-memory database)::

    pip install 'keyed_dispatch[examples]'     # from a checkout: pip install -e '.[examples]'
    export KEYED_DISPATCH_WEBHOOK_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    export KEYED_DISPATCH_ADMIN_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    python examples/flask_webhooks.py --port 8000
    curl -s localhost:8000/webhook -H 'Content-Type: application/json' \
      -H "X-Webhook-Secret: $KEYED_DISPATCH_WEBHOOK_SECRET" -d '{"strategy_id": 1,
      "symbols": ["BTC/USDT"], "seq": 17, "orders": [{"type": "CANCEL_ALL"},
      {"type": "LIMIT", "side": "buy", "price": "100.5", "qty": "0.1"}]}'
    curl -s localhost:8000/stats
    curl -s localhost:8000/metrics     # Prometheus text format
    curl -s localhost:8000/admin/keys -H "Authorization: Bearer $KEYED_DISPATCH_ADMIN_TOKEN"

Credentials (:class:`keyed_dispatch.demo.Credentials`): ``POST /webhook``
needs the shared secret ``KEYED_DISPATCH_WEBHOOK_SECRET``, in the
``X-Webhook-Secret`` header or in the payload's ``"secret"`` field (for
senders that cannot set headers); the admin routes need
``Authorization: Bearer $KEYED_DISPATCH_ADMIN_TOKEN``. Both are compared in
constant time. A missing or wrong credential gets 401 and changes nothing;
a route whose variable is unset is disabled (403), and the server warns at
start. ``GET /stats`` is open: it shows counts only.

Admin routes, keyed by ``webhook_key(strategy_id, symbol)`` (a symbol may
hold a slash: ``/admin/keys/1/BTC/USDT``):

- ``GET /admin/keys?limit=N``: the live keys (with work, halted or
  paused), deepest first;
- ``GET /admin/keys/<strategy_id>/<symbol>``: one key's pending, running,
  oldest wait, halted, paused, in backoff;
- ``POST /admin/keys/<strategy_id>/<symbol>/pause``: no webhook of the key
  starts until resumed (they wait; ``start_timeout`` still applies);
- ``POST /admin/keys/<strategy_id>/<symbol>/resume``: lift a pause or a
  halt (also ``POST /resume`` with ``{"strategy_id": 1, "symbol": "BTC/USDT"}``);
- ``POST /admin/keys/<strategy_id>/<symbol>/cancel``: cancel the key's
  webhooks that have not started (they get 409), ``{"cancelled": n}``.

HTTP answers to a webhook: 200 with what it did; 401/403 as above; 400 for
a body that is not JSON or a missing/invalid field (nothing is queued); 503
with Retry-After when the dispatcher has no room (SubmitTimeout,
ShardsExhausted) or is shutting down; 504 when the webhook did not start
within ``start_timeout`` (it never ran); 409 when its key is halted by an
earlier failure (``.../resume`` lifts it) or an operator cancelled it
before it started; 502 when the exchange refused an order (which halts the
key). The dispatcher reads ``KEYED_DISPATCH_*`` from the environment, e.g.
``KEYED_DISPATCH_SUBMIT_TIMEOUT=1 KEYED_DISPATCH_START_TIMEOUT=10``.

Under gunicorn (in the ``examples`` extra), from the repository root::

    gunicorn --chdir examples -w 2 --threads 8 -b 127.0.0.1:8000 'flask_webhooks:create_app()'

Each worker process builds its own app and dispatcher, and a process cannot
order another's jobs: see the operations page of the docs (docs/operations.md).
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence
from concurrent.futures import CancelledError
from dataclasses import asdict
from decimal import Decimal
from typing import Any

from flask import Blueprint, Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from keyed_dispatch import (
    DispatcherClosed,
    KeyedDispatcher,
    KeyHalted,
    KeyInfo,
    StartTimeout,
    SubmitTimeout,
    webhook_key,
)

# The demo's fake exchange, SQLite order table and handler (keyed_dispatch.demo,
# shipped for the demo and these examples). A real service has its own
# exchange client and database; only the dispatcher part stays.
from keyed_dispatch.demo import (
    WEBHOOK_SECRET_HEADER,
    Credentials,
    ExchangeError,
    FakeExchange,
    InvalidWebhookError,
    OrderStore,
    Refusal,
    WebhookHandler,
    parse_webhook,
)
from keyed_dispatch.metrics import PrometheusCollector

RETRY_AFTER_SECONDS = 1
# What a webhook may end in besides its result; refusal() answers each.
REFUSED = (SubmitTimeout, DispatcherClosed, StartTimeout, KeyHalted, ExchangeError, CancelledError)

logger = logging.getLogger("flask_webhooks")


def create_app(
    dispatcher: KeyedDispatcher | None = None,
    handler: WebhookHandler | None = None,
    credentials: Credentials | None = None,
) -> Flask:
    """Build the app around a dispatcher and a webhook handler.

    Args:
        dispatcher: the dispatcher webhooks are submitted to, created with
            ``metrics=True`` (``GET /metrics`` exports its histograms); by
            default a new one configured from the environment, with
            ``halt_on_error=True`` (a failed webhook stops its key: the next
            webhook must not act on a half-applied state).
        handler: the webhook handler; by default one over a FakeExchange
            with 20 ms per call and an in-memory order table.
        credentials: the webhook secret and the admin token; by default
            ``Credentials.from_env()``. A missing one disables its routes,
            with a warning in the log.
    """
    if dispatcher is None:
        dispatcher = KeyedDispatcher(halt_on_error=True, metrics=True, name="webhooks")
    if handler is None:
        handler = WebhookHandler(
            FakeExchange(0.020, jitter=0.5, max_notional=Decimal(1_000_000)), OrderStore()
        )
    credentials = credentials if credentials is not None else Credentials.from_env()
    for line in credentials.missing():
        logger.warning("%s", line)
    app = Flask(__name__)
    app.extensions["keyed_dispatch"] = dispatcher
    # A registry of our own: the process-wide default one would also get the
    # collector of every other app built in this process.
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(dispatcher))

    @app.post("/webhook")
    def webhook() -> tuple[Response, int] | Response:
        payload = request.get_json(silent=True)
        refused = credentials.check_webhook(request.headers.get(WEBHOOK_SECRET_HEADER), payload)
        if refused is not None:
            return denied(refused)
        if payload is None:
            return error(400, "the body must be a JSON object (Content-Type: application/json)")
        try:
            hook = parse_webhook(payload)
        except InvalidWebhookError as exc:
            return error(400, str(exc))
        try:
            result = dispatcher.submit_multi(hook.keys, handler.handle, hook).result()
        except REFUSED as exc:
            return refusal(exc)
        return jsonify(result.as_dict())

    @app.get("/stats")
    def stats() -> Response:
        return jsonify(dispatcher.stats().as_dict())

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    # The operator's routes. The blueprint's before_request hook runs before
    # each of them, so a route added here cannot forget the token check.
    admin = Blueprint("admin", __name__)

    @admin.before_request
    def require_admin_token() -> tuple[Response, int] | None:
        refused = credentials.check_admin(request.headers.get("Authorization"))
        return None if refused is None else denied(refused)

    @admin.get("/admin/keys")
    def list_keys() -> tuple[Response, int] | Response:
        limit = request.args.get("limit")
        try:
            infos = dispatcher.keys(None if limit is None else int(limit))
        except ValueError:  # not a number, or negative
            return error(400, f"limit must be a whole number >= 0, got {limit!r}")
        return jsonify({"keys": [key_json(info) for info in infos]})

    @admin.get("/admin/keys/<int:strategy_id>/<path:symbol>")
    def key_info(strategy_id: int, symbol: str) -> Response:
        return jsonify(key_json(dispatcher.key_info(webhook_key(strategy_id, symbol))))

    @admin.post("/admin/keys/<int:strategy_id>/<path:symbol>/pause")
    def pause(strategy_id: int, symbol: str) -> Response:
        key = webhook_key(strategy_id, symbol)
        return jsonify({"key": str(key), "paused": dispatcher.pause(key)})

    @admin.post("/admin/keys/<int:strategy_id>/<path:symbol>/resume")
    def resume_key(strategy_id: int, symbol: str) -> Response:
        key = webhook_key(strategy_id, symbol)
        return jsonify({"key": str(key), "resumed": dispatcher.resume(key)})

    @admin.post("/admin/keys/<int:strategy_id>/<path:symbol>/cancel")
    def cancel(strategy_id: int, symbol: str) -> Response:
        key = webhook_key(strategy_id, symbol)
        return jsonify({"key": str(key), "cancelled": dispatcher.cancel_pending(key)})

    @admin.post("/resume")
    def resume() -> tuple[Response, int] | Response:
        payload: Any = request.get_json(silent=True)
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("strategy_id"), int)
            or not isinstance(payload.get("symbol"), str)
        ):
            return error(400, 'expected {"strategy_id": <int>, "symbol": <str>}')
        key = webhook_key(payload["strategy_id"], payload["symbol"])
        return jsonify({"key": str(key), "resumed": dispatcher.resume(key)})

    app.register_blueprint(admin)
    return app


def key_json(info: KeyInfo) -> dict[str, Any]:
    """One key's snapshot as JSON-ready data, its parts spelled out."""
    strategy_id, symbol = info.key
    return {**asdict(info), "key": str(info.key), "strategy_id": strategy_id, "symbol": symbol}


def error(status: int, message: str) -> tuple[Response, int]:
    """A JSON error answer."""
    return jsonify({"error": message}), status


def denied(refused: Refusal) -> tuple[Response, int]:
    """The answer to a request refused for its credentials."""
    response, status = error(refused.status, refused.error)
    response.headers.update(refused.headers)
    return response, status


def refusal(exc: Exception) -> tuple[Response, int]:
    """The HTTP answer to a webhook the dispatcher or the exchange refused."""
    if isinstance(exc, (SubmitTimeout, DispatcherClosed)):  # ShardsExhausted is a SubmitTimeout
        # No room now (or shutting down): nothing was queued, try again later.
        response, status = error(503, str(exc))
        response.headers["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response, status
    if isinstance(exc, StartTimeout):
        return error(504, f"{exc}; the webhook was not applied")
    if isinstance(exc, KeyHalted):
        return error(409, str(exc))
    if isinstance(exc, CancelledError):
        return error(409, "an operator cancelled the webhook before it started; it was not applied")
    return error(502, f"the exchange refused an order: {exc}; the key is halted")


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app with Flask's threaded development server."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    app = create_app()
    try:
        app.run(host=args.host, port=args.port, threaded=True)
    finally:
        app.extensions["keyed_dispatch"].shutdown(wait=True)


if __name__ == "__main__":
    main()
