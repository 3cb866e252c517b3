"""The lock-manager design's WebhookLockManager: the demo's ``locks`` baseline.

A faithful reimplementation of the design keyed_dispatch replaces: a
``threading.Lock`` per ``(strategy_id, symbol)`` in a bounded pool,
acquired in sorted order (no deadlock for multi-symbol webhooks) with a
timeout, and the design's log lines. It serializes same-key webhooks, but
it does not order them:

* ``threading.Lock`` is not fair: when it is released, whichever waiter the
  OS wakes (or a thread that just arrived) gets it, not the oldest waiter.
* A webhook cannot join a lock's queue without blocking, so between its
  arrival and its ``acquire`` a later webhook can get ahead of it.
* Sorted acquisition makes a multi-symbol webhook hold its first lock while
  it waits for the next; a later single-symbol webhook on that next symbol
  that finds it free runs first.

Nothing here is slowed down or reordered on purpose; the demo measures what
the design does under a realistic burst.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Hashable, Iterable, Iterator
from contextlib import contextmanager

__all__ = ["LockPoolExhaustedError", "WebhookLockManager"]

logger = logging.getLogger("keyed_dispatch")


class LockPoolExhaustedError(RuntimeError):
    """The pool holds ``max_locks`` locks and a new key needs one."""


class WebhookLockManager:
    """A lock per strategy/symbol, acquired in sorted order with a timeout.

    Args:
        max_locks: the pool bound (the design's ``MAX_WEBHOOK_LOCKS``).
        wait_warning: a wait this long is logged at WARNING (the design: 5 s).
    """

    def __init__(self, max_locks: int = 1000, wait_warning: float = 5.0) -> None:
        self.max_locks = max_locks
        self.wait_warning = wait_warning
        self._pool_lock = threading.Lock()
        self._locks: dict[str, threading.Lock] = {}

    @staticmethod
    def _get_lock_key(strategy_id: Hashable, symbol: Hashable) -> str:
        return f"strategy_{strategy_id}_symbol_{symbol}"

    def _lock_for(self, name: str) -> threading.Lock:
        with self._pool_lock:
            lock = self._locks.get(name)
            if lock is None:
                if len(self._locks) >= self.max_locks:
                    logger.error("Lock pool exhausted: %d locks", self.max_locks)
                    raise LockPoolExhaustedError(f"lock pool exhausted: {self.max_locks} locks")
                lock = self._locks[name] = threading.Lock()
            return lock

    @contextmanager
    def acquire_webhook_lock(
        self, strategy_id: Hashable, symbols: Iterable[Hashable], timeout: float = 30.0
    ) -> Iterator[None]:
        """Hold the locks of every ``(strategy_id, symbol)`` for the block.

        Raises:
            TimeoutError: a lock was not acquired within ``timeout`` seconds
                of the call; the locks already held are released.
            LockPoolExhaustedError: a new key found the pool full.
        """
        names = sorted({self._get_lock_key(strategy_id, symbol) for symbol in symbols})
        held: list[threading.Lock] = []
        deadline = time.monotonic() + timeout
        try:
            for name in names:
                lock = self._lock_for(name)
                start = time.monotonic()
                if not lock.acquire(timeout=max(0.0, deadline - start)):
                    raise TimeoutError(f"lock for {name} not acquired within {timeout}s")
                held.append(lock)
                waited = time.monotonic() - start
                if waited >= self.wait_warning:
                    logger.warning("Lock waited %.2fs for %s", waited, name)
                else:
                    logger.debug("Acquired lock for %s (waited %.2fs)", name, waited)
            yield
        finally:
            for lock in reversed(held):
                lock.release()
