"""The guarantees across processes: submitter and worker processes on one server."""

# ruff: noqa: S608  # the tests run our own interpreter and build SQL from test schema names

from __future__ import annotations

import os
import signal
import time

import pytest

psycopg = pytest.importorskip("psycopg")

from keyed_dispatch import Retry, StartTimeout  # noqa: E402
from keyed_dispatch.demo._recording import (  # noqa: E402
    check_events,
    create_events_table,
    read_events,
    run_distributed_burst,
)
from keyed_dispatch.postgres import PostgresDispatcher  # noqa: E402
from tests.postgres.support import Spawn, wait_until  # noqa: E402

pytestmark = pytest.mark.slow

RECORD = "keyed_dispatch.demo._recording:record_webhook"
SCRIPTED = "tests.postgres.tasks:scripted"


def test_submitters_and_workers_in_separate_processes(pg_dsn: str) -> None:
    # Also the demo's ``distributed`` row: 3 submitter and 3 worker processes.
    report = run_distributed_burst(webhooks=150, submitters=3, workers=3, keys=4, dsn=pg_dsn)
    assert report.violations == ()
    assert (report.submitted, report.completed, report.errors) == (150, 150, 0)
    assert report.multi_key_jobs > 0
    assert len(report.worker_pids) >= 2  # more than one worker process took part
    assert report.ok


def test_sigkill_mid_job_loses_nothing_and_keeps_order(pg_dsn: str, pg_schema: str, spawn: Spawn) -> None:
    create_events_table(pg_dsn, pg_schema)
    workers = {proc.pid: proc for proc in (spawn("--lease", "1"), spawn("--lease", "1"))}
    kw = {"events_dsn": pg_dsn, "events_schema": pg_schema}
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.2) as d:
        victim = d.submit("k", RECORD, 0, 0, first_attempt_s=60.0, **kw)
        rest = [d.submit("k" if n % 2 else "other", RECORD, 0, n, **kw) for n in range(1, 11)]
        wait_until(lambda: any(e.job_id == victim.job_id for e in read_events(pg_dsn, pg_schema)))
        pid = next(e.pid for e in read_events(pg_dsn, pg_schema) if e.job_id == victim.job_id)
        os.kill(pid, signal.SIGKILL)
        workers[pid].wait(30)
        killed_at = time.monotonic()
        assert victim.result(30)["attempt"] == 2
        failover = time.monotonic() - killed_at
        for future in rest:
            future.result(30)
    events = read_events(pg_dsn, pg_schema)
    starts = [e for e in events if e.job_id == victim.job_id and e.phase == "start"]
    assert [e.attempt for e in starts] == [1, 2]
    assert starts[1].pid != pid
    submissions = [
        [(victim.job_id, ["k"])] + [(f.job_id, ["k" if n % 2 else "other"]) for n, f in enumerate(rest, 1)]
    ]
    assert check_events(events, submissions) == []
    print(f"failover after SIGKILL: {failover:.2f} s (lease 1 s)")


def test_a_frozen_workers_late_result_is_rejected(pg_dsn: str, pg_schema: str, spawn: Spawn) -> None:
    create_events_table(pg_dsn, pg_schema)
    workers = {proc.pid: proc for proc in (spawn("--lease", "1"), spawn("--lease", "1"))}
    kw = {"events_dsn": pg_dsn, "events_schema": pg_schema}
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.2) as d:
        job = d.submit("k", RECORD, 0, 0, first_attempt_s=0.3, **kw)
        wait_until(lambda: any(e.job_id == job.job_id for e in read_events(pg_dsn, pg_schema)))
        zombie = next(e.pid for e in read_events(pg_dsn, pg_schema) if e.job_id == job.job_id)
        os.kill(zombie, signal.SIGSTOP)
        # The other worker takes the job over once the lease has expired.
        assert job.result(30)["attempt"] == 2
        os.kill(zombie, signal.SIGCONT)
        # The zombie finishes its attempt and reports it: rejected by the fence.
        wait_until(lambda: any(e.attempt == 1 and e.phase == "end" for e in read_events(pg_dsn, pg_schema)))
        after = d.submit("k", "tests.postgres.tasks:context")
        assert after.result(30)["attempt"] == 1
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        row = conn.execute(
            f"SELECT state, attempt, result FROM {pg_schema}.jobs WHERE id = %s", (job.job_id,)
        )
        state, attempt, result = row.fetchone()
    assert (state, attempt, result["attempt"]) == ("completed", 2, 2)
    proc = workers[zombie]
    proc.terminate()
    _, err = proc.communicate(timeout=30)
    assert f"result of job {job.job_id} attempt 1 rejected" in err


def test_a_job_started_in_time_runs_again_after_its_worker_dies_past_the_start_deadline(
    pg_dsn: str, pg_schema: str, spawn: Spawn
) -> None:
    # The start deadline (2 s: room for a claim on a loaded machine) passes
    # while the job runs; the lease (5 s) expires later, after the SIGKILL.
    # The deadline was met by the first start: the job is queued again and
    # re-run, not expired.
    create_events_table(pg_dsn, pg_schema)
    workers = {proc.pid: proc for proc in (spawn("--lease", "5"), spawn("--lease", "5"))}
    kw = {"events_dsn": pg_dsn, "events_schema": pg_schema}
    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.2, start_timeout=2.0) as d:
        # A worker is up and claiming before the timed job is submitted.
        assert d.submit("warm-up", "tests.postgres.tasks:context").result(30)["attempt"] == 1
        job = d.submit("k", RECORD, 0, 0, first_attempt_s=60.0, **kw)
        wait_until(lambda: any(e.job_id == job.job_id for e in read_events(pg_dsn, pg_schema)))
        pid = next(e.pid for e in read_events(pg_dsn, pg_schema) if e.job_id == job.job_id)
        os.kill(pid, signal.SIGKILL)
        workers[pid].wait(30)
        try:
            outcome = job.result(30)
        except StartTimeout as exc:
            raise AssertionError(f"the job that had started was expired: {exc}") from exc
        assert outcome["attempt"] == 2
    starts = [e for e in read_events(pg_dsn, pg_schema) if e.job_id == job.job_id and e.phase == "start"]
    assert [e.attempt for e in starts] == [1, 2]


def test_sigkill_during_a_backoff_and_mid_retry_loses_nothing_and_keeps_order(
    pg_dsn: str, pg_schema: str, spawn: Spawn
) -> None:
    # Attempt 1 fails; its worker is killed while the job waits for its
    # retry (no worker holds it then). Attempt 2 runs on another worker,
    # killed mid-attempt: after its lease, attempt 3 runs on the third and
    # succeeds. Later jobs of the key wait for all of it.
    create_events_table(pg_dsn, pg_schema)
    workers = {proc.pid: proc for proc in (spawn("--lease", "1") for _ in range(3))}
    kw = {"events_dsn": pg_dsn, "events_schema": pg_schema}

    def start_of(job_id: int, attempt: int) -> int | None:
        for event in read_events(pg_dsn, pg_schema):
            if (event.job_id, event.attempt, event.phase) == (job_id, attempt, "start"):
                return event.pid
        return None

    with PostgresDispatcher(pg_dsn, schema=pg_schema, poll_interval=0.2) as d:
        retry = Retry(attempts=4, backoff=1.0, jitter=0)
        job = d.options(retry=retry).submit("k", SCRIPTED, ["fail", "slow"], **kw)
        rest = [d.submit("k" if n % 2 else "other", SCRIPTED, [], **kw) for n in range(1, 7)]
        wait_until(lambda: d.key_info("k").in_backoff)
        first = start_of(job.job_id, 1)
        assert first is not None
        os.kill(first, signal.SIGKILL)
        workers[first].wait(30)
        wait_until(lambda: start_of(job.job_id, 2) is not None)
        second = start_of(job.job_id, 2)
        assert second is not None
        assert second != first
        os.kill(second, signal.SIGKILL)
        workers[second].wait(30)
        outcome = job.result(30)
        assert outcome["attempt"] == 3
        assert outcome["pid"] not in {first, second}
        for future in rest:
            future.result(30)
        assert d.dead_letters() == []
    events = read_events(pg_dsn, pg_schema)
    starts = [e.attempt for e in events if e.job_id == job.job_id and e.phase == "start"]
    assert starts == [1, 2, 3]
    jobs = [(job.job_id, ["k"])] + [(f.job_id, ["k" if n % 2 else "other"]) for n, f in enumerate(rest, 1)]
    assert check_events(events, [jobs]) == []
