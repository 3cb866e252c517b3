"""A strategy-webhook server on Flask, with per-key order from KeyedDispatcher.

Every ``POST /webhook`` is handled by the demo's webhook handler (CANCEL_ALL, then
LIMIT orders, kept in step with a SQLite order table), submitted to one
dispatcher keyed by ``(strategy_id, symbol)``: webhooks for one key run one
at a time in arrival order, other keys run in parallel, and a multi-symbol
webhook holds all its keys at once (``submit_multi``). The request thread
waits for the result and answers with it.

Run it (a fake exchange with 20 ms per call, an in-memory database)::

    pip install 'keyed_dispatch[examples]'     # from a checkout: pip install -e '.[examples]'
    python examples/flask_webhooks.py --port 8000
    curl -s localhost:8000/webhook -H 'Content-Type: application/json' -d '{"strategy_id": 1,
      "symbols": ["BTC/USDT"], "seq": 17, "orders": [{"type": "CANCEL_ALL"},
      {"type": "LIMIT", "side": "buy", "price": "100.5", "qty": "0.1"}]}'
    curl -s localhost:8000/stats
    curl -s localhost:8000/metrics     # Prometheus text format

HTTP answers: 200 with what the webhook did; 400 for a body that is not
JSON or a missing/invalid field (nothing is queued); 503 with Retry-After
when the dispatcher has no room (SubmitTimeout, ShardsExhausted) or is
shutting down; 504 when the webhook did not start within ``start_timeout``
(it never ran); 409 when its key is halted by an earlier failure (``POST
/resume`` lifts it); 502 when the exchange refused an order (which halts
the key). The dispatcher reads ``KEYED_DISPATCH_*`` from the environment,
e.g. ``KEYED_DISPATCH_SUBMIT_TIMEOUT=1 KEYED_DISPATCH_START_TIMEOUT=10``.

Under gunicorn (in the ``examples`` extra), from the repository root::

    gunicorn --chdir examples -w 2 --threads 8 -b 127.0.0.1:8000 'flask_webhooks:create_app()'

Each worker process builds its own app and dispatcher, and a process cannot
order another's jobs: see the operations page of the docs (docs/operations.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from flask import Flask, Response, jsonify, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from keyed_dispatch import (
    DispatcherClosed,
    KeyedDispatcher,
    KeyHalted,
    StartTimeout,
    SubmitTimeout,
    webhook_key,
)

# The demo's fake exchange, SQLite order table and handler (keyed_dispatch.demo,
# shipped for the demo and these examples). A real service has its own
# exchange client and database; only the dispatcher part stays.
from keyed_dispatch.demo import (
    ExchangeError,
    FakeExchange,
    InvalidWebhookError,
    OrderStore,
    WebhookHandler,
    parse_webhook,
)
from keyed_dispatch.metrics import PrometheusCollector

RETRY_AFTER_SECONDS = 1


def create_app(dispatcher: KeyedDispatcher | None = None, handler: WebhookHandler | None = None) -> Flask:
    """Build the app around a dispatcher and a webhook handler.

    Args:
        dispatcher: the dispatcher webhooks are submitted to, created with
            ``metrics=True`` (``GET /metrics`` exports its histograms); by
            default a new one configured from the environment, with
            ``halt_on_error=True`` (a failed webhook stops its key: the next
            webhook must not act on a half-applied state).
        handler: the webhook handler; by default one over a FakeExchange
            with 20 ms per call and an in-memory order table.
    """
    if dispatcher is None:
        dispatcher = KeyedDispatcher(halt_on_error=True, metrics=True, name="webhooks")
    if handler is None:
        handler = WebhookHandler(
            FakeExchange(0.020, jitter=0.5, max_notional=Decimal(1_000_000)), OrderStore()
        )
    app = Flask(__name__)
    app.extensions["keyed_dispatch"] = dispatcher
    # A registry of our own: the process-wide default one would also get the
    # collector of every other app built in this process.
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(dispatcher))

    @app.post("/webhook")
    def webhook() -> tuple[Response, int] | Response:
        payload = request.get_json(silent=True)
        if payload is None:
            return error(400, "the body must be a JSON object (Content-Type: application/json)")
        try:
            hook = parse_webhook(payload)
        except InvalidWebhookError as exc:
            return error(400, str(exc))
        try:
            result = dispatcher.submit_multi(hook.keys, handler.handle, hook).result()
        except (SubmitTimeout, DispatcherClosed, StartTimeout, KeyHalted, ExchangeError) as exc:
            return refusal(exc)
        return jsonify(result.as_dict())

    @app.get("/stats")
    def stats() -> Response:
        return jsonify(dispatcher.stats().as_dict())

    @app.get("/metrics")
    def metrics() -> Response:
        return Response(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)

    @app.post("/resume")
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

    return app


def error(status: int, message: str) -> tuple[Response, int]:
    """A JSON error answer."""
    return jsonify({"error": message}), status


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
