"""A burst of recorded webhooks through the PostgreSQL dispatcher, checked for order.

Used by the PostgreSQL benchmark and tests (the demo's ``distributed`` row
runs the demo's own burst instead: :mod:`keyed_dispatch.demo._distributed`):
several submitter processes and several worker processes share one queue;
each job records its start and end in the database (a global sequence), and
:func:`check_events` verifies order, exclusion and that nothing was lost.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import psycopg

from keyed_dispatch import webhook_key
from keyed_dispatch.postgres import EmbeddedPostgres, PostgresDispatcher, current_job, job_function, key_text
from keyed_dispatch.postgres._schema import check_schema_name

__all__ = [
    "NOOP",
    "RECORD",
    "SLEEP",
    "BurstReport",
    "Event",
    "check_events",
    "create_events_table",
    "noop",
    "read_events",
    "record_webhook",
    "run_distributed_burst",
    "sleep",
    "spawn_worker",
    "submit_burst",
]

_INSERT_EVENT = "INSERT INTO {s}.burst_events (job_id, attempt, keys, phase, pid) VALUES (%s, %s, %s, %s, %s)"
_READ_EVENTS = "SELECT id, job_id, attempt, keys, phase, pid FROM {s}.burst_events ORDER BY id"

#: The job path of :func:`record_webhook`, for ``submit``.
RECORD = "keyed_dispatch.demo._recording:record_webhook"
#: The job paths of :func:`noop` and :func:`sleep`.
NOOP = "keyed_dispatch.demo._recording:noop"
SLEEP = "keyed_dispatch.demo._recording:sleep"

SYMBOLS = ("BTC/USDT", "ETH/USDT", "SOL/USDT", "XRP/USDT", "ADA/USDT", "DOGE/USDT", "DOT/USDT", "LTC/USDT")


@job_function
def noop(*args: Any, **kwargs: Any) -> None:
    """A job that does nothing (benchmarks measure the queue, not the work)."""


@job_function
def sleep(seconds: float) -> None:
    """A job that waits ``seconds`` (stands for I/O such as exchange calls)."""
    time.sleep(seconds)


def create_events_table(dsn: str, schema: str) -> None:
    """Create ``{schema}.burst_events``, where :func:`record_webhook` writes."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {check_schema_name(schema)}.burst_events ("
            " id bigserial PRIMARY KEY, job_id bigint NOT NULL, attempt integer NOT NULL,"
            " keys text[] NOT NULL, phase text NOT NULL, pid integer NOT NULL)"
        )


@job_function
def record_webhook(
    submitter: int,
    seq: int,
    *,
    events_dsn: str,
    events_schema: str,
    work_s: float = 0.0,
    first_attempt_s: float = 0.0,
) -> dict[str, int]:
    """Apply one webhook: record its start, work ``work_s`` seconds, record its end.

    Each event is committed before the next step, and event ids come from one
    sequence, so the events order the jobs of every process on one clock.
    ``first_attempt_s`` adds work to the first attempt only: a job whose
    worker is killed or frozen meanwhile, and whose re-run is quick.
    """
    job = current_job()
    insert = _INSERT_EVENT.format(s=check_schema_name(events_schema))
    keys = [key_text(key) for key in job.keys]
    with psycopg.connect(events_dsn, autocommit=True) as conn:
        conn.execute(insert, (job.job_id, job.attempt, keys, "start", os.getpid()))
        work = work_s + (first_attempt_s if job.attempt == 1 else 0.0)
        if work:
            time.sleep(work)  # the webhook's own work (exchange round trips)
        conn.execute(insert, (job.job_id, job.attempt, keys, "end", os.getpid()))
    return {"submitter": submitter, "seq": seq, "pid": os.getpid(), "attempt": job.attempt}


@dataclass(frozen=True)
class Event:
    """One row of ``burst_events``."""

    id: int
    job_id: int
    attempt: int
    keys: tuple[str, ...]
    phase: str
    pid: int


def read_events(dsn: str, schema: str) -> list[Event]:
    """All recorded events, in sequence order."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(_READ_EVENTS.format(s=check_schema_name(schema))).fetchall()
    return [Event(r[0], r[1], r[2], tuple(r[3]), r[4], r[5]) for r in rows]


def check_events(
    events: Sequence[Event], submissions: Sequence[Sequence[tuple[int, Sequence[str]]]]
) -> list[str]:
    """Return the violations found (empty: all guarantees held).

    ``submissions`` holds, per submitting thread or process, its ``(job id,
    keys)`` in program order. Checked:

    * every submitted job completed an attempt (started and ended);
    * on every key, in job id order (the commit order), each job's first
      start comes after the previous job's last end: FIFO, exclusion, and a
      re-run after failover going before later jobs;
    * each submitter's jobs on a key have increasing ids (program order is
      part of the commit order).

    An attempt that started and never ended (its worker was killed) is
    allowed; it must be followed by a complete attempt.
    """
    violations: list[str] = []
    first_start: dict[int, int] = {}
    last_end: dict[int, int] = {}
    for event in events:
        if event.phase == "start":
            first_start.setdefault(event.job_id, event.id)
        else:
            last_end[event.job_id] = event.id
    by_key: dict[str, list[int]] = defaultdict(list)
    for number, jobs in enumerate(submissions):
        latest: dict[str, int] = {}
        for job_id, keys in jobs:
            if job_id not in last_end:
                violations.append(f"job {job_id} on {'+'.join(keys)} (submitter {number}) never completed")
            for key in keys:
                by_key[key].append(job_id)
                if latest.get(key, -1) > job_id:
                    violations.append(
                        f"submitter {number}: job {job_id} on {key} has a smaller id than its predecessor"
                    )
                latest[key] = job_id
    for key, job_ids in by_key.items():
        ordered = sorted(job_ids)
        for earlier, later in itertools.pairwise(ordered):
            if earlier in last_end and later in first_start and first_start[later] < last_end[earlier]:
                violations.append(
                    f"key {key}: job {later} started (event {first_start[later]}) "
                    f"before job {earlier} ended (event {last_end[earlier]})"
                )
    return violations


def submit_burst(
    *,
    dsn: str,
    schema: str,
    submitter: int,
    count: int,
    keys: int,
    seed: int,
    work_s: float,
    multi: float = 0.2,
) -> list[tuple[int, list[str]]]:
    """Submit ``count`` recorded webhooks (some multi-key), wait for all.

    Returns ``(job id, keys)`` per job in submission order. Raises the first
    job error, if any.
    """
    rng = random.Random(seed)  # noqa: S311  # a reproducible workload, not a secret
    pool = [webhook_key(1, symbol) for symbol in SYMBOLS[:keys]]
    submitted: list[tuple[int, list[str]]] = []
    futures = []
    with PostgresDispatcher(dsn, schema=schema, poll_interval=0.5) as dispatcher:
        for seq in range(count):
            chosen = rng.sample(pool, 2) if keys > 1 and rng.random() < multi else [rng.choice(pool)]
            future = dispatcher.submit_multi(
                chosen,
                RECORD,
                submitter,
                seq,
                events_dsn=dsn,
                events_schema=schema,
                work_s=work_s,
            )
            submitted.append((future.job_id, [key_text(key) for key in chosen]))
            futures.append(future)
        for future in futures:
            future.result(timeout=120)
    return submitted


def _submitter_process() -> None:
    """Entry of a submitter subprocess: JSON arguments in argv, JSON result out."""
    options = json.loads(sys.argv[1])
    print(json.dumps(submit_burst(**options)))


def spawn_worker(
    dsn: str, schema: str, *, concurrency: int = 4, lease: float = 30.0, poll_interval: float = 1.0
) -> subprocess.Popen[bytes]:
    """Start ``python -m keyed_dispatch worker`` for ``schema`` in a new process.

    It imports this module, so it runs the jobs above.
    """
    return subprocess.Popen(  # noqa: S603  # our own interpreter and options
        [
            sys.executable,
            "-m",
            "keyed_dispatch",
            "worker",
            "--dsn",
            dsn,
            "--schema",
            schema,
            "--concurrency",
            str(concurrency),
            "--lease",
            str(lease),
            "--poll-interval",
            str(poll_interval),
            "--import",
            __name__,
            "--log-level",
            "WARNING",
        ],
    )


@contextmanager
def _server(dsn: str | None) -> Iterator[str]:
    if dsn is not None:
        yield dsn
        return
    with EmbeddedPostgres() as server:
        yield server.dsn


@dataclass(frozen=True)
class BurstReport:
    """What :func:`run_distributed_burst` observed.

    Attributes:
        submitted: jobs submitted, all processes together.
        completed: jobs that completed (recorded an end).
        errors: job or submit errors.
        violations: order/exclusion/loss violations found (empty is good).
        seconds: wall time of the burst (workers started to last result).
        workers: worker processes started.
        worker_pids: the processes that actually ran jobs.
        multi_key_jobs: jobs submitted on more than one key.
    """

    submitted: int
    completed: int
    errors: int
    violations: tuple[str, ...]
    seconds: float
    workers: int
    worker_pids: frozenset[int] = field(default_factory=frozenset)
    multi_key_jobs: int = 0

    @property
    def ok(self) -> bool:
        """No error and no violation."""
        return not self.errors and not self.violations


def run_distributed_burst(
    *,
    webhooks: int = 200,
    submitters: int = 2,
    workers: int = 2,
    keys: int = 3,
    work_s: float = 0.002,
    dsn: str | None = None,
    seed: int = 0,
) -> BurstReport:
    """Submit ``webhooks`` from ``submitters`` processes to ``workers`` worker processes.

    Starts an embedded PostgreSQL server when
    ``dsn`` is None, uses a fresh schema, and checks every job's events with
    :func:`check_events`.
    """
    with _server(dsn) as url:
        schema = f"kd_burst_{uuid.uuid4().hex[:12]}"
        with PostgresDispatcher(url, schema=schema) as dispatcher:
            dispatcher.install_schema()
        create_events_table(url, schema)
        started = time.monotonic()
        procs = [spawn_worker(url, schema, poll_interval=0.5) for _ in range(workers)]
        try:
            per = [
                webhooks // submitters + (1 if n < webhooks % submitters else 0) for n in range(submitters)
            ]
            subs = [
                subprocess.Popen(  # noqa: S603  # our own interpreter and options
                    [
                        sys.executable,
                        "-c",
                        "from keyed_dispatch.demo._recording import _submitter_process; _submitter_process()",
                        json.dumps(
                            {
                                "dsn": url,
                                "schema": schema,
                                "submitter": n,
                                "count": per[n],
                                "keys": keys,
                                "seed": seed * 1000 + n,
                                "work_s": work_s,
                            }
                        ),
                    ],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                )
                for n in range(submitters)
            ]
            submissions: list[list[tuple[int, list[str]]]] = []
            errors = 0
            for sub in subs:
                out, _ = sub.communicate(timeout=300)
                if sub.returncode:
                    errors += 1
                    submissions.append([])
                else:
                    submissions.append([(job_id, keys_) for job_id, keys_ in json.loads(out)])
            seconds = time.monotonic() - started
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(timeout=60)
        events = read_events(url, schema)
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")
    violations = check_events(events, submissions)
    completed = len({event.job_id for event in events if event.phase == "end"})
    return BurstReport(
        submitted=sum(len(jobs) for jobs in submissions),
        completed=completed,
        errors=errors,
        violations=tuple(violations),
        seconds=seconds,
        workers=workers,
        worker_pids=frozenset(event.pid for event in events),
        multi_key_jobs=sum(1 for jobs in submissions for _, keys_ in jobs if len(keys_) > 1),
    )
