"""A lighter ``concurrent.futures.Future`` start: the condition is made on first wait.

``Future.__init__`` builds a ``threading.Condition`` for every future: a
Python object holding an RLock, five bound methods and a deque of waiters,
seven objects the cyclic GC tracks, of which a future that nobody waits on
(most of a dispatcher's) uses only the lock. ``KeyedFuture.__init__`` sets up the
same fields with a :class:`FutureCondition` in its place: an RLock that
makes a real ``threading.Condition`` on itself only when a thread first
waits.
Measured on a queue of no-op jobs, a queued job then keeps 5 tracked objects
instead of 12, and 649 bytes instead of 1,953, its future included.

Everything ``Future`` and the module functions of ``concurrent.futures``
(``wait``, ``as_completed``) do with ``_condition`` is ``with``, ``acquire``,
``release``, ``wait`` and ``notify_all``, always holding the lock for the
last two, which is what makes the lazy condition safe: it is created, and
read, only under its own lock.

The fields are those of ``Future.__init__`` in Python 3.10 to 3.13 (see
:data:`FIELDS`); should a later version set others, or its C RLock be
closed to subclasses, :data:`LIGHT` is False and futures are set up by
``Future.__init__`` itself.
"""

from __future__ import annotations

import _thread
import threading
from concurrent.futures import Future, _base

__all__ = ["FIELDS", "LIGHT", "PENDING", "FutureCondition"]


try:

    class FutureCondition(_thread.RLock):  # type: ignore[misc]  # final in typeshed, not at run time
        """An RLock with the part of ``threading.Condition`` that ``Future`` uses.

        ``with``, ``acquire`` and ``release`` are the RLock's own (C) methods,
        cheaper than ``threading.Condition``'s Python ones; the condition is
        made on the first wait.
        """

        __slots__ = ("_cond",)

        def __init__(self) -> None:
            self._cond: threading.Condition | None = None

        def wait(self, timeout: float | None = None) -> bool:
            """As ``Condition.wait``; the caller holds the lock (RuntimeError otherwise)."""
            # Made and published under the lock, so notify() cannot miss it.
            cond = self._cond
            if cond is None:
                cond = self._cond = threading.Condition(self)
            return cond.wait(timeout)

        def notify(self, n: int = 1) -> None:
            """As ``Condition.notify``; the caller holds the lock."""
            cond = self._cond
            if cond is not None:
                cond.notify(n)

        def notify_all(self) -> None:
            """As ``Condition.notify_all``; the caller holds the lock."""
            cond = self._cond
            if cond is not None:
                cond.notify_all()

    _SUBCLASSED = True
except TypeError:  # an interpreter whose C RLock cannot be subclassed: see LIGHT
    FutureCondition = threading.Condition  # type: ignore[misc,assignment]
    _SUBCLASSED = False


#: The fields ``Future.__init__`` sets, in its order (Python 3.10 to 3.13).
FIELDS = ("_condition", "_state", "_result", "_exception", "_waiters", "_done_callbacks")

#: True when ``Future.__init__`` sets exactly :data:`FIELDS` and the C RLock
#: can be subclassed: then KeyedFuture starts light.
LIGHT: bool = _SUBCLASSED and tuple(vars(Future())) == FIELDS

PENDING = _base.PENDING
