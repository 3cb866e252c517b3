"""The webhook handler of the lock-manager design, its payload, and the audit of its results.

Shared by ``python -m keyed_dispatch demo`` and the web server examples. The
handler is the design's, step for step: batch 1 CANCEL_ALL (at the exchange,
then mark the cancelled rows in the database), batch 2 LIMIT (place the
orders, then insert them as open). Two runs of it on one key that overlap
leave the exchange and the database disagreeing; that is the race.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any, Protocol

from keyed_dispatch import WebhookKey, webhook_key

from ._exchange import FakeExchange
from ._store import OrderRow

__all__ = [
    "Audit",
    "InvalidWebhookError",
    "LimitOrder",
    "OrderTable",
    "ProcessingLog",
    "Webhook",
    "WebhookHandler",
    "WebhookResult",
    "audit",
    "parse_webhook",
]

MAX_SYMBOLS = 16
MAX_ORDERS = 32


class InvalidWebhookError(ValueError):
    """A webhook payload is malformed; the message says which field."""


@dataclass(frozen=True)
class LimitOrder:
    """One LIMIT order of a webhook."""

    side: str
    price: Decimal
    qty: Decimal


@dataclass(frozen=True)
class Webhook:
    """A parsed webhook: cancel everything on its symbols, then place orders.

    Attributes:
        strategy_id: the strategy (and its exchange account).
        symbols: the symbols it acts on; one key per symbol.
        seq: the sender's sequence number; with ``strategy_id`` it names the
            webhook, and it tags the orders it places.
        cancel_all: whether it has a CANCEL_ALL order (batch 1).
        limits: its LIMIT orders (batch 2), placed on every symbol.
    """

    strategy_id: int
    symbols: tuple[str, ...]
    seq: int
    cancel_all: bool = True
    limits: tuple[LimitOrder, ...] = ()

    @property
    def keys(self) -> tuple[WebhookKey, ...]:
        """The dispatch keys: one ``webhook_key`` per symbol."""
        return tuple(webhook_key(self.strategy_id, symbol) for symbol in self.symbols)

    @property
    def name(self) -> str:
        """``"<strategy_id>:<seq>"``, the tag of the orders it places."""
        return f"{self.strategy_id}:{self.seq}"


@dataclass(frozen=True)
class WebhookResult:
    """What one webhook did: the order ids it cancelled and placed."""

    webhook: str
    cancelled: tuple[str, ...]
    placed: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        """The result as JSON-ready data."""
        return {"webhook": self.webhook, "cancelled": list(self.cancelled), "placed": list(self.placed)}


def parse_webhook(payload: object) -> Webhook:
    """Validate a decoded JSON payload and return the webhook it describes.

    The shape::

        {"strategy_id": 1, "symbols": ["BTC/USDT"], "seq": 17,
         "orders": [{"type": "CANCEL_ALL"},
                    {"type": "LIMIT", "side": "buy", "price": "100.5", "qty": "0.1"}]}

    Prices and quantities are decimal strings (or integers), never floats.
    Unknown fields are ignored.

    Raises:
        InvalidWebhookError: a field is missing or invalid; the message names it.
    """
    if not isinstance(payload, Mapping):
        raise InvalidWebhookError("the body must be a JSON object")
    strategy_id = _whole(payload, "strategy_id")
    seq = _whole(payload, "seq")
    symbols = payload.get("symbols")
    if not isinstance(symbols, list) or not 1 <= len(symbols) <= MAX_SYMBOLS:
        raise InvalidWebhookError(f"symbols must be a list of 1 to {MAX_SYMBOLS} symbols")
    for symbol in symbols:
        if not isinstance(symbol, str) or not 0 < len(symbol) <= 32:
            raise InvalidWebhookError(
                f"symbols must be non-empty strings of at most 32 characters, got {symbol!r}"
            )
    if len(set(symbols)) != len(symbols):
        raise InvalidWebhookError("symbols must not repeat")
    orders = payload.get("orders")
    if not isinstance(orders, list) or not 1 <= len(orders) <= MAX_ORDERS:
        raise InvalidWebhookError(f"orders must be a list of 1 to {MAX_ORDERS} orders")
    cancel_all = False
    limits: list[LimitOrder] = []
    for index, order in enumerate(orders):
        where = f"orders[{index}]"
        if not isinstance(order, Mapping):
            raise InvalidWebhookError(f"{where} must be an object")
        kind = order.get("type")
        if kind == "CANCEL_ALL":
            cancel_all = True
        elif kind == "LIMIT":
            side = order.get("side")
            if side not in ("buy", "sell"):
                raise InvalidWebhookError(f"{where}.side must be 'buy' or 'sell', got {side!r}")
            limits.append(LimitOrder(side, _decimal(order, "price", where), _decimal(order, "qty", where)))
        else:
            raise InvalidWebhookError(f"{where}.type must be 'CANCEL_ALL' or 'LIMIT', got {kind!r}")
    return Webhook(strategy_id, tuple(symbols), seq, cancel_all, tuple(limits))


def _whole(payload: Mapping[str, Any], name: str) -> int:
    value = payload.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidWebhookError(f"{name} must be a whole number >= 0, got {value!r}")
    return value


def _decimal(order: Mapping[str, Any], name: str, where: str) -> Decimal:
    raw = order.get(name)
    if isinstance(raw, bool) or not isinstance(raw, (str, int)):
        raise InvalidWebhookError(f'{where}.{name} must be a decimal string such as "0.1", got {raw!r}')
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise InvalidWebhookError(f"{where}.{name} is not a decimal number: {raw!r}") from None
    if not value.is_finite() or value <= 0:
        raise InvalidWebhookError(f"{where}.{name} must be a positive number, got {raw!r}")
    return value


@dataclass
class _Entry:
    webhook: Webhook
    started: float
    finished: float | None = None


@dataclass
class ProcessingLog:
    """Thread-safe record of when each webhook ran, in start order per key.

    Attributes:
        started: per key, the ``seq`` of each webhook in the order their
            handling began.
        times: per webhook name, its monotonic start and finish times.
        overlaps: how many times a webhook began on a key while another
            webhook was still running on it.
    """

    started: dict[WebhookKey, list[int]] = field(default_factory=dict)
    times: dict[str, _Entry] = field(default_factory=dict)
    overlaps: int = 0
    _running: dict[WebhookKey, int] = field(default_factory=dict, repr=False, compare=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def begin(self, webhook: Webhook, *, at: float | None = None) -> None:
        """Record that ``webhook``'s handling begins now (or ``at``, when replaying a record)."""
        now = time.monotonic() if at is None else at
        with self._lock:
            for key in webhook.keys:
                self.started.setdefault(key, []).append(webhook.seq)
                running = self._running.get(key, 0)
                if running:
                    self.overlaps += 1
                self._running[key] = running + 1
            self.times[webhook.name] = _Entry(webhook, now)

    def end(self, webhook: Webhook, *, at: float | None = None) -> None:
        """Record that ``webhook``'s handling ended now (returned or raised), or ``at``."""
        now = time.monotonic() if at is None else at
        with self._lock:
            for key in webhook.keys:
                self._running[key] -= 1
            self.times[webhook.name].finished = now

    def out_of_order(self) -> int:
        """Webhooks that began after a later-sent webhook of one of their keys."""
        late: set[int] = set()
        with self._lock:
            for seqs in self.started.values():
                highest = -1
                for seq in seqs:
                    if seq < highest:
                        late.add(seq)
                    highest = max(highest, seq)
        return len(late)


class OrderTable(Protocol):
    """The orders table as the handler and the audit use it.

    :class:`~keyed_dispatch.demo.OrderStore` (SQLite, one process) is
    one; the distributed demo's table in PostgreSQL is another.
    """

    def insert_open(self, rows: Iterable[OrderRow]) -> None:
        """Insert orders as open, all in one transaction."""

    def mark_cancelled(self, strategy_id: Hashable, symbol: str) -> int:
        """Mark every open row of one key cancelled; return how many changed."""

    def open_orders(self, strategy_id: Hashable, symbol: str) -> list[OrderRow]:
        """The rows of one key that the table says are open."""


class WebhookHandler:
    """The webhook handler of the lock-manager design, with no coordination of its own.

    ``handle`` must not run concurrently with another ``handle`` sharing a
    key, or the exchange and the database drift apart; making sure of that
    is the caller's job (a lock per key, or a KeyedDispatcher).

    Args:
        exchange: where orders are cancelled and placed; a webhook's
            strategy id is its account.
        store: the database table kept in step with the exchange.
        log: records processing order and times; a new one by default.
    """

    def __init__(self, exchange: FakeExchange, store: OrderTable, log: ProcessingLog | None = None) -> None:
        self.exchange = exchange
        self.store = store
        self.log = log if log is not None else ProcessingLog()

    def handle(self, webhook: Webhook) -> WebhookResult:
        """Apply ``webhook``: batch 1 CANCEL_ALL, then batch 2 LIMIT.

        Raises:
            ExchangeError: the exchange refused an order. The orders placed
                before it are in the database (it stays in step); the rest
                of the batch is not placed.
        """
        self.log.begin(webhook)
        try:
            return self._apply(webhook)
        finally:
            self.log.end(webhook)

    def _apply(self, webhook: Webhook) -> WebhookResult:
        account = webhook.strategy_id
        cancelled: list[str] = []
        if webhook.cancel_all:
            # Batch 1: CANCEL_ALL at the exchange, then in the DB. If another
            # webhook's orders land at the exchange after the listing but
            # reach the DB before this update, the exchange keeps them open
            # while the DB marks them cancelled: the webhook race.
            for symbol in webhook.symbols:
                cancelled += self.exchange.cancel_all(account, symbol)
                self.store.mark_cancelled(account, symbol)
        # Batch 2: place every LIMIT order, then record them as open.
        rows: list[OrderRow] = []
        try:
            for symbol in webhook.symbols:
                for order in webhook.limits:
                    order_id = self.exchange.place_limit(
                        account, symbol, order.side, order.price, order.qty, tag=webhook.name
                    )
                    rows.append(
                        OrderRow(
                            order_id,
                            str(account),
                            symbol,
                            webhook.name,
                            order.side,
                            str(order.price),
                            str(order.qty),
                            "open",
                        )
                    )
        finally:
            self.store.insert_open(rows)
        return WebhookResult(webhook.name, tuple(cancelled), tuple(row.order_id for row in rows))


@dataclass(frozen=True)
class Audit:
    """The end state of a run, key by key.

    Attributes:
        disagreeing: keys whose open orders differ between the exchange and
            the database.
        stale: keys whose open orders at the exchange are not exactly those
            of the last-sent webhook on that key.
    """

    disagreeing: tuple[WebhookKey, ...]
    stale: tuple[WebhookKey, ...]


def audit(exchange: FakeExchange, store: OrderTable, webhooks: Iterable[Webhook]) -> Audit:
    """Compare the exchange with the database, and with the last webhook per key.

    The last webhook of a key is the one with the highest ``seq`` among
    ``webhooks`` (the ones that were admitted); its LIMIT orders must be the
    only open orders of that key.
    """
    last: dict[WebhookKey, Webhook] = {}
    for webhook in webhooks:
        for key in webhook.keys:
            if key not in last or webhook.seq > last[key].seq:
                last[key] = webhook
    disagreeing: list[WebhookKey] = []
    stale: list[WebhookKey] = []
    for key, webhook in sorted(last.items(), key=lambda item: str(item[0])):
        symbol = str(key.symbol)
        at_exchange = exchange.snapshot(key.strategy_id, symbol)
        in_db = store.open_orders(key.strategy_id, symbol)
        if {o.order_id for o in at_exchange} != {r.order_id for r in in_db}:
            disagreeing.append(key)
        tags = sorted(order.tag for order in at_exchange)
        if tags != [webhook.name] * len(webhook.limits):
            stale.append(key)
    return Audit(tuple(disagreeing), tuple(stale))
