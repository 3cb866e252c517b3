"""The strategy-webhook server of flask_webhooks.py, on FastAPI.

The same service (``POST /webhook``, ``GET /stats``, ``POST /resume``) and
the same error mapping, over the same KeyedDispatcher and handler.

The endpoints are plain ``def`` functions: FastAPI runs them in its
threadpool, where waiting for the dispatcher's future is what the request
thread is for. (An ``async def`` endpoint must not block the event loop on a
``concurrent.futures`` result.)

Run it::

    pip install 'keyed_dispatch[examples]'
    python examples/fastapi_webhooks.py --port 8000
    curl -s localhost:8000/webhook -H 'Content-Type: application/json' -d '{"strategy_id": 1,
      "symbols": ["BTC/USDT"], "seq": 17, "orders": [{"type": "CANCEL_ALL"},
      {"type": "LIMIT", "side": "buy", "price": "100.5", "qty": "0.1"}]}'
    curl -s localhost:8000/stats
"""

from __future__ import annotations

import argparse
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any

import uvicorn
from fastapi import Body, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from keyed_dispatch import (
    DispatcherClosed,
    KeyedDispatcher,
    KeyHalted,
    StartTimeout,
    SubmitTimeout,
    webhook_key,
)

# The demo's fake exchange, SQLite order table and handler (see flask_webhooks.py).
from keyed_dispatch._demo_exchange import ExchangeError, FakeExchange
from keyed_dispatch._demo_store import OrderStore
from keyed_dispatch._demo_webhooks import InvalidWebhookError, WebhookHandler, parse_webhook

RETRY_AFTER_SECONDS = 1


def create_app(dispatcher: KeyedDispatcher | None = None, handler: WebhookHandler | None = None) -> FastAPI:
    """Build the app around a dispatcher and a webhook handler (see flask_webhooks.create_app).

    A dispatcher created here is shut down with the app (lifespan); one
    passed in belongs to the caller.
    """
    owned = dispatcher is None
    dispatcher = dispatcher if dispatcher is not None else KeyedDispatcher(halt_on_error=True)
    if handler is None:
        handler = WebhookHandler(
            FakeExchange(0.020, jitter=0.5, max_notional=Decimal(1_000_000)), OrderStore()
        )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        if owned:
            dispatcher.shutdown(wait=True)

    app = FastAPI(title="keyed_dispatch webhooks", lifespan=lifespan)

    # A body that is not JSON fails FastAPI's own parsing: answer 400 with
    # our message, not FastAPI's 422. Any JSON value gets to parse_webhook,
    # which names the missing or invalid field.
    @app.exception_handler(RequestValidationError)
    async def malformed(request: Request, exc: RequestValidationError) -> JSONResponse:
        return error(400, "the body must be a JSON object (Content-Type: application/json)")

    @app.post("/webhook")
    def webhook(payload: Any = Body(None)) -> JSONResponse:  # noqa: B008 - FastAPI's idiom
        try:
            hook = parse_webhook(payload)
        except InvalidWebhookError as exc:
            return error(400, str(exc))
        try:
            result = dispatcher.submit_multi(hook.keys, handler.handle, hook).result()
        except (SubmitTimeout, DispatcherClosed, StartTimeout, KeyHalted, ExchangeError) as exc:
            return refusal(exc)
        return JSONResponse(result.as_dict())

    @app.get("/stats")
    def stats() -> dict[str, Any]:
        return dispatcher.stats().as_dict()

    @app.post("/resume")
    def resume(payload: Any = Body(None)) -> JSONResponse:  # noqa: B008 - idem
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
