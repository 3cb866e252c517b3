"""Job functions for the PostgreSQL tests, registered for the workers.

Worker processes started by the tests get the repository root on
PYTHONPATH and ``--import tests.postgres.tasks``; jobs name these as
``tests.postgres.tasks:function``.
"""

from __future__ import annotations

import builtins
import os
import threading
import time
from typing import Any

import psycopg

from keyed_dispatch.postgres import current_job, job_function, key_text

# In-process gates (only for workers running in the test process itself).
gates: dict[str, threading.Event] = {}
started: dict[str, threading.Event] = {}

NOT_CALLABLE = 42


@job_function
def echo(*args: Any, **kwargs: Any) -> dict[str, Any]:
    """Return the arguments as received (after the JSON round trip)."""
    return {"args": list(args), "kwargs": kwargs}


@job_function
def boom(message: str) -> None:
    """Fail with a ValueError carrying ``message``."""
    raise ValueError(message)


@job_function
def unserializable() -> object:
    """Return something JSON cannot hold."""
    return {1, 2}


@job_function
def context() -> dict[str, Any]:
    """Return what the job knows about itself."""
    job = current_job()
    return {
        "job_id": job.job_id,
        "attempt": job.attempt,
        "keys": list(job.keys),
        "token": job.token,
        "idempotency_key": job.idempotency_key,
    }


@job_function
def gate(name: str) -> str:
    """Signal ``started[name]``, then wait for ``gates[name]`` (in-process workers)."""
    started.setdefault(name, threading.Event()).set()
    if not gates.setdefault(name, threading.Event()).wait(30):
        raise TimeoutError(f"gate {name} was never opened")
    return name


@job_function
def raise_builtin(name: str) -> None:
    """Raise the builtin exception ``name`` (``SystemExit``, ``KeyboardInterrupt``, ...)."""
    raise getattr(builtins, name)()


@job_function
def nul_result() -> str:
    """Return text holding a NUL character, which PostgreSQL cannot store."""
    return "a\x00b"


@job_function
def nul_error() -> None:
    """Fail with a message holding a NUL character and a lone surrogate."""
    raise ValueError("a\x00b\ud800c")


def unregistered() -> str:
    """Importable, but not registered: no worker may run it."""
    return "ran"


class ExchangeDown(ConnectionError):
    """A job's own error class, matched by a retry policy by its qualified name."""


#: Names for which :func:`broken` fails (in-process workers).
broken_names: set[str] = set()


@job_function
def broken(name: str, error: str = "ConnectionError") -> int:
    """Fail with the builtin ``error`` (or ``"ExchangeDown"``) while ``name`` is in ``broken_names``."""
    attempt = current_job().attempt
    if name in broken_names:
        kind = ExchangeDown if error == "ExchangeDown" else getattr(builtins, error)
        raise kind(f"{name} attempt {attempt}")
    return attempt


_INSERT_EVENT = "INSERT INTO {s}.burst_events (job_id, attempt, keys, phase, pid) VALUES (%s, %s, %s, %s, %s)"


@job_function
def scripted(plan: list[str], *, events_dsn: str, events_schema: str) -> dict[str, int]:
    """Record a start and an end (as record_webhook does), acting as ``plan[attempt - 1]`` says.

    ``"fail"``: raise ConnectionError after the end; ``"slow"``: work 60 s
    first (a worker killed meanwhile); ``"ok"`` (and past the plan's end):
    return ``{"attempt": ..., "pid": ...}``.
    """
    job = current_job()
    step = plan[job.attempt - 1] if job.attempt <= len(plan) else "ok"
    insert = _INSERT_EVENT.format(s=events_schema)
    keys = [key_text(key) for key in job.keys]
    with psycopg.connect(events_dsn, autocommit=True) as conn:
        conn.execute(insert, (job.job_id, job.attempt, keys, "start", os.getpid()))
        if step == "slow":
            time.sleep(60)
        conn.execute(insert, (job.job_id, job.attempt, keys, "end", os.getpid()))
    if step == "fail":
        raise ConnectionError(f"job {job.job_id} attempt {job.attempt}")
    return {"attempt": job.attempt, "pid": os.getpid()}


# The in-process record of ``logged`` jobs: (sequence, phase, job id, attempt).
ledger_lock = threading.Lock()
ledger: list[tuple[int, str, int, int]] = []  # guarded by ledger_lock
live: dict[str, int] = {}  # key text -> the job running on it; guarded by ledger_lock
overlaps: list[str] = []  # guarded by ledger_lock


@job_function
def logged(failures: int) -> int:
    """Record a start and an end in ``ledger``; fail the first ``failures`` attempts (ConnectionError)."""
    job = current_job()
    keys = [key_text(key) for key in job.keys]
    with ledger_lock:
        for key in keys:
            if key in live:
                overlaps.append(f"job {job.job_id} started on {key} while job {live[key]} runs")
            live[key] = job.job_id
        ledger.append((len(ledger), "start", job.job_id, job.attempt))
    with ledger_lock:
        for key in keys:
            if live.get(key) == job.job_id:
                del live[key]
        ledger.append((len(ledger), "end", job.job_id, job.attempt))
    if job.attempt <= failures:
        raise ConnectionError(f"job {job.job_id} attempt {job.attempt}")
    return job.attempt
