"""A fake exchange for the demo and the examples: in-process, with latency.

It models what makes the webhook race possible: every call is a network round
trip, and an order exists at the exchange from the moment the request lands
there (half-way through the call), not from the moment the caller gets the
answer. ``cancel_all`` is what many exchange clients do under the hood: list
the open orders, then cancel them one call at a time, so an order placed
after the listing survives the "cancel all".

Orders live per ``(account, symbol)``: an account is a strategy's API key,
so strategies never see each other's orders.
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Hashable
from dataclasses import dataclass
from decimal import Decimal

__all__ = ["ExchangeError", "ExchangeOrder", "FakeExchange"]


class ExchangeError(RuntimeError):
    """The exchange refused a request (here: an order over ``max_notional``)."""


@dataclass(frozen=True)
class ExchangeOrder:
    """An open order as the exchange reports it."""

    order_id: str
    account: Hashable
    symbol: str
    side: str
    price: Decimal
    qty: Decimal
    tag: str


class FakeExchange:
    """A thread-safe in-process exchange whose calls take time.

    Each call sleeps ``latency`` seconds in total (times a random factor in
    ``[1 - jitter, 1 + jitter]``), half before its effect happens at the
    exchange and half after, like a request and its response. The state is
    guarded by one lock that is never held while sleeping, so calls overlap
    the way concurrent HTTP requests to an exchange do.

    Args:
        latency: seconds per call.
        jitter: relative spread of the latency, in ``[0, 1)``.
        seed: the random seed of the jitter.
        max_notional: a LIMIT order with ``price * qty`` above this is
            refused with ExchangeError (the exchange's "insufficient
            balance"); None accepts every order.
    """

    def __init__(
        self,
        latency: float = 0.0,
        *,
        jitter: float = 0.0,
        seed: int | None = None,
        max_notional: Decimal | None = None,
    ) -> None:
        if latency < 0 or not 0 <= jitter < 1:
            raise ValueError(f"need latency >= 0 and 0 <= jitter < 1, got {latency} and {jitter}")
        self.latency = latency
        self.jitter = jitter
        self.max_notional = max_notional
        self._random = random.Random(seed)  # noqa: S311 - timing noise, not security
        self._lock = threading.Lock()
        self._books: dict[tuple[Hashable, str], dict[str, ExchangeOrder]] = {}
        self._ids = itertools.count(1)
        self._open = threading.Event()
        self._open.set()
        self.calls = 0

    # -- the API a handler calls ---------------------------------------------

    def place_limit(
        self, account: Hashable, symbol: str, side: str, price: Decimal, qty: Decimal, *, tag: str = ""
    ) -> str:
        """Place a limit order; return its id once the response arrives.

        The order is open at the exchange half-way through the call.

        Raises:
            ExchangeError: the order's notional is over ``max_notional``.
        """
        self._travel()
        with self._lock:
            self.calls += 1
            if self.max_notional is not None and price * qty > self.max_notional:
                error: ExchangeError | None = ExchangeError(
                    f"insufficient balance: {side} {qty} {symbol} @ {price} is over {self.max_notional}"
                )
                order_id = ""
            else:
                error = None
                order_id = f"X{next(self._ids)}"
                order = ExchangeOrder(order_id, account, symbol, side, price, qty, tag)
                self._books.setdefault((account, symbol), {})[order_id] = order
        self._travel()
        if error is not None:
            raise error
        return order_id

    def cancel_all(self, account: Hashable, symbol: str) -> list[str]:
        """Cancel the account's open orders on ``symbol``; return the ids cancelled.

        One call lists the open orders, then one call per order cancels it.
        An order placed after the listing is not cancelled, and an order
        someone else cancelled in between is skipped (not in the result).
        """
        listed = [order.order_id for order in self.open_orders(account, symbol)]
        return [order_id for order_id in listed if self._cancel(account, symbol, order_id)]

    def open_orders(self, account: Hashable, symbol: str) -> list[ExchangeOrder]:
        """List the account's open orders on ``symbol`` (one call)."""
        self._travel()
        with self._lock:
            self.calls += 1
            orders = list(self._books.get((account, symbol), {}).values())
        self._travel()
        return orders

    def _cancel(self, account: Hashable, symbol: str, order_id: str) -> bool:
        self._travel()
        with self._lock:
            self.calls += 1
            found = self._books.get((account, symbol), {}).pop(order_id, None) is not None
        self._travel()
        return found

    # -- for checks and tests (no latency) ---------------------------------

    def snapshot(self, account: Hashable, symbol: str) -> list[ExchangeOrder]:
        """The open orders now, without a simulated call."""
        with self._lock:
            return list(self._books.get((account, symbol), {}).values())

    def pause(self) -> None:
        """Hold every call at its next step until :meth:`resume` (an outage)."""
        self._open.clear()

    def resume(self) -> None:
        """Let held and later calls proceed."""
        self._open.set()

    def _travel(self) -> None:
        # Half a round trip. The random factor is drawn without our lock:
        # Random.random() is a single C call, safe to share across threads.
        self._open.wait()
        if self.latency:
            spread = self.jitter * (2 * self._random.random() - 1)
            time.sleep(self.latency * (1 + spread) / 2)
