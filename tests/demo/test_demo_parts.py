"""The demo's parts: the fake exchange, the SQLite store, the handler, the lock baseline."""

from __future__ import annotations

import logging
import threading
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from keyed_dispatch import demo, webhook_key
from keyed_dispatch.demo import (
    Burst,
    DemoOptions,
    ExchangeError,
    FakeExchange,
    Harness,
    InvalidWebhookError,
    LimitOrder,
    LockPoolExhaustedError,
    ModeResult,
    OrderStore,
    Progress,
    Webhook,
    WebhookHandler,
    WebhookLockManager,
    audit,
    make_burst,
    parse_webhook,
    run_mode,
)

ONE = (LimitOrder("buy", Decimal(100), Decimal("0.1")),)
ONE_LIMIT = {"type": "LIMIT", "side": "sell", "price": "1", "qty": "1"}


class _PlaceDuringCancel(FakeExchange):
    """Places an order between cancel_all's listing and its first cancel.

    The deterministic version of what overlapping webhooks do by timing.
    """

    def _cancel(self, account: Any, symbol: str, order_id: str) -> bool:
        if not getattr(self, "placed_late", None):
            self.placed_late = self.place_limit(account, symbol, "buy", Decimal(1), Decimal(1), tag="late")
        return super()._cancel(account, symbol, order_id)


def test_cancel_all_misses_an_order_placed_after_its_listing() -> None:
    exchange = _PlaceDuringCancel()
    first = exchange.place_limit(1, "BTC/USDT", "buy", Decimal(1), Decimal(1))
    assert exchange.cancel_all(1, "BTC/USDT") == [first]
    assert [o.order_id for o in exchange.snapshot(1, "BTC/USDT")] == [exchange.placed_late]
    # Other accounts and symbols are untouched, and a second cancel_all
    # gets the survivor.
    other = exchange.place_limit(2, "BTC/USDT", "buy", Decimal(1), Decimal(1))
    assert exchange.cancel_all(1, "BTC/USDT") == [exchange.placed_late]
    assert [o.order_id for o in exchange.snapshot(2, "BTC/USDT")] == [other]


def test_exchange_refuses_orders_over_max_notional_and_validates_settings() -> None:
    exchange = FakeExchange(max_notional=Decimal(50))
    with pytest.raises(ExchangeError, match="insufficient balance"):
        exchange.place_limit(1, "BTC/USDT", "buy", Decimal(100), Decimal(1))
    assert exchange.snapshot(1, "BTC/USDT") == []
    with pytest.raises(ValueError, match="latency"):
        FakeExchange(-1)
    with pytest.raises(ValueError, match="jitter"):
        FakeExchange(0.1, jitter=1.0)


def test_paused_exchange_holds_calls_until_resumed() -> None:
    exchange = FakeExchange()
    exchange.pause()
    placed: list[str] = []
    caller = threading.Thread(
        target=lambda: placed.append(exchange.place_limit(1, "X", "buy", Decimal(1), Decimal(1)))
    )
    caller.start()
    caller.join(timeout=0.05)  # bounded: the call must still be held
    assert caller.is_alive()
    assert placed == []
    exchange.resume()
    caller.join()
    assert len(placed) == 1


def test_handler_keeps_the_table_in_step_when_run_one_at_a_time(tmp_path: Path) -> None:
    store = OrderStore(str(tmp_path / "orders.db"))
    exchange = FakeExchange()
    handler = WebhookHandler(exchange, store)
    hooks = [Webhook(1, ("BTC/USDT", "ETH/USDT"), seq, True, ONE * 2) for seq in range(3)]
    for hook in hooks:
        result = handler.handle(hook)
        assert len(result.placed) == 4
    assert result.as_dict()["webhook"] == "1:2"
    assert len(result.cancelled) == 4
    assert audit(exchange, store, hooks).disagreeing == ()
    assert audit(exchange, store, hooks).stale == ()
    # The last-but-one webhook is not the last: its key is stale.
    assert len(audit(exchange, store, hooks[:2]).stale) == 2
    assert store.count() == 12
    assert store.count("1:0") == 4
    assert handler.log.out_of_order() == 0
    store.close()
    # A file database starts empty each time it is opened by the demo.
    with OrderStore(str(tmp_path / "orders.db")) as reopened:
        assert reopened.count() == 0


def test_a_refused_order_leaves_the_placed_ones_recorded() -> None:
    exchange = FakeExchange(max_notional=Decimal(50))
    hook = Webhook(1, ("BTC/USDT",), 1, True, (*ONE, LimitOrder("buy", Decimal(100), Decimal(5))))
    with OrderStore() as store:
        with pytest.raises(ExchangeError):
            WebhookHandler(exchange, store).handle(hook)
        assert store.count("1:1") == 1
        assert audit(exchange, store, [hook]).disagreeing == ()


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        ("text", "JSON object"),
        ({"strategy_id": 1, "seq": 1, "symbols": "BTC", "orders": []}, "symbols"),
        ({"strategy_id": 1, "seq": 1, "symbols": [""], "orders": []}, "symbols"),
        ({"strategy_id": 1, "seq": 1, "symbols": [3], "orders": []}, "symbols"),
        ({"strategy_id": 1, "seq": 1, "symbols": ["A"], "orders": ["CANCEL_ALL"]}, "orders\\[0\\]"),
        ({"strategy_id": 1, "seq": 1.0, "symbols": ["A"], "orders": [{"type": "CANCEL_ALL"}]}, "seq"),
        (
            {"strategy_id": 1, "seq": 1, "symbols": ["A"], "orders": [{"type": "LIMIT", "side": "buy"}]},
            "price",
        ),
        (
            {
                "strategy_id": 1,
                "seq": 1,
                "symbols": ["A"],
                "orders": [{"type": "LIMIT", "side": "buy", "price": "NaN", "qty": "1"}],
            },
            "positive",
        ),
    ],
)
def test_parse_webhook_names_the_bad_field(payload: object, message: str) -> None:
    with pytest.raises(InvalidWebhookError, match=message):
        parse_webhook(payload)


def test_parse_webhook_reads_the_documented_example() -> None:
    hook = parse_webhook(
        {
            "strategy_id": 1,
            "symbols": ["BTC/USDT", "ETH/USDT"],
            "seq": 17,
            "orders": [{"type": "CANCEL_ALL"}, {"type": "LIMIT", "side": "buy", "price": "100.5", "qty": 2}],
            "comment": "ignored",
        }
    )
    assert hook == Webhook(
        1, ("BTC/USDT", "ETH/USDT"), 17, True, (LimitOrder("buy", Decimal("100.5"), Decimal(2)),)
    )
    assert hook.keys == (webhook_key(1, "BTC/USDT"), webhook_key(1, "ETH/USDT"))
    assert hook.name == "1:17"
    assert not parse_webhook({"strategy_id": 1, "symbols": ["A"], "seq": 1, "orders": [ONE_LIMIT]}).cancel_all


def test_lock_manager_sorts_times_out_and_bounds_its_pool(caplog: pytest.LogCaptureFixture) -> None:
    manager = WebhookLockManager(max_locks=2, wait_warning=0.0)
    with caplog.at_level(logging.DEBUG, logger="keyed_dispatch"):
        with manager.acquire_webhook_lock(1, ["ETH/USDT", "BTC/USDT"]):
            held = threading.Event()
            outcome: list[BaseException] = []

            def contender() -> None:
                try:
                    with manager.acquire_webhook_lock(1, ["BTC/USDT"], timeout=0.01):
                        pass
                except TimeoutError as exc:
                    outcome.append(exc)
                held.set()

            thread = threading.Thread(target=contender)
            thread.start()
            thread.join()
            assert held.is_set()
            assert "strategy_1_symbol_BTC/USDT not acquired" in str(outcome[0])
        with pytest.raises(LockPoolExhaustedError), manager.acquire_webhook_lock(2, ["BTC/USDT"]):
            pass
    assert "Lock waited 0.00s for strategy_1_symbol_BTC/USDT" in caplog.text
    assert "Lock pool exhausted: 2 locks" in caplog.text
    # The locks were released: they can be taken again at once.
    with manager.acquire_webhook_lock(1, ["BTC/USDT", "ETH/USDT"], timeout=0):
        pass


def test_lock_timeouts_count_as_failed_webhooks() -> None:
    # The lock manager's timeout drops webhooks under contention: with a 1 ms
    # timeout and 20 webhooks on one key, all but the first few time out.
    options = DemoOptions(webhooks=20, keys=1, latency_ms=5, threads=20, lock_timeout=0.001)
    result = run_mode("locks", make_burst(options), options)
    assert result.failed >= 1
    assert result.failures == {"TimeoutError": result.failed}
    assert result.overlaps == 0


def test_a_new_mode_is_one_function(monkeypatch: pytest.MonkeyPatch) -> None:
    # What a later mode (the distributed one) plugs into: the harness gives
    # the world, the request threads and the audit.
    def refusing(burst: Burst, options: DemoOptions, progress: Progress) -> ModeResult:
        harness = Harness(burst, options, progress)

        def admit(webhook: Webhook) -> int:
            if webhook.seq % 2:
                raise RuntimeError("refused")
            return webhook.seq

        harness.fire(admit, lambda webhook, token: harness.handler.handle(webhook))
        return harness.result("refusing")

    monkeypatch.setitem(demo.MODES, "refusing", refusing)
    options = DemoOptions(webhooks=10, keys=2, latency_ms=0, threads=1)
    result = run_mode("refusing", make_burst(options), options)
    assert (result.mode, result.failed, result.failures) == ("refusing", 5, {"RuntimeError": 5})
    assert result.disagreeing_keys == result.overlaps == result.out_of_order == 0
