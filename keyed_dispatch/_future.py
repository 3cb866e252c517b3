"""A lighter ``concurrent.futures.Future`` start: the condition is made on first wait.

``Future.__init__`` builds a ``threading.Condition`` for every future: a
Python object holding an RLock, five bound methods and a deque of waiters,
seven objects the cyclic GC tracks, of which a future that nobody waits on
(most of a dispatcher's) uses only the lock. ``KeyedFuture.__init__`` sets up the
same fields with a :class:`FutureCondition` in its place: the RLock at once,
a real ``threading.Condition`` on that RLock only when a thread first waits.
Measured on a queue of 100,000 no-op jobs, that is a third of the objects
each job keeps alive, and of the collector's work.

Everything ``Future`` and the module functions of ``concurrent.futures``
(``wait``, ``as_completed``) do with ``_condition`` is ``with``, ``acquire``,
``release``, ``wait`` and ``notify_all``, always holding the lock for the
last two, which is what makes the lazy condition safe: it is created, and
read, only under its own lock.

The fields are those of ``Future.__init__`` in Python 3.10 to 3.13 (see
:data:`FIELDS`); should a later version set others, :data:`LIGHT` is False
and futures are set up by ``Future.__init__`` itself.
"""

from __future__ import annotations

import threading
from concurrent.futures import Future, _base

__all__ = ["FIELDS", "LIGHT", "PENDING", "FutureCondition"]


class FutureCondition:
    """The part of ``threading.Condition`` that ``Future`` uses; the condition itself made on first wait."""

    __slots__ = ("_cond", "_lock")

    def __init__(self) -> None:
        # An RLock, as threading.Condition() makes by default.
        self._lock = threading.RLock()
        self._cond: threading.Condition | None = None

    def __enter__(self) -> bool:
        return self._lock.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        self._lock.release()

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        return self._lock.acquire(blocking, timeout)

    def release(self) -> None:
        self._lock.release()

    def wait(self, timeout: float | None = None) -> bool:
        # The caller holds the lock (Condition.wait raises RuntimeError
        # otherwise, as the standard one does), so the condition is made and
        # published under it.
        cond = self._cond
        if cond is None:
            cond = self._cond = threading.Condition(self._lock)
        return cond.wait(timeout)

    def notify(self, n: int = 1) -> None:
        # Under the lock, as for wait(): no waiter can be missed.
        cond = self._cond
        if cond is not None:
            cond.notify(n)

    def notify_all(self) -> None:
        cond = self._cond
        if cond is not None:
            cond.notify_all()


#: The fields ``Future.__init__`` sets, in its order (Python 3.10 to 3.13).
FIELDS = ("_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks")

#: True when ``Future.__init__`` sets exactly :data:`FIELDS`.
LIGHT: bool = tuple(vars(Future())) == FIELDS

PENDING = _base.PENDING
