"""The worker: claims runnable jobs from PostgreSQL and runs them on threads."""

from __future__ import annotations

import contextvars
import importlib
import itertools
import logging
import os
import queue
import socket
import threading
import time
from collections.abc import Callable, Hashable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import psycopg

from keyed_dispatch._config import _check_seconds
from keyed_dispatch._keys import KeysText

from ._common import DatabaseUnavailable, connect, dump_json, error_names, key_value, storable_text
from ._dispatcher import schema_version
from ._registry import registered_function, resolve_functions
from ._schema import SCHEMA_VERSION, Statements, check_schema_name

__all__ = ["JobContext", "current_job", "run_worker"]

logger = logging.getLogger("keyed_dispatch")


@dataclass(frozen=True)
class JobContext:
    """What a running job knows about itself (see :func:`current_job`).

    Attributes:
        job_id: the job's id; the same on every attempt. Pass it (or
            ``idempotency_key``) to an exchange as the client order id so a
            re-run after a failover cannot place the order twice.
        attempt: 1 for the first run, 2 for the next (a retry, or a re-run
            after a failover), ...
        keys: the job's keys, read back from their stored text
            (:func:`~keyed_dispatch.postgres.key_value`): equal to the keys
            submitted, tuples (a WebhookKey too) as plain tuples.
        worker: the name of the worker running it.
    """

    job_id: int
    attempt: int
    keys: tuple[Hashable, ...]
    worker: str

    @property
    def idempotency_key(self) -> str:
        """``kd-{job_id}``: stable across attempts, for deduplication downstream."""
        return f"kd-{self.job_id}"

    @property
    def token(self) -> str:
        """``{job_id}.{attempt}``: unique per attempt (the fencing token)."""
        return f"{self.job_id}.{self.attempt}"


_current: contextvars.ContextVar[JobContext] = contextvars.ContextVar("keyed_dispatch_job")


def current_job() -> JobContext:
    """The context of the job running in this thread.

    Raises:
        RuntimeError: not called from inside a job run by a worker.
    """
    try:
        return _current.get()
    except LookupError:
        raise RuntimeError("current_job() called outside a job run by a keyed_dispatch worker") from None


@dataclass
class _Claimed:
    job_id: int
    attempt: int
    keys: tuple[Hashable, ...]
    func: str
    args: list[Any]
    kwargs: dict[str, Any]
    waited: float


# (job, state, result JSON or None, error class names (error_names) or None, error message)
_Outcome = tuple[_Claimed, str, "str | None", "list[str] | None", "str | None"]


def run_worker(
    dsn: str,
    *,
    concurrency: int = 16,
    schema: str = "keyed_dispatch",
    imports: Iterable[str] = (),
    functions: Iterable[Callable[..., Any] | str] = (),
    lease: float = 30.0,
    poll_interval: float = 1.0,
    retention: float = 7 * 86400.0,
    wait_warning: float | None = 5.0,
    name: str | None = None,
    stop: threading.Event | None = None,
    burst: bool = False,
) -> int:
    """Run jobs from the queue until ``stop`` is set (or, with ``burst``, it is empty).

    A worker runs only registered job functions: those registered with
    :func:`~keyed_dispatch.postgres.job_function` in its process (by the
    modules in ``imports``, or any it imported otherwise) and those in
    ``functions``. It never imports what a job names: a job naming any other
    function fails at once (``JobFailed``, ``LookupError``: "... is not
    registered on this worker") and its keys move on.

    Any number of workers may run, on any host: each claims the oldest jobs
    whose keys are free, up to ``concurrency`` at once, and runs them on its
    threads. It wakes on ``LISTEN/NOTIFY`` and polls every ``poll_interval``
    as a fallback. While a job runs its lease is renewed every ``lease / 3``
    seconds; a worker that stops renewing (killed, frozen, cut off) loses its
    jobs after ``lease`` seconds to the next worker that looks, and a result
    it reports later is rejected. Each worker also expires overdue jobs and
    deletes finished jobs older than ``retention`` seconds.

    A job fails (``JobFailed`` on its future) whatever it raises, and its
    keys move on: ``SystemExit``, ``KeyboardInterrupt`` and ``GeneratorExit``
    too end the job, not the worker, as in a ``ThreadPoolExecutor`` (a job
    runs on a pool thread; signals reach the worker's own thread). A job
    with a retry policy whose attempt failed with an error the policy
    retries is instead queued again at the head of its keys, claimable once
    its backoff has passed: this worker wakes for it then, and any worker
    finds it at its next poll. A job with a retry policy that fails for good
    leaves a dead letter.

    Stopping is graceful: no new claims, running jobs finish and are
    recorded. A lost connection is retried with backoff; results not yet
    recorded are kept and recorded after reconnecting.

    Args:
        dsn: libpq connection string or URI.
        concurrency: jobs run at once (threads).
        schema: the queue's schema (installed by ``install_schema``).
        imports: modules imported at start: the job functions they register
            are the ones this worker runs.
        functions: more functions this worker runs, as objects (known by
            ``module:qualname``) or ``module:function`` names (imported at
            start).
        lease: seconds a claim lasts without a heartbeat.
        poll_interval: seconds between polls when no notification arrives.
        retention: seconds finished jobs are kept for their submitters.
        wait_warning: log a WARNING for a job that waited this long to start.
        name: the worker's name in the database (default ``host:pid:n``).
        stop: set it to stop the worker (the CLI sets it on SIGTERM/SIGINT).
        burst: return once nothing is runnable, running, left to record or
            waiting for a retry this worker scheduled.

    Returns:
        The number of jobs this worker ran (each attempt of a retried job counts).

    Raises:
        DatabaseUnavailable: the first connection failed.
        RuntimeError: the schema is missing or newer than this code.
        ImportError: a module in ``imports`` or a name in ``functions``
            cannot be imported.
    """
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an int >= 1, got {concurrency!r}")
    for label, value in (("lease", lease), ("poll_interval", poll_interval), ("retention", retention)):
        _check_seconds(label, value, allow_inf=False)
        if value == 0:
            raise ValueError(f"{label} must be > 0, got 0")
    for module in imports:
        importlib.import_module(module)
    allowed = resolve_functions(functions)
    worker = _Worker(
        dsn,
        schema=check_schema_name(schema),
        concurrency=concurrency,
        lease=lease,
        poll_interval=poll_interval,
        retention=retention,
        wait_warning=wait_warning,
        name=name or f"{socket.gethostname()}:{os.getpid()}:{next(_worker_numbers)}",
        stop=stop if stop is not None else threading.Event(),
        burst=burst,
        functions=allowed,
    )
    return worker.run()


_worker_numbers = itertools.count(1)


_GIVE_UP_WHEN_STOPPING = 5

# Seconds to wait for the next of several jobs finishing together (see
# _Worker._gather): short next to a round trip to the database.
_GATHER = 0.0002


def _backoff(failures: int) -> float:
    """Seconds to wait before reconnection attempt ``failures``: 0.1, 0.2, ... 2."""
    return min(2.0, 0.05 * float(2 ** min(failures, 6)))


# Errors that a live connection may raise and that pass: a statement timeout
# set by the DBA, a lock or serialization conflict.
_TRANSIENT = (
    psycopg.errors.QueryCanceled,
    psycopg.errors.LockNotAvailable,
    psycopg.errors.TransactionRollback,
)


def _retryable(conn: psycopg.Connection[Any], exc: BaseException) -> bool:
    """Whether the worker should reconnect and go on after ``exc`` on ``conn``.

    Yes for a lost connection and a transient error; no for the database
    refusing a statement (a missing schema, missing rights), which would
    only repeat.
    """
    return conn.broken or conn.closed or isinstance(exc, _TRANSIENT)


def _check_version(conn: psycopg.Connection[Any], schema: str) -> int:
    """The installed schema version, if this worker can run on it."""
    version = schema_version(conn, schema)
    if version is None:
        raise RuntimeError(
            f"keyed_dispatch schema {schema!r} is not installed; "
            "call PostgresDispatcher(dsn).install_schema() once"
        )
    if version > SCHEMA_VERSION:
        raise RuntimeError(
            f"schema {schema} is at version {version}, newer than this worker ({SCHEMA_VERSION})"
        )
    return version


class _Worker:
    """One worker: a main loop owning one connection, a listener, a pool."""

    def __init__(
        self,
        dsn: str,
        *,
        schema: str,
        concurrency: int,
        lease: float,
        poll_interval: float,
        retention: float,
        wait_warning: float | None,
        name: str,
        stop: threading.Event,
        burst: bool,
        functions: dict[str, Callable[..., Any]],
    ) -> None:
        self.dsn = dsn
        self.schema = schema
        self.q = Statements(schema)
        self.concurrency = concurrency
        self.lease = lease
        self.poll_interval = poll_interval
        self.retention = retention
        self.wait_warning = wait_warning
        self.name = name
        self.stop = stop
        self.burst = burst
        self.wake = threading.Event()
        self.done: queue.SimpleQueue[_Outcome] = queue.SimpleQueue()
        # Besides the process's registry, which may grow while the worker runs.
        self.functions = functions
        self.ran = 0
        # When the earliest retry this worker scheduled is due (monotonic), or None.
        self.retry_due: float | None = None
        # Whether the schema has finish_claim() (version 4).
        self.combined = True

    # -- main loop ------------------------------------------------------------

    def run(self) -> int:
        first = connect(self.dsn, application_name=f"keyed_dispatch worker {self.name}")
        try:
            # A schema before version 4 has no finish_claim(): finish and claim apart.
            self.combined = _check_version(first, self.schema) >= 4
        except BaseException:
            first.close()
            raise
        conn: psycopg.Connection[Any] | None = first
        listen_stop = threading.Event()
        listener = threading.Thread(
            target=self._listen, args=(listen_stop,), name="keyed-dispatch-wakeups", daemon=True
        )
        listener.start()
        pool = ThreadPoolExecutor(self.concurrency, thread_name_prefix="keyed-dispatch-job")
        running: dict[int, _Claimed] = {}
        unrecorded: list[_Outcome] = []
        logger.info("worker %s started: concurrency %d, schema %s", self.name, self.concurrency, self.schema)
        next_heartbeat = next_maintenance = 0.0
        failures = 0
        try:
            while True:
                self.wake.clear()
                stopping = self.stop.is_set()
                try:
                    if conn is None:
                        conn = connect(self.dsn, application_name=f"keyed_dispatch worker {self.name}")
                        logger.info("worker %s reconnected", self.name)
                    while not self.done.empty():  # the only consumer: get() cannot block
                        unrecorded.append(self.done.get())
                    self._gather(unrecorded, len(running))
                    # None: no claim was made along with the results.
                    claimed = self._record_all(conn, unrecorded, running, 0 if stopping else None)
                    if claimed:  # started at once: a lost connection below must not orphan them
                        self._start(claimed, running, pool)
                    now = time.monotonic()
                    if now >= next_maintenance:
                        self._maintain(conn)
                        next_maintenance = now + self.poll_interval
                    if running and now >= next_heartbeat:
                        self._heartbeat(conn, running)
                        next_heartbeat = now + self.lease / 3
                    if self.retry_due is not None and now >= self.retry_due:
                        self.retry_due = None  # claimed below, by this worker or another
                    free = self.concurrency - len(running)
                    if claimed is None:
                        claimed = self._claim(conn, free) if free and not stopping else []
                        self._start(claimed, running, pool)
                    # Burst: done once nothing runs, nothing was claimed and no
                    # retry this worker scheduled waits.
                    finished = self.burst and not running and not claimed and self.retry_due is None
                    failures = 0
                except (psycopg.Error, DatabaseUnavailable) as exc:
                    if conn is not None and not _retryable(conn, exc):
                        raise
                    failures += 1
                    if conn is not None:
                        conn.close()
                        conn = None
                    if stopping and failures >= _GIVE_UP_WHEN_STOPPING:
                        # The leases of what is left expire; other workers re-run it.
                        logger.exception(
                            "worker %s stopping without the database: %d result(s) not recorded",
                            self.name,
                            len(running),
                        )
                        break
                    logger.warning("worker %s lost the database (%s); retrying", self.name, exc)
                    # Not stop.wait: once stopping, it would not wait at all.
                    time.sleep(_backoff(failures))
                    continue
                if stopping and not running:
                    break
                if finished:
                    break
                timeout = self.poll_interval
                if running:
                    timeout = min(timeout, max(0.0, next_heartbeat - time.monotonic()))
                if self.retry_due is not None:
                    timeout = min(timeout, max(0.0, self.retry_due - time.monotonic()))
                self.wake.wait(timeout)
        finally:
            listen_stop.set()
            pool.shutdown(wait=True)
            listener.join()
            if conn is not None:
                conn.close()
        logger.info("worker %s stopped after %d jobs", self.name, self.ran)
        return self.ran

    def _listen(self, stop: threading.Event) -> None:
        """Set ``wake`` on every ``ready`` notification (own connection)."""
        conn: psycopg.Connection[Any] | None = None
        failures = 0
        while not stop.is_set():
            try:
                if conn is None:
                    conn = connect(self.dsn, application_name=f"keyed_dispatch listener {self.name}")
                    conn.execute(self.q.listen_ready)
                    self.wake.set()  # work may have become ready while disconnected
                for _ in conn.notifies(timeout=0.2, stop_after=1):
                    self.wake.set()
                if self.stop.is_set():
                    self.wake.set()  # the main loop may be waiting a whole poll interval
                failures = 0
            except (psycopg.Error, DatabaseUnavailable) as exc:  # one reconnect per failure
                failures += 1
                if conn is not None:
                    conn.close()
                    conn = None
                logger.info("worker %s listener reconnecting: %s", self.name, exc)
                stop.wait(_backoff(failures))
        if conn is not None:
            conn.close()

    # -- database steps -------------------------------------------------------

    def _gather(self, unrecorded: list[_Outcome], running: int) -> None:
        """Wait for the outcomes of jobs finishing right after the first, to record them in one round trip.

        Only while they come one after the other (each within _GATHER
        seconds of the last): short jobs started together are recorded
        together, a long job costs one such wait.
        """
        while unrecorded and len(unrecorded) < running:
            try:
                unrecorded.append(self.done.get(timeout=_GATHER))
            except queue.Empty:
                return

    def _claim(self, conn: psycopg.Connection[Any], limit: int) -> list[_Claimed]:
        return self._claimed(conn.execute(self.q.claim, (self.name, limit, self.lease)).fetchall())

    def _start(self, claimed: list[_Claimed], running: dict[int, _Claimed], pool: ThreadPoolExecutor) -> None:
        for job in claimed:
            running[job.job_id] = job
            pool.submit(self._execute, job)

    def _record_all(
        self,
        conn: psycopg.Connection[Any],
        unrecorded: list[_Outcome],
        running: dict[int, _Claimed],
        limit: int | None,
    ) -> list[_Claimed] | None:
        """Record ``unrecorded`` (each is removed once recorded); the jobs claimed along.

        Completed jobs are recorded in one round trip that also claims up to
        ``limit`` jobs (None: as many as were recorded, a job for a job: a
        worker takes more only as any idle worker would, by a claim of its
        own, so that keys do not gather on the worker that finished first).
        Returns None when no claim was made (nothing completed, or the
        schema predates finish_claim).
        """
        completed: list[_Outcome] = []
        for outcome in list(unrecorded):
            if outcome[1] == "completed" and self.combined:
                completed.append(outcome)
                continue
            self._record(conn, outcome)
            self._recorded(outcome, unrecorded, running)
        if not completed:
            return None
        jobs = [outcome[0] for outcome in completed]
        if limit is None:
            limit = len(jobs)
        try:
            rows = conn.execute(
                self.q.finish_claim,
                (
                    self.name,
                    [job.job_id for job in jobs],
                    [job.attempt for job in jobs],
                    [outcome[2] for outcome in completed],
                    limit,
                    self.lease,
                ),
            ).fetchall()
        except psycopg.Error as exc:
            if _retryable(conn, exc):
                raise
            # The database refused a result (too large for jsonb, ...): one
            # by one, so that only that job fails, with the reason.
            logger.info("worker %s: recording %d results one by one: %s", self.name, len(jobs), exc)
            for outcome in completed:
                self._record(conn, outcome)
                self._recorded(outcome, unrecorded, running)
            return None
        for outcome in completed:
            self._recorded(outcome, unrecorded, running)
        by_id = {job.job_id: job for job in jobs}
        for row in rows:
            if row[3] is None:  # a refused attempt: id and attempt only
                self._rejected(by_id[int(row[0])])
        return self._claimed([row for row in rows if row[3] is not None])

    def _recorded(self, outcome: _Outcome, unrecorded: list[_Outcome], running: dict[int, _Claimed]) -> None:
        unrecorded.remove(outcome)
        del running[outcome[0].job_id]
        self.ran += 1

    def _claimed(self, rows: list[tuple[Any, ...]]) -> list[_Claimed]:
        claimed = [
            _Claimed(
                int(job_id),
                int(attempt),
                tuple(map(key_value, keys)),
                func,
                args,
                kwargs,
                float(waited),
            )
            for job_id, attempt, keys, func, args, kwargs, waited in rows
        ]
        for job in claimed:
            if self.wait_warning is not None and job.waited >= self.wait_warning:
                logger.warning("job for %s waited %.2fs", KeysText(job.keys), job.waited)
            elif logger.isEnabledFor(logging.DEBUG):
                logger.debug(
                    "started job %d for %s (waited %.3fs, attempt %d)",
                    job.job_id,
                    KeysText(job.keys),
                    job.waited,
                    job.attempt,
                )
        return claimed

    def _record(self, conn: psycopg.Connection[Any], outcome: _Outcome) -> None:
        job, state, result, error_types, error_message = outcome
        if state == "failed":
            self._fail(conn, job, error_types or ["Exception"], error_message or "")
            return
        try:
            row = conn.execute(
                self.q.finish,
                (job.job_id, job.attempt, state, result, None, None),
            ).fetchone()
        except psycopg.Error as exc:
            if _retryable(conn, exc):
                raise
            # The database refused the result (too large for jsonb, ...):
            # the job fails with that reason rather than blocking its keys.
            logger.warning(
                "worker %s: the database refused the result of job %d: %s", self.name, job.job_id, exc
            )
            message = storable_text(f"the database refused the result: {exc}")
            self._fail(conn, job, error_names(exc), message)
            return
        if row is None or not row[0]:
            self._rejected(job)

    def _fail(
        self, conn: psycopg.Connection[Any], job: _Claimed, error_types: list[str], message: str
    ) -> None:
        """Record a failed attempt: the database retries it (by the job's policy) or fails the job."""
        row = conn.execute(self.q.fail, (job.job_id, job.attempt, error_types, message)).fetchone()
        outcome, retry_in = row if row is not None else ("stale", 0.0)
        if outcome == "retry":
            # Due on the database's clock once ``retry_in`` has passed since
            # before this answer; the margin covers the clocks' rates.
            due = time.monotonic() + retry_in * 1.001 + 0.002
            if self.retry_due is None or due < self.retry_due:
                self.retry_due = due
            logger.info(
                "job %d attempt %d failed; retry in %.3fs, at the head of %s",
                job.job_id,
                job.attempt,
                retry_in,
                KeysText(job.keys),
            )
        elif outcome == "stale":
            self._rejected(job)

    def _rejected(self, job: _Claimed) -> None:
        logger.warning(
            "worker %s: result of job %d attempt %d rejected: its lease expired and the job "
            "was taken over (the job ran more than once; handlers must be idempotent)",
            self.name,
            job.job_id,
            job.attempt,
        )

    def _heartbeat(self, conn: psycopg.Connection[Any], running: dict[int, _Claimed]) -> None:
        jobs = list(running.values())
        rows = conn.execute(
            self.q.heartbeat,
            (self.name, [job.job_id for job in jobs], [job.attempt for job in jobs], self.lease),
        ).fetchall()
        kept = {row[0] for row in rows}
        for job in jobs:
            if job.job_id not in kept:
                logger.warning(
                    "worker %s lost the lease of job %d (attempt %d): it may be running elsewhere now",
                    self.name,
                    job.job_id,
                    job.attempt,
                )

    def _maintain(self, conn: psycopg.Connection[Any]) -> None:
        recovered, expired, pruned = conn.execute(
            self.q.maintain,
            (self.retention,),
        ).fetchone() or (0, 0, 0)
        if recovered:
            logger.warning(
                "worker %s: %d job(s) lost their worker's lease; queued again", self.name, recovered
            )
        if expired:
            logger.info("worker %s: %d job(s) expired before they started", self.name, expired)
        if pruned:
            logger.debug("worker %s: pruned %d finished job(s)", self.name, pruned)

    # -- running a job (pool threads) -----------------------------------------

    def _function(self, name: str) -> Callable[..., Any]:
        """The function registered as ``name``; never imported from the job's text."""
        fn = self.functions.get(name) or registered_function(name)
        if fn is None:
            raise LookupError(
                f"job function {name!r} is not registered on this worker ({self.name}): "
                "register it with @job_function in a module the worker imports, or pass it "
                "to run_worker(functions=...)"
            )
        return fn

    def _execute(self, job: _Claimed) -> None:
        context = JobContext(job.job_id, job.attempt, job.keys, self.name)
        token = _current.set(context)
        try:
            value = self._function(job.func)(*job.args, **job.kwargs)
            outcome: _Outcome = (job, "completed", dump_json(value, f"result of {job.func}"), None, None)
        # BaseException too: SystemExit, KeyboardInterrupt or GeneratorExit
        # raised by a job ends the job, not the worker (as in a
        # ThreadPoolExecutor); unrecorded, it would hold its keys for ever.
        except BaseException as exc:  # noqa: BLE001  # the job's error goes to its submitter
            names = [storable_text(name) for name in error_names(exc)]
            message = _message(exc)
            logger.info("job %d (%s) failed: %s: %s", job.job_id, job.func, names[0], message)
            outcome = (job, "failed", None, names, storable_text(message))
        finally:
            _current.reset(token)
        self.done.put(outcome)
        self.wake.set()


def _message(exc: BaseException) -> str:
    """``str(exc)``, or a note if even that raises."""
    try:
        return str(exc)
    except Exception as error:  # noqa: BLE001  # a broken __str__ must not lose the outcome
        return f"<str() of the exception raised {type(error).__name__}>"
