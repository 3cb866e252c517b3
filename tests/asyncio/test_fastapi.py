"""The asyncio page's FastAPI example (docs/asyncio.md), end to end: a FastAPI webhook handler that
runs each webhook on its (strategy, symbol) key with AsyncKeyedDispatcher."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from keyed_dispatch import AsyncKeyedDispatcher, WebhookKey, webhook_key
from tests.asyncio_support import run, within

pytest.importorskip("fastapi")
pytest.importorskip("httpx")

# Imported after the skips: fastapi and httpx come with the examples extra.
import fastapi
import httpx


def test_a_fastapi_handler_serializes_webhooks_per_key() -> None:
    async def body() -> None:
        dispatcher = AsyncKeyedDispatcher(max_concurrency=100, start_timeout=10)
        app = fastapi.FastAPI()
        running: dict[WebhookKey, int] = {}
        overlaps: list[WebhookKey] = []
        done: list[tuple[str, int]] = []

        async def place_orders(key: WebhookKey, payload: dict[str, Any]) -> dict[str, Any]:
            running[key] = running.get(key, 0) + 1
            if running[key] > 1:
                overlaps.append(key)
            await asyncio.sleep(0)  # the exchange call
            running[key] -= 1
            done.append((str(key), payload["n"]))
            return {"key": str(key), "n": payload["n"]}

        @app.post("/webhook/{strategy_id}/{symbol:path}")
        async def webhook(strategy_id: int, symbol: str, payload: dict[str, Any]) -> dict[str, Any]:
            key = webhook_key(strategy_id, symbol)
            return await dispatcher.run(key, place_orders, key, payload)

        transport = httpx.ASGITransport(app=app)
        async with dispatcher, httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            posts = [client.post(f"/webhook/{1 + i % 2}/BTC/USDT", json={"n": i}) for i in range(20)]
            responses = await within(asyncio.gather(*posts))
        assert [r.status_code for r in responses] == [200] * 20
        assert {r.json()["key"] for r in responses} == {
            "strategy_1_symbol_BTC/USDT",
            "strategy_2_symbol_BTC/USDT",
        }
        assert overlaps == []
        assert sorted(n for _, n in done) == list(range(20))

    run(body)
