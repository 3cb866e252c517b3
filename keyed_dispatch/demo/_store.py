"""The demo's order table: a real SQLite database (standard library).

Thread safety: one connection, opened with ``check_same_thread=False``, and
one lock held for each whole transaction. SQLite serializes writers anyway,
and a single connection is the only way to share a ``:memory:`` database
between threads; each method is one transaction, so a reader never sees half
of a batch. (The outbox worker example shows the other pattern: a connection
per thread on a database file.)
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

__all__ = ["OrderRow", "OrderStore"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    order_id    TEXT PRIMARY KEY,
    strategy_id TEXT NOT NULL,
    symbol      TEXT NOT NULL,
    webhook     TEXT NOT NULL,
    side        TEXT NOT NULL,
    price       TEXT NOT NULL,
    qty         TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('open', 'cancelled'))
);
CREATE INDEX IF NOT EXISTS orders_by_key ON orders (strategy_id, symbol, status);
"""


@dataclass(frozen=True)
class OrderRow:
    """One row of the orders table."""

    order_id: str
    strategy_id: str
    symbol: str
    webhook: str
    side: str
    price: str
    qty: str
    status: str


class OrderStore:
    """The service's own record of its orders, kept in step with the exchange.

    Args:
        path: a database file, or ``":memory:"``. A file is emptied first
            (the demo starts every mode from a clean table).
    """

    def __init__(self, path: str = ":memory:") -> None:
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        with self._lock:
            self._db.executescript(_SCHEMA)
            self._db.execute("DELETE FROM orders")

    def insert_open(self, rows: Iterable[OrderRow]) -> None:
        """Insert orders as open, all in one transaction."""
        values = [
            (r.order_id, r.strategy_id, r.symbol, r.webhook, r.side, r.price, r.qty, "open") for r in rows
        ]
        with self._lock, self._transaction():
            self._db.executemany("INSERT INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?)", values)

    def mark_cancelled(self, strategy_id: Hashable, symbol: str) -> int:
        """Mark every open row of one key cancelled; return how many changed.

        This is what the handler of the lock-manager design does after the
        exchange's CANCEL_ALL: it believes all of the key's orders are now
        cancelled.
        """
        with self._lock, self._transaction():
            cursor = self._db.execute(
                "UPDATE orders SET status = 'cancelled' "
                "WHERE strategy_id = ? AND symbol = ? AND status = 'open'",
                (str(strategy_id), symbol),
            )
            return cursor.rowcount

    def open_orders(self, strategy_id: Hashable, symbol: str) -> list[OrderRow]:
        """The rows of one key that the table says are open."""
        with self._lock:
            cursor = self._db.execute(
                "SELECT * FROM orders WHERE strategy_id = ? AND symbol = ? AND status = 'open' "
                "ORDER BY order_id",
                (str(strategy_id), symbol),
            )
            return [OrderRow(*row) for row in cursor.fetchall()]

    def count(self, webhook: str | None = None) -> int:
        """Rows in the table, or rows written for one webhook."""
        with self._lock:
            if webhook is None:
                row = self._db.execute("SELECT COUNT(*) FROM orders").fetchone()
            else:
                row = self._db.execute("SELECT COUNT(*) FROM orders WHERE webhook = ?", (webhook,)).fetchone()
            return int(row[0])

    def close(self) -> None:
        """Close the connection."""
        with self._lock:
            self._db.close()

    def __enter__(self) -> OrderStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    # BEGIN/COMMIT by hand: the connection is in autocommit mode
    # (isolation_level=None), so a batch is atomic only if we say so.
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self._db.execute("ROLLBACK" if exc_type is not None else "COMMIT")
