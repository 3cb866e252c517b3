"""Fixtures of the PostgreSQL tests only.

The session's server (``pg_dsn``), a fresh schema (``pg_schema``) and
in-process workers (``pg_worker``) live in the root conftest: the demo's
tests use them too.
"""

# ruff: noqa: S603  # the tests run our own interpreter

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:  # psycopg may be missing: the test modules skip then
    from keyed_dispatch.postgres import EmbeddedPostgres
    from tests.postgres.support import LossyProxy, Spawn

# The repository root, so that worker processes import ``tests.postgres.tasks``.
ROOT = str(Path(__file__).parents[2])


@pytest.fixture
def spawn(pg_dsn: str, pg_schema: str) -> Iterator[Spawn]:
    """Start worker processes (``python -m keyed_dispatch worker``); killed at teardown.

    They run the job functions of ``tests.postgres.tasks`` and of the demo's
    recorded jobs; ``spawn(*options)`` adds command-line options.
    """
    procs: list[subprocess.Popen[str]] = []

    def start(*extra: str) -> subprocess.Popen[str]:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
        argv = [sys.executable, "-m", "keyed_dispatch", "worker", "--dsn", pg_dsn, "--schema", pg_schema]
        argv += ["--import", "tests.postgres.tasks", "--import", "keyed_dispatch.demo._recording"]
        argv += ["--concurrency", "2", "--poll-interval", "0.2", "--log-level", "WARNING", *extra]
        proc = subprocess.Popen(argv, env=env, stderr=subprocess.PIPE, text=True)
        procs.append(proc)
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGCONT)
            proc.terminate()
    for proc in procs:
        proc.communicate(timeout=30)


@pytest.fixture
def lossy_proxy(pg_dsn: str) -> Iterator[LossyProxy]:
    """A TCP proxy to the session's server that can lose one statement's answer."""
    from tests.postgres.support import LossyProxy

    proxy = LossyProxy(pg_dsn)
    yield proxy
    proxy.close()


@pytest.fixture
def crash_server() -> Iterator[EmbeddedPostgres]:
    """A server of its own, for a test that crashes it (``restart(crash=True)``)."""
    from keyed_dispatch.postgres import EmbeddedPostgres

    with EmbeddedPostgres() as server:
        yield server
