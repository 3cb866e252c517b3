"""PostgresDispatcher: submit keyed jobs to a PostgreSQL queue and await them."""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from concurrent.futures import Future, InvalidStateError
from concurrent.futures import _base as _futures_base
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg

from keyed_dispatch._config import _check_seconds
from keyed_dispatch._errors import DispatcherClosed, StartTimeout, SubmitTimeout, Superseded
from keyed_dispatch._keys import KeysText, normalize_keys
from keyed_dispatch._policies import _UNSET, JobOptions, Retry
from keyed_dispatch._stats import KeyInfo

from ._common import (
    DatabaseUnavailable,
    JobFailed,
    check_function_name,
    connect,
    dump_json,
    error_name,
    json_text,
    key_text,
    key_value,
    resolve_function,
)
from ._registry import function_name, registered_function
from ._schema import SCHEMA_VERSION, Statements, check_schema_name, lock_class, migrations

__all__ = [
    "PostgresDeadLetter",
    "PostgresDispatcher",
    "PostgresFuture",
    "PostgresJob",
    "PostgresOptions",
    "PostgresStats",
    "install_schema",
    "schema_version",
]

logger = logging.getLogger("keyed_dispatch")

_UNFINISHED = ("queued", "running")


@dataclass(frozen=True)
class PostgresStats:
    """A snapshot of the queue in the database (all submitters, all workers).

    Attributes:
        queued: jobs admitted and not started (including those waiting for
            their keys).
        running: jobs started and not finished.
        completed, failed, expired, cancelled: finished jobs still retained
            (finished rows are pruned after the workers' retention period).
        oldest_wait_s: how long the oldest queued job has waited, in
            seconds (0.0 when nothing is queued).
        hottest_keys: up to ten ``(key, unfinished jobs)`` pairs, longest
            backlog first; keys as :func:`~keyed_dispatch.postgres.key_value`
            reads them back (a tuple key, a WebhookKey too, as a plain tuple).
        workers: distinct workers running a job now.
        schema_version: the migration version installed.
        awaiting: futures of this dispatcher not resolved yet.
        superseded: finished jobs retired unstarted by a later job
            (``supersede``), still retained.
        in_backoff: of the queued jobs, those waiting for a retry.
        paused_keys: keys paused now (``pause``).
    """

    queued: int
    running: int
    completed: int
    failed: int
    expired: int
    cancelled: int
    oldest_wait_s: float
    hottest_keys: tuple[tuple[Hashable, int], ...]
    workers: int
    schema_version: int
    awaiting: int
    superseded: int = 0
    in_backoff: int = 0
    paused_keys: int = 0

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict (for JSON endpoints and logs)."""
        return asdict(self)


@dataclass(frozen=True)
class PostgresDeadLetter:
    """A job whose retries are exhausted, kept in the database (``dead_letters()``).

    Every job with a retry policy that fails for good leaves one, whichever
    process submitted it; :meth:`PostgresDispatcher.requeue` queues it again.

    Attributes:
        job_id: the failed job's id.
        keys: its keys (read back as by :func:`~keyed_dispatch.postgres.key_value`).
        func: its ``module:function``; ``args`` and ``kwargs`` its JSON arguments.
        attempts: how many attempts ran.
        error: the last attempt's :class:`JobFailed`, earlier ones chained
            as its ``__context__``.
        failed_at: when it failed for good (the database's clock, aware).
    """

    job_id: int
    keys: tuple[Hashable, ...]
    func: str
    args: list[Any]
    kwargs: dict[str, Any] = field(repr=False)
    attempts: int
    error: JobFailed
    failed_at: datetime.datetime


@dataclass(frozen=True, init=False)
class PostgresJob:
    """One job of a batch for :meth:`PostgresDispatcher.submit_many`.

    ``PostgresJob(key, func, *args, **kwargs)`` is the job that
    ``submit(key, func, *args, **kwargs)`` would queue, and
    ``PostgresJob.multi(keys, func, *args, **kwargs)`` the one of
    ``submit_multi``. The key set is read (and refused: a string instead of
    keys, an unhashable key, no key) when the job is made; everything else is
    checked by ``submit_many``, as ``submit`` checks it.

    Attributes:
        keys: the job's keys, duplicates collapsed.
        func: its ``"module:function"``.
        args, kwargs: its arguments.
    """

    keys: tuple[Hashable, ...]
    func: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]

    def __init__(self, key: Hashable, func: str, /, *args: Any, **kwargs: Any) -> None:
        self._fill(normalize_keys((key,)), func, args, kwargs)

    @classmethod
    def multi(cls, keys: Iterable[Hashable], func: str, /, *args: Any, **kwargs: Any) -> PostgresJob:
        """The job ordered on several keys that ``submit_multi(keys, func, ...)`` would queue."""
        job = cls.__new__(cls)
        job._fill(normalize_keys(keys), func, args, kwargs)
        return job

    def _fill(
        self, keys: tuple[Hashable, ...], func: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        object.__setattr__(self, "keys", keys)
        object.__setattr__(self, "func", func)
        object.__setattr__(self, "args", args)
        object.__setattr__(self, "kwargs", kwargs)


#: What submit_many() takes: a PostgresJob, or a ``(key, func, args, kwargs)`` tuple.
BatchItem = PostgresJob | tuple[Hashable, str, Sequence[Any], Mapping[str, Any]]


class PostgresFuture(Future[Any]):
    """The future of a job in the database.

    It resolves once, when the job finishes on whatever worker ran it: with
    the job's JSON result, :class:`JobFailed` (the job raised; with a retry
    policy, its last attempt did), ``StartTimeout`` (expired before it
    started), :class:`~keyed_dispatch.Superseded` (retired unstarted by a
    later job) or cancellation. ``cancel()`` cancels the job in the database
    if it is not running (not started, or waiting for a retry), and returns
    False once it runs or has finished.
    """

    def __init__(self, dispatcher: PostgresDispatcher, token: uuid.UUID) -> None:
        super().__init__()
        self._dispatcher = dispatcher
        self._token = token
        #: The job's id in the database (set once its submit committed).
        self.job_id = 0

    def cancel(self) -> bool:
        """Cancel the job if it is not running (in the whole cluster).

        Returns True if the job will never run (again), or was already
        cancelled; False if it runs now or has finished, as
        ``Future.cancel`` does. A job waiting for a retry is cancelled.

        Raises:
            DatabaseUnavailable: the database cannot be reached to cancel.
        """
        if self.done():
            return self.cancelled()
        if not self._dispatcher._cancel(self.job_id):
            return self.cancelled()
        self._dispatcher._forget(self._token)
        self._settle_cancelled()
        return self.cancelled()

    def _settle_cancelled(self) -> None:
        # Cancel and notify, as a pool's worker would, once whoever comes
        # first (the owner's cancel() or the result listener):
        # concurrent.futures.wait() and as_completed() count a future
        # cancelled but not notified as not done. Touches Future's private
        # state, the same fields in 3.10-3.13.
        if Future.cancel(self):
            with self._condition:
                if self._state == _futures_base.CANCELLED:
                    self.set_running_or_notify_cancel()


class PostgresDispatcher:
    """Submit jobs ordered by key to workers on any host, through PostgreSQL.

    The distributed counterpart of :class:`~keyed_dispatch.KeyedDispatcher`,
    with the same guarantees across processes and hosts: jobs sharing a key
    start in the order their submissions committed (for one submitting
    thread, program order) and never run at the same time anywhere in the
    cluster; other keys run in parallel on any idle worker
    (``python -m keyed_dispatch worker``). Multi-key jobs wait for their turn
    on every key and cannot deadlock.

    How it differs from the thread dispatcher: a job names an importable
    function as ``"module:function"`` text and carries JSON arguments; it
    runs in a worker process. Keys are stored as canonical JSON text (see
    :func:`keyed_dispatch.postgres.key_text`): keys equal in-process are one
    key in the cluster, unequal keys two. A worker that dies mid-job
    loses nothing: after its lease expires the job runs again (at least once)
    before any later job of its keys, so handlers should be idempotent; they
    get a token through :func:`keyed_dispatch.postgres.current_job`.

    The dispatcher is thread-safe. It keeps a few connections, and one
    listening thread (started by the first submit) that resolves futures on
    ``LISTEN/NOTIFY`` and, as a fallback, by polling every ``poll_interval``.
    It may be created before ``os.fork()``: the child starts with no
    connection and no pending future of the parent.

    Args:
        dsn: a libpq connection string or URI.
        submit_timeout: bound in seconds on one submit's statement (lock
            waits included) and on connecting (libpq rounds that up to whole
            seconds, at least 2); ``math.inf`` for none.
        start_timeout: jobs not started this many seconds after admission
            never run; their futures fail with ``StartTimeout``. None: no
            limit. Measured on the database clock.
        schema: the PostgreSQL schema holding the queue.
        poll_interval: seconds between fallback polls for results.
        verify_functions: import each function name at first submit and
            check that it is registered with
            :func:`~keyed_dispatch.postgres.job_function`, so a typo or a
            function workers will refuse fails there rather than in a worker.
            Turn off when submitters cannot import the workers' code (or
            give ``functions``).
        functions: the job functions the workers run, as objects or
            ``module:function`` names, if the submitter knows them: a name
            outside them is refused at submit, nothing is imported, and
            ``verify_functions`` is not consulted.
        max_connections: idle connections kept for submitting threads.
        retry: the :class:`~keyed_dispatch.Retry` policy of the jobs
            submitted here (None: a failed job fails at once);
            ``options(retry=...)`` sets one job's. It is stored with each job
            and the workers apply it. ``attempts`` counts every start of the
            job, a re-run after its worker was lost included (each start has
            its own fencing token). ``on`` crosses processes as the qualified
            names of its exception classes (``"ConnectionError"``,
            ``"myapp.errors.ExchangeDown"``), matched against the names of
            the raised exception's class and its bases: a subclass matches as
            with ``isinstance``, provided the class has the same module and
            name in the workers. A predicate (``on=callable``) cannot cross
            processes: it is refused with a TypeError. Backoff, cap, jitter
            and ``deadline`` (from the job's first start) are as in-process.

    Key policies, as in the thread dispatcher, hold across the cluster: a
    retried job keeps the head of its keys, :meth:`options` opts a job in to
    ``supersede``, and :meth:`pause`, :meth:`resume`, :meth:`cancel_pending`,
    :meth:`key_info` and :meth:`keys` act on the queue in the database, from
    any process (``python -m keyed_dispatch keys ...`` too).
    """

    def __init__(
        self,
        dsn: str,
        *,
        submit_timeout: float = 30.0,
        start_timeout: float | None = None,
        schema: str = "keyed_dispatch",
        poll_interval: float = 1.0,
        verify_functions: bool = True,
        functions: Iterable[Callable[..., Any] | str] | None = None,
        max_connections: int = 4,
        retry: Retry | None = None,
    ) -> None:
        if not isinstance(dsn, str):
            raise TypeError(f"dsn must be a connection string, got {type(dsn).__name__}")
        _check_seconds("submit_timeout", submit_timeout, allow_inf=True)
        if start_timeout is not None:
            _check_seconds("start_timeout", start_timeout, allow_inf=False)
        _check_seconds("poll_interval", poll_interval, allow_inf=False)
        if poll_interval == 0:
            raise ValueError("poll_interval must be > 0, got 0")
        self._dsn = dsn
        self._schema = check_schema_name(schema)
        self._q = Statements(schema)
        self._results_channel = f"{self._schema}_results"
        self._submit_timeout = submit_timeout
        self._start_timeout = start_timeout
        self._poll_interval = poll_interval
        self._verify = verify_functions
        self._functions = (
            None
            if functions is None
            else frozenset(
                check_function_name(item) if isinstance(item, str) else function_name(item)
                for item in functions
            )
        )
        self._max_idle = max_connections
        self._retry = None if retry is None else _retry_json(retry)
        # Whether some job submitted here may expire (see _poll).
        self._deadlines = start_timeout is not None
        self._lock = threading.Lock()
        # Guarded by _lock: idle connections, awaited futures, listener state.
        self._idle: list[psycopg.Connection[Any]] = []
        # By submit token: registered before the submit commits (see _retire).
        self._futures: dict[uuid.UUID, PostgresFuture] = {}
        self._closed = False
        self._listener: threading.Thread | None = None
        self._stop = threading.Event()
        self._pid = os.getpid()
        # Connections inherited over fork: never closed in the child (closing
        # would end the parent's sessions), only kept from the collector.
        self._orphans: list[psycopg.Connection[Any]] = []
        self._verified: set[str] = set()

    # -- connections --------------------------------------------------------

    def _after_fork(self) -> None:
        # Caller holds _lock.
        if os.getpid() != self._pid:
            self._pid = os.getpid()
            self._orphans.extend(self._idle)
            self._idle = []
            self._futures = {}
            self._listener = None
            self._stop = threading.Event()

    def _connect(self) -> psycopg.Connection[Any]:
        conn = connect(self._dsn, application_name="keyed_dispatch submitter", timeout=self._submit_timeout)
        if math.isfinite(self._submit_timeout):
            # The bound on a statement, lock waits on hot keys included.
            try:
                conn.execute(f"SET statement_timeout = {max(1, int(self._submit_timeout * 1000))}")
            except psycopg.Error as exc:
                conn.close()
                raise DatabaseUnavailable(f"lost a new connection to PostgreSQL: {exc}") from exc
        return conn

    def _call(self, query: str, params: tuple[Any, ...] | None = None) -> list[tuple[Any, ...]]:
        """Run one statement (one transaction) on a pooled connection.

        Only a lost connection (server restart, terminated backend, network
        cut) is retried: the statement is sent again on another connection,
        which is safe for every statement sent here (a submit carries a
        token, so a repeated one returns the job of the first if that one
        committed without its acknowledgement reaching us). Dead idle
        connections are replaced without limit (the pool is bounded); losing
        a new connection twice raises DatabaseUnavailable. Any other error is
        the database refusing the statement: raised at once, unchanged
        (``psycopg.Error``), except a timeout (SubmitTimeout) and a missing
        schema (RuntimeError).
        """
        lost_new = 0
        while True:
            with self._lock:
                self._after_fork()
                if self._closed:
                    raise DispatcherClosed("the dispatcher is closed")
                conn = self._idle.pop() if self._idle else None
            reused = conn is not None
            if conn is None:
                conn = self._connect()
            try:
                rows = (
                    conn.execute(query, params).fetchall()
                    if params is not None
                    else conn.execute(query).fetchall()
                )
            except psycopg.Error as exc:
                if not (conn.broken or conn.closed):
                    self._give_back(conn)
                    refusal = _refusal(exc, self._schema, self._submit_timeout)
                    if refusal is None:
                        raise
                    raise refusal from exc
                conn.close()
                if not reused:
                    lost_new += 1
                    if lost_new > 1:
                        raise DatabaseUnavailable(f"lost the connection to PostgreSQL twice: {exc}") from exc
                logger.info("lost a database connection (%s); sending the statement again on another", exc)
                continue
            except BaseException:
                self._give_back(conn)
                raise
            self._give_back(conn)
            return rows

    def _give_back(self, conn: psycopg.Connection[Any]) -> None:
        with self._lock:
            if self._closed or conn.closed or len(self._idle) >= self._max_idle or os.getpid() != self._pid:
                close = True
            else:
                self._idle.append(conn)
                close = False
        if close and os.getpid() == self._pid:
            conn.close()

    # -- schema -------------------------------------------------------------

    def install_schema(self) -> int:
        """Create or upgrade the queue's schema; safe to call from every process.

        Migrations are versioned and applied in order, each once, in one
        transaction under an advisory lock, so concurrent callers do not
        race. Returns the installed version.

        Raises:
            DatabaseUnavailable: the database cannot be reached.
            RuntimeError: the database holds a newer schema than this code.
        """
        with self._lock:
            self._after_fork()
            if self._closed:
                raise DispatcherClosed("the dispatcher is closed")
        with connect(
            self._dsn, application_name="keyed_dispatch migrate", timeout=self._submit_timeout
        ) as conn:
            return install_schema(conn, self._schema)

    # -- submit -------------------------------------------------------------

    def submit(self, key: Hashable, func: str, /, *args: Any, **kwargs: Any) -> PostgresFuture:
        """Queue ``func(*args, **kwargs)`` on ``key``; return its future.

        Returns once the job is committed: it is durable, and every later
        submit on ``key`` (from any process) runs after it.

        Args:
            key: str, int, float, None or a tuple of those (a WebhookKey is
                one); keys equal in-process are one key here too, see
                :func:`~keyed_dispatch.postgres.key_text`.
            func: ``"module:function"``, importable by the workers.
            args, kwargs: JSON-serializable (tuples arrive as lists).

        Raises:
            TypeError: non-JSON arguments, a key of another type, ``func``
                not text or not callable.
            ValueError: ``func`` not ``module:function``; a key too long or
                not storable (see ``key_text``); a NUL character or a lone
                surrogate in a string of the arguments.
            ImportError: ``func`` cannot be imported (``verify_functions``).
            LookupError: ``func`` is not registered (``verify_functions``)
                or not among ``functions``.
            SubmitTimeout: the database did not answer within ``submit_timeout``.
            DispatcherClosed: after ``close()``.
            psycopg.Error: the database refused the job for another reason.
            Nothing was written when any of these is raised.
            DatabaseUnavailable: the database cannot be reached. A lost
                connection is retried with the same job token, so a submit
                whose commit went unacknowledged returns its job; only when
                no connection could be made again may the job have been
                queued nonetheless (it then runs; no future follows it).
        """
        return self._submit((key,), func, args, kwargs, None)

    def submit_multi(
        self, keys: Iterable[Hashable], func: str, /, *args: Any, **kwargs: Any
    ) -> PostgresFuture:
        """Queue one job ordered on several keys; it runs when first on all.

        Duplicate keys collapse; an empty key set is a ValueError. Otherwise
        as :meth:`submit`.
        """
        return self._submit(keys, func, args, kwargs, None)

    def options(
        self, *, retry: Retry | None = None, supersede: bool = False, start_timeout: float | None = _UNSET
    ) -> PostgresOptions:
        """A view whose ``submit`` and ``submit_multi`` apply these options to their jobs.

        ``submit(key, func, /, *args, **kwargs)`` passes its keyword
        arguments to the job, so per-submission options need a door of
        their own::

            d.options(retry=Retry(3), supersede=True).submit(key, "myapp.tasks:sync", symbol)

        Args:
            retry: this job's retry policy instead of the dispatcher's (as
                the constructor's ``retry``).
            supersede: at its admission (in the submit's transaction), the
                job retires every earlier job that also opted in, has never
                started, and whose keys are all among its keys: those never
                run and their futures fail with
                :class:`~keyed_dispatch.Superseded`. A running job, or one
                waiting for a retry, is never touched; a job that did not opt
                in is never superseded.
            start_timeout: this job's start timeout instead of the
                dispatcher's (None: no limit).

        Raises:
            TypeError, ValueError: a bad option (a retry predicate too).
        """
        options = JobOptions(retry=retry, supersede=supersede, start_timeout=start_timeout)
        return PostgresOptions(self, options, None if retry is None else _retry_json(retry))

    def submit_many(self, jobs: Iterable[BatchItem]) -> list[PostgresFuture]:
        """Queue a batch of jobs in one transaction; return their futures, in order.

        Each item is a :class:`PostgresJob`, the job that ``submit`` (or
        ``submit_multi``) would queue with the same arguments, or a plain
        ``(key, func, args, kwargs)`` tuple, the job of ``submit(key, func,
        *args, **kwargs)``. The batch is admitted as that many submits in a
        row would be, in the order of ``jobs``: on every key, a job of the
        batch runs after the jobs
        submitted before it (earlier jobs of the batch included) and before
        the ones submitted after the batch returns. All or nothing: every job
        is checked first, and a job that ``submit`` would refuse refuses the
        whole batch with the same error (on Python 3.11+ a note names its
        position); nothing is written then. A batch costs one round trip,
        whatever its size. An empty batch returns ``[]`` and writes nothing.

        The transaction takes one advisory lock per distinct key of the
        batch, as many submits would, but holds them all until it commits:
        PostgreSQL's lock table (``max_locks_per_transaction`` times
        ``max_connections``, 6400 by default, shared by every session) bounds
        the distinct keys of one batch; keep batches to a few thousand keys.

        A job that :meth:`submit` would refuse raises the error ``submit``
        raises, under the same conditions. A lost connection is retried with
        the same job tokens, so a batch whose commit went unacknowledged
        returns its jobs.

        Raises:
            TypeError: an item that is neither a PostgresJob nor a ``(key,
                func, args, kwargs)`` tuple (args a tuple or list, kwargs a
                mapping with str keys).
        """
        return self._submit_many(jobs, None)

    def _job_options(
        self, options: tuple[JobOptions, str | None] | None
    ) -> tuple[float | None, str | None, bool]:
        """Start timeout, retry policy JSON and supersede of a submission with ``options`` (a view's)."""
        if options is None:
            start_timeout, retry, supersede = self._start_timeout, self._retry, False
        else:
            start_timeout = options[0].start_timeout_or(self._start_timeout)
            retry = self._retry if options[1] is None else options[1]
            supersede = options[0].supersede
        if start_timeout is not None:
            self._deadlines = True
        return start_timeout, retry, supersede

    def _prepare(
        self, keys: tuple[Hashable, ...], func: str, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[list[str], str, str]:
        """A job's key texts and JSON arguments, once its keys (normalized), function and arguments pass."""
        # Keys equal in-process (1 and 1.0) have one text: they collapse here too.
        texts = list(dict.fromkeys(map(key_text, keys)))
        check_function_name(func)
        if func not in self._verified:
            self._check_function(func)
            self._verified.add(func)
        args_json = dump_json(list(args), "job arguments") if args else "[]"
        return texts, args_json, dump_json(kwargs, "job keyword arguments") if kwargs else "{}"

    def _submit(
        self,
        keys: Iterable[Hashable],
        func: str,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        options: tuple[JobOptions, str | None] | None,
    ) -> PostgresFuture:
        # ``options``: a view's options and its retry policy's JSON.
        start_timeout, retry, supersede = self._job_options(options)
        keys = normalize_keys(keys)
        texts, args_json, kwargs_json = self._prepare(keys, func, args, kwargs)
        started = time.monotonic()
        future = self._queue(
            self._q.submit, (texts, func, args_json, kwargs_json, start_timeout, retry, supersede)
        )
        job_id = future.job_id
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "submitted job %d on %s (%.1f ms)",
                job_id,
                KeysText(keys),
                (time.monotonic() - started) * 1000,
            )
        return future

    def _submit_many(
        self, jobs: Iterable[BatchItem], options: tuple[JobOptions, str | None] | None
    ) -> list[PostgresFuture]:
        with self._lock:
            self._after_fork()
            if self._closed:
                raise DispatcherClosed("the dispatcher is closed")
        start_timeout, retry, supersede = self._job_options(options)
        # The batch travels as one JSON document: [token, key texts, func,
        # args, kwargs] per job (see submit_many() in the schema).
        entries: list[str] = []
        quoted: dict[str, str] = {}  # function names as JSON
        for index, item in enumerate(jobs):
            try:
                job = item if isinstance(item, PostgresJob) else _job_of(item)
                texts, args_json, kwargs_json = self._prepare(job.keys, job.func, job.args, job.kwargs)
            except Exception as exc:
                _add_note(exc, f"refused job {index} of the batch (nothing was submitted)")
                raise
            func = quoted.get(job.func) or quoted.setdefault(job.func, json_text(job.func))
            keys = ",".join(map(json_text, texts))
            entries.append(f"[{keys}],{func},{args_json},{kwargs_json}]")
        if not entries:
            return []
        tokens = _tokens(len(entries))
        futures = [PostgresFuture(self, token) for token in tokens]
        with self._lock:
            self._after_fork()
            # Registered first: a job may finish before the batch returns.
            self._futures.update(zip(tokens, futures, strict=True))
        payload = ",".join(f'["{token}",{entry}' for token, entry in zip(tokens, entries, strict=True))
        started = time.monotonic()
        try:
            rows = self._call(self._q.submit_many, (f"[{payload}]", start_timeout, retry, supersede))
        except BaseException:
            with self._lock:
                for token in tokens:
                    self._futures.pop(token, None)
            raise
        for future, row in zip(futures, rows, strict=True):
            future.job_id = int(row[0])
        self._start_listener()
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug(
                "submitted %d jobs, %d to %d (%.1f ms)",
                len(futures),
                futures[0].job_id,
                futures[-1].job_id,
                (time.monotonic() - started) * 1000,
            )
        return futures

    def _queue(self, statement: str, params: tuple[Any, ...]) -> PostgresFuture:
        """Run ``statement`` (token first, then ``params``) to queue a job; its future."""
        token = uuid.uuid4()
        future = PostgresFuture(self, token)
        with self._lock:
            self._after_fork()
            # Registered first: the job may finish before the submit returns.
            self._futures[token] = future
        try:
            rows = self._call(statement, (token, *params))
        except BaseException:
            self._forget(token)
            raise
        future.job_id = int(rows[0][0])
        self._start_listener()
        return future

    def _start_listener(self) -> None:
        with self._lock:
            if self._listener is None and not self._closed:
                self._listener = threading.Thread(
                    target=self._listen, args=(self._stop,), name="keyed-dispatch-results", daemon=True
                )
                self._listener.start()

    def _check_function(self, func: str) -> None:
        """Refuse ``func`` if workers would refuse it (as far as this process knows)."""
        if self._functions is not None:
            if func not in self._functions:
                raise LookupError(
                    f"job function {func!r} is not one of the functions given to this dispatcher"
                )
        elif self._verify:
            resolve_function(func)
            if registered_function(func) is None:
                raise LookupError(
                    f"job function {func!r} is not registered: workers run only functions registered "
                    "with @job_function (or given to run_worker(functions=...)); register it, or give "
                    "this dispatcher functions=... or verify_functions=False"
                )

    def _cancel(self, job_id: int) -> bool:
        rows = self._call(self._q.cancel, (job_id,))
        return bool(rows[0][0])

    def _forget(self, token: uuid.UUID) -> None:
        with self._lock:
            self._futures.pop(token, None)

    # -- results ------------------------------------------------------------

    def _listen(self, stop: threading.Event) -> None:
        """Resolve futures: on each ``done`` notification, and by polling."""
        conn: psycopg.Connection[Any] | None = None
        next_poll = 0.0
        failures = 0
        # Short waits keep close() prompt; polls still run every poll_interval.
        wait = min(self._poll_interval, 0.2)
        while not stop.is_set():
            try:
                if conn is None:
                    conn = connect(self._dsn, application_name="keyed_dispatch results")
                    conn.execute(self._q.listen_done)
                    conn.execute(self._q.listen_results)
                    next_poll = 0.0  # notifications may have been missed meanwhile
                tokens: set[uuid.UUID] = set()
                for notify in conn.notifies(timeout=wait, stop_after=1):
                    self._notified(notify.channel, notify.payload, tokens)
                for notify in conn.notifies(timeout=0.0):
                    self._notified(notify.channel, notify.payload, tokens)
                now = time.monotonic()
                if now >= next_poll:
                    next_poll = now + self._poll_interval
                    self._poll(None)
                elif tokens:
                    self._poll(tokens)
                failures = 0
            except (psycopg.Error, DatabaseUnavailable) as exc:  # one reconnect per failure
                failures += 1
                if conn is not None:
                    conn.close()
                    conn = None
                logger.warning("result listener lost the database (%s); reconnecting", exc)
                stop.wait(min(2.0, 0.05 * 2 ** min(failures, 6)))
            except DispatcherClosed:
                break
            except Exception:  # keep resolving futures whatever one poll hit
                logger.exception("result listener error; retrying")
                stop.wait(1.0)
        if conn is not None:
            conn.close()

    def _notified(self, channel: str, payload: str, tokens: set[uuid.UUID]) -> None:
        """Resolve what a notification carries; add to ``tokens`` the jobs to read back."""
        if channel != self._results_channel:  # ``done``: a job's token
            tokens.add(uuid.UUID(payload))
            return
        # finish_claim(): [token, result] for each completed job, or the token
        # alone when its result was too large to carry.
        for entry in json.loads(payload):
            if isinstance(entry, str):
                tokens.add(uuid.UUID(entry))
                continue
            with self._lock:
                future = self._futures.pop(uuid.UUID(entry[0]), None)
            if future is not None:
                with contextlib.suppress(InvalidStateError):  # cancelled by its owner meanwhile
                    future.set_result(entry[1])

    def _poll(self, tokens: set[uuid.UUID] | None) -> None:
        """Resolve the futures of finished jobs among ``tokens`` (None: all awaited).

        A full poll skips futures whose submit has not returned yet: their
        rows may not be committed, and a missing row would read as pruned.
        """
        with self._lock:
            if tokens is None:
                wanted = [token for token, future in self._futures.items() if future.job_id]
            else:
                wanted = [token for token in tokens if token in self._futures]
        if not wanted:
            return
        if tokens is None and self._deadlines:
            # Expire overdue jobs even when no worker is alive to do it.
            self._call(self._q.expire)
        rows = self._call(self._q.results, (wanted,))
        for token, row_id, state, result, error_type, error_message, keys, attempt, failures in rows:
            with self._lock:
                future = self._futures.pop(token, None)
            if future is None or future.done():
                continue
            job_id = future.job_id or row_id
            try:
                if state == "completed":
                    future.set_result(result)
                elif state == "failed":
                    future.set_exception(_job_failed(job_id, error_type, error_message, attempt, failures))
                elif state == "expired":
                    future.set_exception(StartTimeout(f"job {job_id}: {error_message}"))
                elif state == "superseded":
                    future.set_exception(Superseded(tuple(map(key_value, keys))))
                elif state == "cancelled":
                    future._settle_cancelled()
                else:
                    future.set_exception(
                        JobFailed(
                            job_id, "JobLost", "the job's row is gone (pruned before its result was read)"
                        )
                    )
            except InvalidStateError:
                pass  # cancelled by its owner in the meantime; nothing to deliver

    # -- key policies -------------------------------------------------------

    def pause(self, key: Hashable) -> bool:
        """Hold ``key`` across the cluster: none of its jobs starts until :meth:`resume`.

        Its queued jobs and the ones submitted later wait; they do not fail,
        and their start deadlines still apply. A job of the key running now
        finishes; a job waiting for a retry is not retried while the pause
        lasts. Once this returns, no worker starts a job of the key. Pausing a
        key with no work holds it paused for the jobs to come.

        Returns:
            True if the key was not paused already.

        Raises:
            TypeError, ValueError: a key that cannot be stored (see ``key_text``).
            DatabaseUnavailable: the database cannot be reached.
        """
        return bool(self._call(self._q.pause, (key_text(key),))[0][0])

    def resume(self, key: Hashable) -> bool:
        """Lift the pause of ``key``; its jobs may start again (the workers are woken).

        This mode has no halts (a failed job never stops its key), so a
        resume only lifts a pause.

        Returns:
            True if the key was paused.
        """
        return bool(self._call(self._q.resume, (key_text(key),))[0][0])

    def cancel_pending(self, key: Hashable) -> int:
        """Cancel every job of ``key`` that is not running; return how many.

        Their futures (in any process) are cancelled, a job waiting for a
        retry's too; the job running now, if any, is not touched. Other keys
        of a multi-key job move on as well. Jobs submitted while this runs
        may be left queued.
        """
        return int(self._call(self._q.cancel_pending, (key_text(key),))[0][0])

    def key_info(self, key: Hashable) -> KeyInfo:
        """A snapshot of ``key`` in the queue: pending jobs, running, oldest wait, paused, in backoff.

        ``pending`` counts the queued jobs not waiting for a retry;
        ``halted`` is always False (this mode has no halts). A key with no
        work reads as empty.
        """
        text = key_text(key)
        for row in self._call(self._q.key_info, (text, None)):
            return _key_info(key, row)
        return KeyInfo(key, 0, False, 0.0, False, False, False)

    def keys(self, limit: int | None = None) -> list[KeyInfo]:
        """Snapshots of the live keys (with unfinished jobs, or paused), deepest first.

        Keys read back as :func:`~keyed_dispatch.postgres.key_value` reads
        them (tuples as plain tuples).

        Args:
            limit: at most this many (the deepest).

        O(unfinished jobs) in the database: for an operator, not a hot path.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
        return [_key_info(key_value(row[0]), row) for row in self._call(self._q.key_info, (None, limit))]

    def dead_letters(self, limit: int | None = None) -> list[PostgresDeadLetter]:
        """The jobs whose retries are exhausted and that were not requeued, oldest first.

        A job leaves a dead letter when it had a retry policy (the
        dispatcher's or its own) and failed for good: its attempts ran out,
        its error was not one the policy retries, or the policy's deadline
        passed. Dead letters are not pruned with finished jobs; requeue them
        (:meth:`requeue`) or delete their rows (``DELETE FROM
        <schema>.dead_letters WHERE job_id = ...``, as the schema's owner).

        Args:
            limit: at most this many.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
        rows = self._call(self._q.dead_letters, (limit,))
        return [
            PostgresDeadLetter(
                job_id=int(job_id),
                keys=tuple(map(key_value, keys)),
                func=func,
                args=args,
                kwargs=kwargs,
                attempts=int(attempts),
                error=_job_failed(int(job_id), error_type, message, int(attempts), failures),
                failed_at=failed_at,
            )
            for job_id, keys, func, args, kwargs, attempts, error_type, message, failures, failed_at in rows
        ]

    def requeue(self, job_id: int) -> PostgresFuture:
        """Queue a dead letter's job again, as a new job at the tail of its keys; its future.

        The new job has a new id, the same function, arguments and retry
        policy, no start timeout, and does not opt in to ``supersede``. The
        dead letter is removed in the same transaction, so a letter is
        requeued once.

        Raises:
            LookupError: no dead letter has this job id (never dead, or
                requeued already).
            DatabaseUnavailable: the database cannot be reached.
        """
        if isinstance(job_id, bool) or not isinstance(job_id, int):
            raise TypeError(f"job_id must be an int, got {type(job_id).__name__}")
        try:
            future = self._queue(self._q.requeue, (job_id,))
        except psycopg.errors.NoDataFound as exc:
            raise LookupError(exc.diag.message_primary or str(exc)) from None
        logger.info("requeued dead job %d as job %d", job_id, future.job_id)
        return future

    # -- observation and shutdown -------------------------------------------

    def stats(self) -> PostgresStats:
        """Query the queue's state, across the cluster (one round trip).

        Raises:
            DatabaseUnavailable: the database cannot be reached.
        """
        rows = self._call(self._q.stats)
        counts, oldest, hottest, workers, version, in_backoff, paused = rows[0]
        with self._lock:
            awaiting = len(self._futures)
        return PostgresStats(
            queued=int(counts.get("queued", 0)),
            running=int(counts.get("running", 0)),
            completed=int(counts.get("completed", 0)),
            failed=int(counts.get("failed", 0)),
            expired=int(counts.get("expired", 0)),
            cancelled=int(counts.get("cancelled", 0)),
            oldest_wait_s=float(oldest),
            hottest_keys=tuple((key_value(key), int(n)) for key, n in hottest),
            workers=int(workers),
            schema_version=int(version),
            awaiting=awaiting,
            superseded=int(counts.get("superseded", 0)),
            in_backoff=int(in_backoff),
            paused_keys=int(paused),
        )

    def _metrics(self, bounds: tuple[float, ...], top_keys: int) -> tuple[Any, ...]:
        # The raw figures keyed_dispatch.metrics exports (see the "metrics"
        # statement), in one round trip.
        negated = sorted(-bound for bound in bounds)
        n = len(bounds)
        return self._call(self._q.metrics, (n, negated, n, negated, top_keys))[0]

    def close(self) -> None:
        """Stop the result listener and close the connections. Idempotent.

        Jobs already submitted stay in the database and still run; futures
        not resolved yet fail with ``DispatcherClosed`` (a later dispatcher
        cannot pick them up).
        """
        with self._lock:
            self._after_fork()
            if self._closed:
                return
            self._closed = True
            idle, self._idle = self._idle, []
            futures, self._futures = self._futures, {}
            listener = self._listener
        self._stop.set()
        if listener is not None and listener is not threading.current_thread():
            listener.join()
        for conn in idle:
            conn.close()
        for future in futures.values():
            with contextlib.suppress(InvalidStateError):  # resolved at the same moment
                future.set_exception(
                    DispatcherClosed(
                        f"dispatcher closed before job {future.job_id} finished; it is still in the queue"
                    )
                )

    def __enter__(self) -> PostgresDispatcher:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class PostgresOptions:
    """The view of a PostgresDispatcher that ``options()`` returns."""

    __slots__ = ("_dispatcher", "_options")

    def __init__(self, dispatcher: PostgresDispatcher, options: JobOptions, retry: str | None) -> None:
        self._dispatcher = dispatcher
        self._options = (options, retry)

    def submit(self, key: Hashable, func: str, /, *args: Any, **kwargs: Any) -> PostgresFuture:
        """:meth:`PostgresDispatcher.submit` with this view's options."""
        return self._dispatcher._submit((key,), func, args, kwargs, self._options)

    def submit_multi(
        self, keys: Iterable[Hashable], func: str, /, *args: Any, **kwargs: Any
    ) -> PostgresFuture:
        """:meth:`PostgresDispatcher.submit_multi` with this view's options."""
        return self._dispatcher._submit(keys, func, args, kwargs, self._options)

    def submit_many(self, jobs: Iterable[BatchItem]) -> list[PostgresFuture]:
        """:meth:`PostgresDispatcher.submit_many` with this view's options, for every job of the batch."""
        return self._dispatcher._submit_many(jobs, self._options)


def _job_of(item: object) -> PostgresJob:
    """The PostgresJob a ``(key, func, args, kwargs)`` tuple stands for.

    Raises:
        TypeError: anything else; args that are text or not a sequence,
            kwargs that are not a mapping with text keys.
    """
    if not isinstance(item, tuple) or len(item) != 4:
        what = f"a tuple of {len(item)}" if isinstance(item, tuple) else type(item).__name__
        raise TypeError(
            f"submit_many takes PostgresJob items or (key, func, args, kwargs) tuples, got {what}"
        )
    key, func, args, kwargs = item
    if isinstance(args, (str, bytes)) or not isinstance(args, Sequence):
        raise TypeError(
            f"the args of a (key, func, args, kwargs) item are a tuple or a list, got {type(args).__name__}"
        )
    if not isinstance(kwargs, Mapping) or not all(isinstance(name, str) for name in kwargs):
        raise TypeError("the kwargs of a (key, func, args, kwargs) item are a mapping with str keys")
    return PostgresJob(key, func, *args, **kwargs)


def _tokens(count: int) -> list[uuid.UUID]:
    """``count`` random (version 4) UUIDs, from one read of the system's randomness."""
    raw = os.urandom(16 * count)
    return [uuid.UUID(bytes=raw[start : start + 16], version=4) for start in range(0, 16 * count, 16)]


def _add_note(error: BaseException, note: str) -> None:
    """``error.add_note(note)`` where Python has it (3.11+)."""
    add = getattr(error, "add_note", None)
    if add is not None:
        add(note)


def _retry_json(retry: Retry) -> str:
    """The JSON a retry policy is stored as, with its job (``on`` as class names).

    Raises:
        TypeError: ``retry`` is not a Retry, or its ``on`` is a predicate.
    """
    if not isinstance(retry, Retry):
        raise TypeError(f"retry must be a Retry or None, got {type(retry).__name__}")
    if not isinstance(retry.on, tuple):
        raise TypeError(
            "a retry predicate (Retry(on=callable)) cannot cross processes: give the PostgreSQL mode "
            "Retry(on=...) exception classes, matched by qualified name in the workers"
        )
    return json.dumps(
        {
            "attempts": retry.attempts,
            "backoff": retry.backoff,
            "max_backoff": retry.max_backoff,
            "jitter": retry.jitter,
            "on": [error_name(kind) for kind in retry.on],
            "deadline": retry.deadline,
        }
    )


def _job_failed(job_id: int, error_type: str, message: str, attempt: int, failures: Any) -> JobFailed:
    """The JobFailed of a failed job, the failures of its earlier attempts chained."""
    error = earlier = None
    for failure in [*failures, {"attempt": attempt, "error_type": error_type, "message": message}]:
        error = JobFailed(job_id, failure["error_type"], failure["message"], int(failure["attempt"]))
        error.__context__ = earlier
        earlier = error
    assert error is not None
    return error


def _key_info(key: Hashable, row: tuple[Any, ...]) -> KeyInfo:
    _, pending, running, oldest, paused, in_backoff = row
    return KeyInfo(key, int(pending), bool(running), float(oldest), False, bool(paused), bool(in_backoff))


def _refusal(exc: psycopg.Error, schema: str, timeout: float) -> Exception | None:
    """The error to raise for ``exc`` (a statement's, on a live connection); None: ``exc`` itself."""
    if isinstance(exc, psycopg.errors.QueryCanceled):
        return SubmitTimeout(f"the database did not answer within submit_timeout={timeout}s")
    if isinstance(
        exc,
        (psycopg.errors.UndefinedFunction, psycopg.errors.UndefinedTable, psycopg.errors.InvalidSchemaName),
    ):
        return RuntimeError(
            f"keyed_dispatch schema {schema!r} is not installed (or older than this code); "
            "call install_schema()"
        )
    return None


def install_schema(conn: psycopg.Connection[Any], schema: str) -> int:
    """Apply the missing migrations of ``schema`` on ``conn``; return the version.

    ``conn`` must be in autocommit mode; the migrations run in one transaction.
    """
    q = Statements(schema)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s, 0)", (lock_class(schema),))
        conn.execute(q.create_schema)
        conn.execute(q.create_migrations)
        applied = {row[0] for row in conn.execute(q.applied)}
        if applied and max(applied) > SCHEMA_VERSION:
            raise RuntimeError(
                f"schema {schema} is at version {max(applied)}, newer than this keyed_dispatch "
                f"(version {SCHEMA_VERSION}); upgrade keyed_dispatch"
            )
        for version, sql in migrations(schema):
            if version not in applied:
                conn.execute(sql)  # trusted text, no parameters
                conn.execute(q.record_migration, (version,))
                logger.info("applied keyed_dispatch schema migration %d to %s", version, schema)
    return SCHEMA_VERSION


def schema_version(conn: psycopg.Connection[Any], schema: str) -> int | None:
    """The installed version of ``schema``, None if it is not installed."""
    try:
        row = conn.execute(Statements(schema).version).fetchone()
    except psycopg.errors.UndefinedTable:
        return None
    return None if row is None or row[0] is None else int(row[0])
