"""CommitTracker: which log position is safe to commit when jobs finish out of order."""

from __future__ import annotations

import logging
import threading
from collections import deque
from concurrent.futures import CancelledError, Future
from typing import Any, Literal

__all__ = ["CommitTracker"]

logger = logging.getLogger("keyed_dispatch")

_PENDING = 0
_DONE = 1
_FAILED = 2


class CommitTracker:
    """Track dispatched log positions; report the highest one safe to commit.

    A worker that reads a log (a Kafka partition, a Redis stream, an outbox
    table) and dispatches each message by key finishes messages out of log
    order: keys run in parallel. Committing the position of a finished
    message could skip an earlier one still running, which a crash would
    then lose. The tracker answers the only safe question: the highest
    position such that every position up to it is done.

    Semantics:

    * Positions are ints, registered in strictly increasing order, as a
      reader meets them. Gaps are fine (a compacted log, a filtered
      message): only registered positions are waited for.
    * ``safe_position()`` is the highest registered position ``p`` such that
      every registered position ``<= p`` is done; before that, the
      ``committed`` position given at construction (None by default). It
      never decreases.
    * Jobs finish in any order; marking done is thread-safe, and
      :meth:`track` marks a position from its future's done callback.
    * A failure (the job raised, or its future was cancelled) is not
      silently skipped with the default ``on_failure="hold"``: the position
      stays uncommitted and the safe position stops just before it, until
      the caller settles it: :meth:`done` after handling the failure
      (dead-letter it, alert), or :meth:`retry` with a new attempt's future.
      :meth:`failures` lists the held positions. With
      ``on_failure="skip"`` a failure counts as done (logged at WARNING):
      at-most-once for failed messages, which suits only messages whose
      loss is acceptable.
    * Registering or marking a position twice is a bug in the caller and
      raises ValueError rather than being ignored.

    Args:
        committed: the position already committed (by a previous run);
            registered positions must be above it.
        on_failure: ``"hold"`` or ``"skip"``, see above.

    Raises:
        ValueError: an unknown ``on_failure``.
    """

    def __init__(self, *, committed: int | None = None, on_failure: Literal["hold", "skip"] = "hold") -> None:
        if on_failure not in ("hold", "skip"):
            raise ValueError(f"on_failure must be 'hold' or 'skip', got {on_failure!r}")
        if committed is not None:
            _check_position(committed)
        self._on_failure = on_failure
        # One lock guards everything below; done callbacks take it from
        # worker threads.
        self._lock = threading.Lock()
        self._settled = threading.Condition(self._lock)
        self._safe = committed
        self._last = committed
        # Registered positions above the safe one, in order, with states.
        self._order: deque[int] = deque()
        self._state: dict[int, int] = {}
        self._errors: dict[int, BaseException] = {}
        self._in_flight = 0

    def register(self, position: int) -> None:
        """Record that ``position`` was dispatched and is not done yet.

        Raises:
            TypeError: ``position`` is not an int.
            ValueError: ``position`` is not above every registered (and the
                committed) position.
        """
        _check_position(position)
        with self._lock:
            if self._last is not None and position <= self._last:
                raise ValueError(
                    f"positions must be registered in increasing order: {position} after {self._last}"
                )
            self._last = position
            self._order.append(position)
            self._state[position] = _PENDING
            self._in_flight += 1

    def track(self, position: int, future: Future[Any]) -> None:
        """Register ``position`` and settle it when ``future`` finishes.

        The future's outcome decides: a result marks it done; an exception
        or a cancellation is a failure (see the class's failure policy). If
        the future is already finished, this settles the position at once.

        Raises:
            TypeError, ValueError: as :meth:`register`.
        """
        self.register(position)
        future.add_done_callback(lambda f: self._settle_from(position, f))

    def retry(self, position: int, future: Future[Any]) -> None:
        """Replace a held failure by a new attempt, tracked like :meth:`track`.

        Raises:
            ValueError: ``position`` is not a held failure.
        """
        with self._lock:
            if self._state.get(position) != _FAILED:
                raise ValueError(f"position {position} is not a held failure")
            self._state[position] = _PENDING
            del self._errors[position]
            self._in_flight += 1
        future.add_done_callback(lambda f: self._settle_from(position, f))

    def done(self, position: int) -> None:
        """Mark ``position`` done (its job finished, or its failure is handled).

        Raises:
            ValueError: ``position`` is not registered, or already done.
        """
        with self._lock:
            state = self._state.get(position)
            if state is None or state == _DONE:
                raise ValueError(f"position {position} is not registered or is already done")
            if state == _PENDING:
                self._in_flight -= 1
                self._settled.notify_all()
            else:
                del self._errors[position]
            self._state[position] = _DONE
            self._advance_locked()

    def fail(self, position: int, error: BaseException) -> None:
        """Mark ``position`` failed with ``error`` (held, or skipped by policy).

        Raises:
            ValueError: ``position`` is not registered, or already settled.
        """
        with self._lock:
            if self._state.get(position) != _PENDING:
                raise ValueError(f"position {position} is not registered or is already settled")
            self._in_flight -= 1
            self._settled.notify_all()
            if self._on_failure == "skip":
                logger.warning("position %d failed and is skipped for commit: %r", position, error)
                self._state[position] = _DONE
                self._advance_locked()
            else:
                self._state[position] = _FAILED
                self._errors[position] = error

    def safe_position(self) -> int | None:
        """The highest position with every registered position up to it done.

        None if no position is done yet and no ``committed`` was given.
        """
        with self._lock:
            return self._safe

    def failures(self) -> dict[int, BaseException]:
        """The held failures, by position, lowest first."""
        with self._lock:
            return dict(sorted(self._errors.items()))

    def in_flight(self) -> int:
        """Registered positions whose job has not finished (failures excluded)."""
        with self._lock:
            return self._in_flight

    def wait(self, timeout: float | None = None) -> bool:
        """Wait until no registered job is in flight; False on timeout.

        Held failures do not count as in flight: they wait for the caller.
        """
        with self._lock:
            return self._settled.wait_for(lambda: not self._in_flight, timeout)

    def _settle_from(self, position: int, future: Future[Any]) -> None:
        # A done callback: runs in the thread that finished the future.
        if future.cancelled():
            self.fail(position, CancelledError(f"the job of position {position} was cancelled"))
            return
        error = future.exception()
        if error is None:
            self.done(position)
        else:
            self.fail(position, error)

    def _advance_locked(self) -> None:
        # Caller holds the lock. Pop the done prefix; the last one popped is
        # the new safe position. Each position is popped once: O(1) amortized.
        order = self._order
        state = self._state
        while order and state[order[0]] == _DONE:
            self._safe = order.popleft()
            del state[self._safe]

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"<CommitTracker safe={self._safe} in_flight={self._in_flight} "
                f"held_failures={len(self._errors)}>"
            )


def _check_position(position: object) -> None:
    if isinstance(position, bool) or not isinstance(position, int):
        raise TypeError(f"a position must be an int, got {type(position).__name__}")
