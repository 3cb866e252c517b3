"""The strategy-webhook server of flask_webhooks.py, on FastAPI and asyncio.

The same service (``POST /webhook``, ``GET /stats``, ``GET /metrics``, the admin routes),
the same credentials and the same HTTP answers, ordered by an
:class:`AsyncKeyedDispatcher` on the event loop: each request submits
``dispatcher.submit_multi(keys, apply, hook)`` and awaits the job's future,
which resolves once the webhook has had its turn on every one of its keys,
without blocking the loop.

The handler (a blocking exchange client and SQLite) runs in a thread pool
sized to the dispatcher's concurrency; with an asyncio exchange client and
database driver, ``apply`` would simply await the handler.

Run it (the credentials as in flask_webhooks.py)::

    pip install 'keyed_dispatch[examples]'     # from a checkout: pip install -e '.[examples]'
    export KEYED_DISPATCH_WEBHOOK_SECRET=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    export KEYED_DISPATCH_ADMIN_TOKEN=$(python -c 'import secrets; print(secrets.token_urlsafe(32))')
    python examples/fastapi_webhooks.py --port 8000
    curl -s localhost:8000/webhook -H 'Content-Type: application/json' \
      -H "X-Webhook-Secret: $KEYED_DISPATCH_WEBHOOK_SECRET" -d '{"strategy_id": 1,
      "symbols": ["BTC/USDT"], "seq": 17, "orders": [{"type": "CANCEL_ALL"},
      {"type": "LIMIT", "side": "buy", "price": "100.5", "qty": "0.1"}]}'
    curl -s localhost:8000/stats
    curl -s localhost:8000/metrics     # Prometheus text format
    curl -s localhost:8000/admin/keys -H "Authorization: Bearer $KEYED_DISPATCH_ADMIN_TOKEN"

With several processes (``uvicorn --app-dir examples --factory
fastapi_webhooks:create_app --workers 2``), each has its own dispatcher, and
a process cannot order another's jobs: see docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import asdict
from decimal import Decimal
from typing import Any

import uvicorn
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from keyed_dispatch import (
    AsyncKeyedDispatcher,
    DispatcherClosed,
    KeyHalted,
    KeyInfo,
    StartTimeout,
    SubmitTimeout,
    webhook_key,
)

# The demo's fake exchange, SQLite order table and handler (see flask_webhooks.py).
from keyed_dispatch.demo import (
    WEBHOOK_SECRET_HEADER,
    Credentials,
    ExchangeError,
    FakeExchange,
    InvalidWebhookError,
    OrderStore,
    Refusal,
    Webhook,
    WebhookHandler,
    WebhookResult,
    parse_webhook,
)
from keyed_dispatch.metrics import PrometheusCollector

RETRY_AFTER_SECONDS = 1
# What a webhook may end in besides its result; refusal() answers each.
REFUSED = (SubmitTimeout, DispatcherClosed, StartTimeout, KeyHalted, ExchangeError)

logger = logging.getLogger("fastapi_webhooks")


class Denied(Exception):
    """Raised by a route's credential check; the app answers with the refusal."""

    def __init__(self, refused: Refusal) -> None:
        super().__init__(refused.error)
        self.refused = refused


def create_app(
    dispatcher: AsyncKeyedDispatcher | None = None,
    handler: WebhookHandler | None = None,
    credentials: Credentials | None = None,
) -> FastAPI:
    """Build the app around an asyncio dispatcher and a webhook handler.

    Args:
        dispatcher: created with ``metrics=True`` (for ``GET /metrics``); by
            default a new one configured from the environment, with
            ``halt_on_error=True`` (see flask_webhooks.create_app). It
            binds to the server's event loop on the first request, and the
            app closes it (``aclose``) when the server shuts down.
        handler: by default one over a FakeExchange with 20 ms per call and
            an in-memory order table.
        credentials: by default ``Credentials.from_env()`` (see
            flask_webhooks.create_app).
    """
    if dispatcher is None:
        dispatcher = AsyncKeyedDispatcher(halt_on_error=True, metrics=True, name="webhooks")
    registry = CollectorRegistry()  # see flask_webhooks.create_app
    registry.register(PrometheusCollector(dispatcher))
    if handler is None:
        handler = WebhookHandler(
            FakeExchange(0.020, jitter=0.5, max_notional=Decimal(1_000_000)), OrderStore()
        )
    credentials = credentials if credentials is not None else Credentials.from_env()
    for line in credentials.missing():
        logger.warning("%s", line)
    # As many threads as jobs may run at once: the pool never queues a job
    # the dispatcher has started.
    pool = ThreadPoolExecutor(dispatcher.config.max_workers, thread_name_prefix="webhook")

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await dispatcher.aclose()
            pool.shutdown(wait=True)

    app = FastAPI(title="keyed_dispatch webhooks", lifespan=lifespan)

    @app.exception_handler(Denied)
    async def on_denied(request: Request, exc: Denied) -> JSONResponse:
        return denied(exc.refused)

    async def apply(hook: Webhook) -> WebhookResult:
        # The job. It holds the webhook's keys until the handler's thread
        # has finished, even if the request is cancelled: a thread cannot be
        # interrupted, and unwinding early would let the key's next webhook
        # run alongside this one, which is the race all this prevents.
        future = asyncio.get_running_loop().run_in_executor(pool, handler.handle, hook)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            await asyncio.wait([future])
            raise

    @app.post("/webhook")
    async def webhook(request: Request) -> JSONResponse:
        try:
            payload = json.loads(await request.body())
        except ValueError:  # also UnicodeDecodeError
            payload = None
        refused = credentials.check_webhook(request.headers.get(WEBHOOK_SECRET_HEADER), payload)
        if refused is not None:
            return denied(refused)
        if payload is None:
            return error(400, "the body must be a JSON object (Content-Type: application/json)")
        try:
            hook = parse_webhook(payload)
        except InvalidWebhookError as exc:
            return error(400, str(exc))
        return await dispatch(hook)

    async def dispatch(hook: Webhook) -> JSONResponse:
        # Submit the webhook, wait for its turn and its result, answer.
        try:
            future = await dispatcher.submit_multi(hook.keys, apply, hook)
        except REFUSED as exc:
            return refusal(exc)
        try:
            # Shielded, so that a cancelled future (an operator's cancel)
            # can be told from a cancelled request.
            result = await asyncio.shield(future)
        except REFUSED as exc:
            return refusal(exc)
        except asyncio.CancelledError:
            if not future.cancelled():
                # The request is cancelled: so is its webhook (if it runs
                # already, apply waits for the handler's thread).
                future.cancel()
                raise
            return error(409, "an operator cancelled the webhook before it started; it was not applied")
        return JSONResponse(result.as_dict())

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        # On the loop's thread, where the dispatcher lives.
        return dispatcher.stats().as_dict()

    @app.get("/metrics")
    async def metrics() -> Response:
        # On the loop's thread, so the collector reads the dispatcher directly.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    # The operator's routes: the router's dependency checks the token
    # before each of them, so a route added here cannot forget it.
    async def require_admin_token(request: Request) -> None:
        refused = credentials.check_admin(request.headers.get("Authorization"))
        if refused is not None:
            raise Denied(refused)

    admin = APIRouter(dependencies=[Depends(require_admin_token)])

    @admin.get("/admin/keys")
    async def list_keys(request: Request) -> JSONResponse:
        limit = request.query_params.get("limit")
        try:
            infos = dispatcher.keys(None if limit is None else int(limit))
        except ValueError:  # not a number, or negative
            return error(400, f"limit must be a whole number >= 0, got {limit!r}")
        return JSONResponse({"keys": [key_json(info) for info in infos]})

    @admin.get("/admin/keys/{strategy_id:int}/{symbol:path}")
    async def key_info(strategy_id: int, symbol: str) -> dict[str, Any]:
        return key_json(dispatcher.key_info(webhook_key(strategy_id, symbol)))

    @admin.post("/admin/keys/{strategy_id:int}/{symbol:path}/pause")
    async def pause(strategy_id: int, symbol: str) -> dict[str, Any]:
        key = webhook_key(strategy_id, symbol)
        return {"key": str(key), "paused": dispatcher.pause(key)}

    @admin.post("/admin/keys/{strategy_id:int}/{symbol:path}/resume")
    async def resume_key(strategy_id: int, symbol: str) -> dict[str, Any]:
        key = webhook_key(strategy_id, symbol)
        return {"key": str(key), "resumed": dispatcher.resume(key)}

    @admin.post("/admin/keys/{strategy_id:int}/{symbol:path}/cancel")
    async def cancel(strategy_id: int, symbol: str) -> dict[str, Any]:
        key = webhook_key(strategy_id, symbol)
        return {"key": str(key), "cancelled": dispatcher.cancel_pending(key)}

    @admin.post("/resume")
    async def resume(request: Request) -> JSONResponse:
        try:
            payload: Any = json.loads(await request.body())
        except ValueError:
            payload = None
        if (
            not isinstance(payload, dict)
            or not isinstance(payload.get("strategy_id"), int)
            or not isinstance(payload.get("symbol"), str)
        ):
            return error(400, 'expected {"strategy_id": <int>, "symbol": <str>}')
        key = webhook_key(payload["strategy_id"], payload["symbol"])
        return JSONResponse({"key": str(key), "resumed": dispatcher.resume(key)})

    # Registered last: the routes above are the router's by now.
    app.include_router(admin)
    return app


def key_json(info: KeyInfo) -> dict[str, Any]:
    """One key's snapshot as JSON-ready data, its parts spelled out."""
    strategy_id, symbol = info.key
    return {**asdict(info), "key": str(info.key), "strategy_id": strategy_id, "symbol": symbol}


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


def denied(refused: Refusal) -> JSONResponse:
    """The answer to a request refused for its credentials."""
    return error(refused.status, refused.error, dict(refused.headers))


def refusal(exc: Exception) -> JSONResponse:
    """The HTTP answer to a webhook the dispatcher or the exchange refused."""
    if isinstance(exc, (SubmitTimeout, DispatcherClosed)):  # ShardsExhausted is a SubmitTimeout
        return error(503, str(exc), {"Retry-After": str(RETRY_AFTER_SECONDS)})
    if isinstance(exc, StartTimeout):
        return error(504, f"{exc}; the webhook was not applied")
    if isinstance(exc, KeyHalted):
        return error(409, str(exc))
    return error(502, f"the exchange refused an order: {exc}; the key is halted")


def main(argv: Sequence[str] | None = None) -> None:
    """Serve the app with uvicorn."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args(argv)
    uvicorn.run(create_app(), host=args.host, port=args.port)


if __name__ == "__main__":
    main()
