"""Distributed keyed dispatch on PostgreSQL: the same guarantees across hosts.

Submit from any process with :class:`PostgresDispatcher`; run any number of
workers (``python -m keyed_dispatch worker --dsn ...`` or
:func:`run_worker`) on any host. Jobs sharing a key run one at a time, in
the order their submissions committed; the database enforces it.

Needs psycopg 3 (``pip install 'keyed_dispatch[postgres]'``); the core of
keyed_dispatch does not import this module.
"""

from __future__ import annotations

try:
    import psycopg as _psycopg  # noqa: F401  # fail here, with the extra's name
except ImportError as _exc:
    raise ImportError(
        "keyed_dispatch.postgres needs psycopg 3; install the extra: pip install 'keyed_dispatch[postgres]'"
    ) from _exc

from ._common import MAX_KEY_BYTES, DatabaseUnavailable, JobFailed, key_text, key_value
from ._dispatcher import PostgresDispatcher, PostgresFuture, PostgresStats
from ._embedded import EmbeddedPostgres
from ._schema import SCHEMA_VERSION
from ._worker import JobContext, current_job, run_worker

__all__ = [
    "MAX_KEY_BYTES",
    "SCHEMA_VERSION",
    "DatabaseUnavailable",
    "EmbeddedPostgres",
    "JobContext",
    "JobFailed",
    "PostgresDispatcher",
    "PostgresFuture",
    "PostgresStats",
    "current_job",
    "key_text",
    "key_value",
    "run_worker",
]
