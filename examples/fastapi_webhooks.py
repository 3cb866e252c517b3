"""The strategy-webhook server of flask_webhooks.py, on FastAPI and asyncio.

The same service (``POST /webhook``, ``GET /stats``, ``GET /metrics``, ``POST /resume``) and
the same HTTP answers, ordered by an :class:`AsyncKeyedDispatcher` on the
event loop: each request awaits ``dispatcher.run_multi(keys, apply, hook)``,
which waits for the webhook's turn on every one of its keys without
blocking the loop, then runs it in the request's own task.

The handler (a blocking exchange client and SQLite) runs in a thread pool
sized to the dispatcher's concurrency; with an asyncio exchange client and
database driver, ``apply`` would simply await the handler.

Run it::

    pip install 'keyed_dispatch[examples]'     # from a checkout: pip install -e '.[examples]'
    python examples/fastapi_webhooks.py --port 8000
    curl -s localhost:8000/webhook -H 'Content-Type: application/json' -d '{"strategy_id": 1,
      "symbols": ["BTC/USDT"], "seq": 17, "orders": [{"type": "CANCEL_ALL"},
      {"type": "LIMIT", "side": "buy", "price": "100.5", "qty": "0.1"}]}'
    curl -s localhost:8000/stats
    curl -s localhost:8000/metrics     # Prometheus text format

With several processes (``uvicorn --app-dir examples --factory
fastapi_webhooks:create_app --workers 2``), each has its own dispatcher, and
a process cannot order another's jobs: see docs/operations.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from keyed_dispatch import (
    AsyncKeyedDispatcher,
    DispatcherClosed,
    KeyHalted,
    StartTimeout,
    SubmitTimeout,
    webhook_key,
)

# The demo's fake exchange, SQLite order table and handler (see flask_webhooks.py).
from keyed_dispatch.demo import (
    ExchangeError,
    FakeExchange,
    InvalidWebhookError,
    OrderStore,
    Webhook,
    WebhookHandler,
    WebhookResult,
    parse_webhook,
)
from keyed_dispatch.metrics import PrometheusCollector

RETRY_AFTER_SECONDS = 1


def create_app(
    dispatcher: AsyncKeyedDispatcher | None = None, handler: WebhookHandler | None = None
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
    """
    if dispatcher is None:
        dispatcher = AsyncKeyedDispatcher(halt_on_error=True, metrics=True, name="webhooks")
    registry = CollectorRegistry()  # see flask_webhooks.create_app
    registry.register(PrometheusCollector(dispatcher))
    if handler is None:
        handler = WebhookHandler(
            FakeExchange(0.020, jitter=0.5, max_notional=Decimal(1_000_000)), OrderStore()
        )
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
            return error(400, "the body must be a JSON object (Content-Type: application/json)")
        try:
            hook = parse_webhook(payload)
        except InvalidWebhookError as exc:
            return error(400, str(exc))
        try:
            result = await dispatcher.run_multi(hook.keys, apply, hook)
        except (SubmitTimeout, DispatcherClosed, StartTimeout, KeyHalted, ExchangeError) as exc:
            return refusal(exc)
        return JSONResponse(result.as_dict())

    @app.get("/stats")
    async def stats() -> dict[str, Any]:
        # On the loop's thread, where the dispatcher lives.
        return dispatcher.stats().as_dict()

    @app.get("/metrics")
    async def metrics() -> Response:
        # On the loop's thread, so the collector reads the dispatcher directly.
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    @app.post("/resume")
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

    return app


def error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    """A JSON error answer."""
    return JSONResponse({"error": message}, status_code=status, headers=headers)


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
