"""Distributed keyed dispatch on PostgreSQL: the same guarantees across hosts.

Submit from any process with :class:`PostgresDispatcher`; run any number of
workers (``python -m keyed_dispatch worker --dsn ...`` or
:func:`run_worker`) on any host. Jobs sharing a key run one at a time, in
the order their submissions committed; the database enforces it.

Needs psycopg 3 (``pip install 'keyed_dispatch[postgres]'``, from a checkout
``pip install -e '.[postgres]'``); the core of keyed_dispatch does not import
this module.

Job functions. A job names its function as ``"module:function"`` text, and
a worker runs only functions registered in its process: decorated with
:func:`job_function` in a module it imports (``--import myapp.tasks``), or
given to ``run_worker(functions=...)`` (``--function``). A job naming any
other function fails at once, and its keys move on.

Keys. A key is stored as its canonical JSON text (:func:`key_text`), so
keys equal in-process are one key in the cluster and unequal keys two.

Database roles. The role that runs ``install_schema`` owns the queue: it
needs CREATE on the database, and should not be a superuser (the queue's
functions run with their owner's rights). Submitters and workers need only
these grants (shown for the default schema and two roles of your naming)::

    GRANT USAGE ON SCHEMA keyed_dispatch TO kd_submitter, kd_worker;
    GRANT EXECUTE ON FUNCTION
        keyed_dispatch.submit(uuid, text[], text, jsonb, jsonb, double precision, jsonb, boolean),
        keyed_dispatch.submit_many(jsonb, double precision, jsonb, boolean),
        keyed_dispatch.cancel(bigint),
        keyed_dispatch.expire(integer),
        keyed_dispatch.pause(text),
        keyed_dispatch.resume(text),
        keyed_dispatch.cancel_pending(text),
        keyed_dispatch.key_info(text, integer),
        keyed_dispatch.requeue(uuid, bigint)
        TO kd_submitter;
    GRANT SELECT ON keyed_dispatch.jobs, keyed_dispatch.job_keys, keyed_dispatch.migrations,
        keyed_dispatch.paused_keys, keyed_dispatch.dead_letters
        TO kd_submitter;
    GRANT EXECUTE ON FUNCTION
        keyed_dispatch.claim(text, integer, double precision),
        keyed_dispatch.heartbeat(text, bigint[], integer[], double precision),
        keyed_dispatch.finish(bigint, integer, text, jsonb, text, text),
        keyed_dispatch.finish_claim(text, bigint[], integer[], jsonb[], integer, double precision),
        keyed_dispatch.fail(bigint, integer, text[], text),
        keyed_dispatch.recover(integer),
        keyed_dispatch.expire(integer),
        keyed_dispatch.prune(double precision, integer)
        TO kd_worker;
    GRANT SELECT ON keyed_dispatch.migrations TO kd_worker;

Neither role can then change a row except through those functions. The
submitter reads the jobs table (results, ``stats()``): it sees every job's
arguments and results, so keep secrets out of them or give each tenant its
own schema. The submitter's grants also cover the key controls (``pause``,
``resume``, ``cancel_pending``, ``key_info``/``keys``, ``dead_letters``,
``requeue``) and the ``python -m keyed_dispatch keys`` command; give an
operator role the same, or split them off.

Durability. A submit returns once its job is committed; that commit
survives a server crash only with ``synchronous_commit = on`` (the
default; with ``off`` the last commits before a crash are lost: jobs
acknowledged to their submitters vanish and finished jobs may run again).
Keep ``fsync`` and ``full_page_writes`` on as well.
"""

from __future__ import annotations

try:
    import psycopg as _psycopg  # noqa: F401  # fail here, with the extra's name
except ImportError as _exc:
    raise ImportError(
        "keyed_dispatch.postgres needs psycopg 3, the postgres extra: pip install 'keyed_dispatch[postgres]' "
        "(from a checkout: pip install -e '.[postgres]')"
    ) from _exc

from ._common import MAX_KEY_BYTES, DatabaseUnavailable, JobFailed, key_text, key_value
from ._dispatcher import (
    PostgresDeadLetter,
    PostgresDispatcher,
    PostgresFuture,
    PostgresJob,
    PostgresOptions,
    PostgresStats,
)
from ._embedded import EmbeddedPostgres
from ._registry import job_function
from ._schema import SCHEMA_VERSION
from ._worker import JobContext, current_job, run_worker

__all__ = [
    "MAX_KEY_BYTES",
    "SCHEMA_VERSION",
    "DatabaseUnavailable",
    "EmbeddedPostgres",
    "JobContext",
    "JobFailed",
    "PostgresDeadLetter",
    "PostgresDispatcher",
    "PostgresFuture",
    "PostgresJob",
    "PostgresOptions",
    "PostgresStats",
    "current_job",
    "job_function",
    "key_text",
    "key_value",
    "run_worker",
]
