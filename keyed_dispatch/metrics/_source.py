"""What the exporters read: one snapshot of a dispatcher, in export terms.

Both exporters turn a :class:`Reading` into their own metric types, so that
the Prometheus families and the OpenTelemetry instruments say the same
thing. A reading of an in-process dispatcher comes from ``stats()`` and
``keys()``; an :class:`AsyncKeyedDispatcher` is read on its event loop, so a
scrape from another thread (``prometheus_client.start_http_server``, an
OpenTelemetry export thread) is safe.
"""

from __future__ import annotations

import heapq
import math
import sys
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FuturesTimeoutError
from dataclasses import dataclass
from operator import itemgetter
from typing import Any, TypeVar

from keyed_dispatch._histogram import BOUNDS, HistogramSnapshot
from keyed_dispatch._keys import key_str
from keyed_dispatch._runner import Runner

__all__ = ["OUTCOMES", "PostgresSource", "Reading", "Source", "le_text", "sources"]

_T = TypeVar("_T")

OUTCOMES = ("completed", "failed", "cancelled", "timed_out", "superseded")
"""The ``outcome`` label values of the jobs counter, in this order."""


@dataclass(frozen=True)
class Reading:
    """One snapshot of one dispatcher, as the exporters publish it."""

    dispatcher: str
    outcomes: tuple[int, ...]  # finished jobs, by OUTCOMES
    failures: tuple[tuple[str, int], ...]  # failed jobs by exception type name
    retries: int
    wait: HistogramSnapshot
    run: HistogramSnapshot
    pending: int
    running: int
    in_backoff: int
    keys_active: int
    keys_halted: int
    keys_paused: int
    depths: tuple[tuple[str, int], ...]  # the deepest keys' unfinished jobs, deepest first
    # PostgreSQL: the outcomes, failures and histograms count the jobs still
    # retained in the database (pruned after the workers' retention), so
    # they can go down: they are exported as gauges, not counters.
    retained: bool = False


class Source:
    """Reads one in-process dispatcher (thread or asyncio)."""

    retained = False

    def __init__(self, dispatcher: Runner, top_keys: int, timeout: float) -> None:
        if not dispatcher.metrics:
            raise ValueError(
                f"dispatcher {dispatcher.name!r} records no wait or run histograms: create it with "
                "metrics=True to export its metrics"
            )
        self.name = dispatcher.name
        self._dispatcher = dispatcher
        self._top_keys = top_keys
        self._timeout = timeout

    def read(self) -> Reading:
        """A reading of the dispatcher now (on its event loop, for asyncio)."""
        return _on_loop(self._dispatcher, self._read, self._timeout)

    def _read(self) -> Reading:
        dispatcher = self._dispatcher
        stats = dispatcher.stats()
        assert stats.wait is not None  # metrics=True, checked at construction
        assert stats.run is not None
        infos = dispatcher.keys()  # every live key, O(live keys + their queued jobs)
        depths = [(info.key, info.pending + info.running + info.in_backoff) for info in infos]
        deepest = heapq.nlargest(self._top_keys, (pair for pair in depths if pair[1]), key=itemgetter(1))
        return Reading(
            dispatcher=self.name,
            outcomes=(stats.completed, stats.failed, stats.cancelled, stats.timed_out, stats.superseded),
            failures=stats.failures,
            retries=stats.retries,
            wait=stats.wait,
            run=stats.run,
            pending=stats.pending,
            running=stats.running,
            in_backoff=stats.in_backoff,
            keys_active=stats.active_shards,
            keys_halted=stats.halted_keys,
            keys_paused=stats.paused_keys,
            depths=tuple((key_str(key), depth) for key, depth in deepest),
        )


class PostgresSource:
    """Reads the queue of a PostgresDispatcher, across the cluster (one query)."""

    retained = True

    def __init__(self, dispatcher: Any, top_keys: int) -> None:
        self.name: str = dispatcher._schema
        self._dispatcher = dispatcher
        self._top_keys = top_keys

    def read(self) -> Reading:
        states, failures, waits, wait_sum, runs, run_sum, keys, deepest = self._dispatcher._metrics(
            BOUNDS, self._top_keys
        )

        def count(state: str) -> int:
            return int(states.get(state, 0))

        return Reading(
            dispatcher=self.name,
            outcomes=(count("completed"), count("failed"), count("cancelled"), count("expired"), 0),
            failures=tuple((str(name), int(n)) for name, n in failures),
            retries=0,
            wait=_histogram(waits, wait_sum),
            run=_histogram(runs, run_sum),
            pending=count("queued"),
            running=count("running"),
            in_backoff=0,
            keys_active=int(keys),
            keys_halted=0,
            keys_paused=0,
            depths=tuple((str(key), int(n)) for key, n in deepest),
            retained=True,
        )


def _histogram(by_bucket: dict[str, int], total: float) -> HistogramSnapshot:
    # {bucket index (JSON text): count} from the database, as a snapshot.
    counts = [0] * (len(BOUNDS) + 1)
    for index, n in by_bucket.items():
        counts[int(index)] = int(n)
    return HistogramSnapshot(count=sum(counts), sum=float(total), bounds=BOUNDS, counts=tuple(counts))


def le_text(bound: float) -> str:
    """A bucket bound as Prometheus writes it in ``le``: ``1e-06``, ``0.5``, ``+Inf``."""
    return "+Inf" if math.isinf(bound) else repr(bound)


def _postgres_class() -> type | None:
    # PostgresDispatcher if its module is loaded: if not, none can exist, and
    # an in-process export does not pay for importing psycopg.
    module = sys.modules.get("keyed_dispatch.postgres")
    return None if module is None else module.PostgresDispatcher


def sources(dispatchers: Any, top_keys: int, timeout: float) -> list[Source | PostgresSource]:
    """The sources of a dispatcher or an iterable of them, checked.

    Raises:
        TypeError: not a dispatcher, or a bad ``top_keys`` or ``timeout``.
        ValueError: no dispatcher, two with the same name, a negative
            ``top_keys``, or a dispatcher without ``metrics=True``.
    """
    if isinstance(top_keys, bool) or not isinstance(top_keys, int):
        raise TypeError(f"top_keys must be an int, got {type(top_keys).__name__}")
    if top_keys < 0:
        raise ValueError(f"top_keys must be >= 0, got {top_keys}")
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(timeout).__name__}")
    if not timeout > 0:
        raise ValueError(f"timeout must be > 0, got {timeout}")
    postgres = _postgres_class()
    single = isinstance(dispatchers, Runner) or (postgres is not None and isinstance(dispatchers, postgres))
    items: Iterable[Any] = [dispatchers] if single else dispatchers
    try:
        found = list(items)
    except TypeError:
        raise TypeError(
            f"expected a dispatcher or an iterable of them, got {type(dispatchers).__name__}"
        ) from None
    result: list[Source | PostgresSource] = []
    for dispatcher in found:
        if isinstance(dispatcher, Runner):
            result.append(Source(dispatcher, top_keys, timeout))
        elif postgres is not None and isinstance(dispatcher, postgres):
            result.append(PostgresSource(dispatcher, top_keys))
        else:
            raise TypeError(
                "expected a KeyedDispatcher, an AsyncKeyedDispatcher or a PostgresDispatcher, "
                f"got {type(dispatcher).__name__}"
            )
    if not result:
        raise ValueError("no dispatcher to export")
    names = [source.name for source in result]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(
            f"dispatchers share the name {duplicates[0]!r}: give each its own name= (the dispatcher label)"
        )
    return result


def _on_loop(dispatcher: Runner, fn: Callable[[], _T], timeout: float) -> _T:
    # Call ``fn`` where the dispatcher may be read: at once for a thread
    # dispatcher, an unbound asyncio one or from its loop's thread; else on
    # its loop, waiting up to ``timeout`` seconds for the answer.
    loop = getattr(dispatcher, "_loop", None)
    if loop is None or getattr(dispatcher, "_thread", None) == threading.get_ident():
        return fn()
    answer: Future[_T] = Future()

    def call() -> None:
        if answer.set_running_or_notify_cancel():
            try:
                answer.set_result(fn())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                answer.set_exception(exc)

    try:
        loop.call_soon_threadsafe(call)
    except RuntimeError:
        raise RuntimeError(f"the event loop of dispatcher {dispatcher.name!r} is closed") from None
    try:
        return answer.result(timeout)
    except FuturesTimeoutError:  # TimeoutError on 3.11+, its own class on 3.10
        answer.cancel()
        raise TimeoutError(
            f"the event loop of dispatcher {dispatcher.name!r} did not answer within {timeout}s"
        ) from None
