"""keyed_dispatch's PostgreSQL mode against procrastinate, on one PostgreSQL server.

    python -m benchmarks.bench_procrastinate [--quick] [--only WORKLOADS] [--dsn DSN]

Run from the checkout. procrastinate (the latest 3.x release) is installed
on first use into a virtual environment of its own
(``benchmarks/.venv-procrastinate``, or ``--peer-venv``), reused later, so
that its dependencies never mix with ours. Without ``--dsn`` one embedded
server is started (``fsync`` and ``synchronous_commit`` off, for both
systems); our queue gets a fresh schema per run, procrastinate a fresh
database on the same server.

Both systems run as subprocesses of the same shape (``benchmarks.pg_runner``):
one submitting process, then N worker processes of 8 concurrent jobs each
(our threads; procrastinate's ``concurrency=8``), per-key serialization by
our key or procrastinate's ``lock=``. The systems alternate within each
repetition (ours, peer, ours, peer, ...); medians are reported, ratios taken
between the medians of one run. Workloads:

* noop-keys: no-op jobs over 64 keys, drained by 1, 2 and 4 worker processes;
* noop-one-key: no-op jobs on one key (a serial chain), 2 worker processes;
* io: 20 ms jobs (``time.sleep``) over 64 keys, 2 worker processes:
  throughput, and CPU per job of the PostgreSQL server and of the
  submitting and worker processes;
* submit: jobs per second submitted from one process, one call per job
  (our ``submit``, procrastinate's ``defer``) and in one batch (our
  ``submit_many``, procrastinate's ``batch_defer_jobs``);
* scale: our side only, no-op jobs over 64 keys with 1, 2, 4 and 8 workers,
  with the server's CPU use.

Drain rate: the jobs are all submitted before the workers start; the rate is
jobs / (first job start .. last job end), read from the jobs' own records on
one monotonic clock across processes. Between submit and drain, ``ANALYZE``
gives the planner statistics of the backlog, as autovacuum keeps them in a
live queue (without them procrastinate's fetch query ran 2 to 4 times
slower here; ours was unchanged). Every drain run also checks order: per
key, jobs ran in submission order (seq increasing) and never overlapped.
"""

# ruff: noqa: S603, S607  # our own interpreters and commands

from __future__ import annotations

import argparse
import contextlib
import datetime
import importlib.metadata
import itertools
import json
import os
import select
import statistics
import subprocess
import sys
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from . import pg_runner
from .report import CHART_SKIPPED, load_pyplot
from .suite import _machine

__all__ = ["SIZES", "Size", "check_order", "goals", "main", "table"]

Row = dict[str, Any]
Say = Callable[[str], None]

ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = ROOT / "benchmarks" / "results"
PEER_VENV = ROOT / "benchmarks" / ".venv-procrastinate"
PEER_REQUIREMENT = "procrastinate>=3,<4"
OURS, PEER = "ours", "peer"
WORKLOADS = ("noop-keys", "noop-one-key", "io", "submit", "scale")
TITLE = "keyed_dispatch (PostgreSQL) vs procrastinate"
DEADLINE_S = 600.0


@dataclass(frozen=True)
class Size:
    """The parameters of one run; ``full`` is the reference run."""

    name: str
    reps: int
    concurrency: int = 8
    noop_jobs: int = 5000
    noop_keys: int = 64
    noop_workers: tuple[int, ...] = (1, 2, 4)
    one_key_jobs: int = 2000
    one_key_workers: int = 2
    io_jobs: int = 2000
    io_keys: int = 64
    io_s: float = 0.02
    io_workers: int = 2
    submit_jobs: int = 5000
    submit_keys: int = 64
    scale_workers: tuple[int, ...] = (1, 2, 4, 8)
    # procrastinate's workers look for jobs on a notification of a new job
    # and by polling (every 5 s by default): a job whose lock is freed by
    # another's end waits for the next poll. Polled often, as here, its
    # tail and its one-key chain are not left waiting for seconds. 1 ms gave
    # the chain its highest rate: 2,000 jobs on one key, 2 workers, 97 jobs/s
    # against 58 at 5 ms, 31 at 20 ms and 24 at 50 ms.
    peer_poll: float = 0.01
    peer_poll_one_key: float = 0.001


SIZES = {
    "full": Size(name="full", reps=3),
    "quick": Size(name="quick", reps=1, noop_jobs=1000, one_key_jobs=400, io_jobs=400, submit_jobs=1000),
    # The smallest configuration: proves the harness runs, measures nothing.
    "smoke": Size(
        name="smoke",
        reps=1,
        noop_jobs=100,
        noop_workers=(1, 2),
        one_key_jobs=40,
        io_jobs=40,
        submit_jobs=100,
        scale_workers=(1, 2),
    ),
}


# -- order -----------------------------------------------------------------


def check_order(records: Iterable[pg_runner.Record], expected: Sequence[tuple[int, int]]) -> list[str]:
    """Return the violations in ``records`` (empty: every guarantee held).

    ``expected`` holds ``(key, seq)`` per submitted job; ``records`` are
    ``(key, seq, start ns, end ns, pid)`` per job run. Checked: every job ran
    exactly once; per key, in start order, each job's seq is larger than the
    one before it (submission order) and it started after that one ended
    (exclusion).
    """
    violations: list[str] = []
    ran: dict[tuple[int, int], int] = defaultdict(int)
    by_key: dict[int, list[pg_runner.Record]] = defaultdict(list)
    for record in records:
        ran[record[0], record[1]] += 1
        by_key[record[0]].append(record)
    wanted = set(expected)
    violations += [f"key {k} seq {s}: never ran" for k, s in sorted(wanted - ran.keys())]
    violations += [f"key {k} seq {s}: was not submitted" for k, s in sorted(ran.keys() - wanted)]
    violations += [f"key {k} seq {s}: ran {n} times" for (k, s), n in sorted(ran.items()) if n > 1]
    for key, runs in sorted(by_key.items()):
        runs.sort(key=lambda record: record[2])
        for before, after in itertools.pairwise(runs):
            if after[1] <= before[1]:
                violations.append(f"key {key}: seq {after[1]} started after seq {before[1]}")
            if after[2] < before[3]:
                violations.append(
                    f"key {key}: seq {after[1]} started {(before[3] - after[2]) / 1e6:.3f} ms "
                    f"before seq {before[1]} ended"
                )
    return violations


# -- CPU time from /proc -----------------------------------------------------

_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _stat(pid: int) -> list[str]:
    # The fields after "(comm)": the command name may hold spaces.
    text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    return text[text.rindex(")") + 2 :].split()


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) of the live process ``pid``."""
    fields = _stat(pid)
    return (int(fields[11]) + int(fields[12])) / _TICKS


def tree_cpu(root: int) -> float:
    """CPU seconds of process ``root`` and its children, the exited ones included.

    For a PostgreSQL server: the postmaster, every backend and auxiliary
    process alive now, and, through the postmaster's ``cutime``/``cstime``,
    every one that has exited (the postmaster reaps its children).
    """
    total = 0.0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == root:
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):  # it exited meanwhile
            fields = _stat(int(entry.name))
            if int(fields[1]) == root:
                total += sum(int(value) for value in fields[11:15]) / _TICKS
    fields = _stat(root)
    return total + sum(int(value) for value in fields[11:15]) / _TICKS


def server_pid(dsn: str) -> int | None:
    """The postmaster's pid, if the server runs on this machine (else None)."""
    import psycopg  # noqa: PLC0415  # the postgres extra

    # Read while the backend lives: its parent is the postmaster.
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        try:
            status = Path(f"/proc/{row[0]}/status").read_text(encoding="utf-8")
        except OSError:
            return None
    for line in status.splitlines():
        if line.startswith("PPid:"):
            return int(line.split()[1])
    return None


# -- the two systems -----------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One system: the interpreter that runs its processes, and how to lay out a fresh queue."""

    name: str
    python: str

    @contextlib.contextmanager
    def fresh(self, dsn: str) -> Iterator[list[str]]:
        """A fresh empty queue; yields the runner's connection options for it."""
        import psycopg  # noqa: PLC0415  # the postgres extra
        from psycopg.conninfo import make_conninfo  # noqa: PLC0415

        if self.name == OURS:
            from keyed_dispatch.postgres import PostgresDispatcher  # noqa: PLC0415

            schema = f"kd_cmp_{uuid.uuid4().hex[:10]}"
            with PostgresDispatcher(dsn, schema=schema) as dispatcher:
                dispatcher.install_schema()
            try:
                yield ["--dsn", dsn, "--schema", schema]
            finally:
                with psycopg.connect(dsn, autocommit=True) as conn:
                    conn.execute(f"DROP SCHEMA {schema} CASCADE")
            return
        database = f"peer_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {database}")
        try:
            options = ["--dsn", make_conninfo(dsn, dbname=database)]
            self.run("schema", *options)
            yield options
        finally:
            with psycopg.connect(dsn, autocommit=True) as conn:
                conn.execute(f"DROP DATABASE {database} WITH (FORCE)")

    def analyze(self, options: Sequence[str]) -> None:
        """Update the planner's statistics of the queue's tables, as autovacuum does in a live queue."""
        import psycopg  # noqa: PLC0415  # the postgres extra

        with psycopg.connect(options[options.index("--dsn") + 1], autocommit=True) as conn:
            conn.execute("ANALYZE")

    def argv(self, command: str, *options: str) -> list[str]:
        return [self.python, "-m", "benchmarks.pg_runner", f"{self.name}-{command}", *options]

    def run(self, command: str, *options: str) -> dict[str, Any]:
        """Run a runner command to its end; its JSON line, if it printed one."""
        done = subprocess.run(
            self.argv(command, *options), cwd=ROOT, capture_output=True, text=True, check=False
        )
        if done.returncode:
            raise RuntimeError(f"{self.name} {command} failed ({done.returncode}):\n{done.stderr}")
        lines = done.stdout.strip().splitlines()
        return dict(json.loads(lines[-1])) if lines else {}


@dataclass(frozen=True)
class Drain:
    """One drain run: the backlog submitted, then worked off."""

    jobs: int
    seconds: float  # first job start .. last job end
    submit_cpu: float  # the submitting loop
    worker_cpu: float  # all workers, from their start signal to the last job's end
    server_submit_cpu: float | None  # the server, while the backlog was submitted
    server_drain_cpu: float | None  # the server, from the start signal to the last job's end
    drain_wall: float  # start signal .. last record received
    violations: tuple[str, ...]

    @property
    def rate(self) -> float:
        return self.jobs / self.seconds

    @property
    def process_ms_per_job(self) -> float:
        """CPU milliseconds per job of the submitting and worker processes."""
        return (self.submit_cpu + self.worker_cpu) / self.jobs * 1000

    @property
    def server_ms_per_job(self) -> float | None:
        """CPU milliseconds per job of the server, submits and drain."""
        if self.server_submit_cpu is None or self.server_drain_cpu is None:
            return None
        return (self.server_submit_cpu + self.server_drain_cpu) / self.jobs * 1000

    @property
    def server_cores(self) -> float | None:
        """The server's CPU use while the workers drained the backlog, in cores."""
        return None if self.server_drain_cpu is None else self.server_drain_cpu / self.drain_wall


def _collect(fd: int, count: int, deadline: float) -> list[pg_runner.Record]:
    size = pg_runner.RECORD.size
    buffer = bytearray()
    while len(buffer) < count * size:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{len(buffer) // size} of {count} jobs ran before the deadline")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                raise RuntimeError(f"the workers exited after {len(buffer) // size} of {count} jobs")
            buffer += chunk
    whole = len(buffer) - len(buffer) % size  # a job run twice may have sent part of an extra record
    return [tuple(pg_runner.RECORD.unpack_from(buffer, offset)) for offset in range(0, whole, size)]


def drain(
    side: Side,
    dsn: str,
    postmaster: int | None,
    *,
    jobs: int,
    keys: int,
    workers: int,
    concurrency: int,
    work_s: float = 0.0,
    worker_options: Sequence[str] = (),
    analyze: bool = True,
) -> Drain:
    """Submit ``jobs`` over ``keys`` from one process, then drain them with ``workers`` processes."""

    def server() -> float | None:
        return tree_cpu(postmaster) if postmaster is not None else None

    shape = ["--jobs", str(jobs), "--keys", str(keys), "--work-s", str(work_s)]
    with side.fresh(dsn) as options:
        server_start = server()
        submitted = side.run("submit", *options, *shape)
        server_submitted = server()
        if analyze:
            side.analyze(options)
        read_end, write_end = os.pipe()
        procs: list[subprocess.Popen[str]] = []
        try:
            env = {**os.environ, "KD_BENCH_RECORD_FD": str(write_end)}
            procs.extend(
                subprocess.Popen(
                    side.argv("worker", *options, "--concurrency", str(concurrency), *worker_options),
                    cwd=ROOT,
                    env=env,
                    pass_fds=(write_end,),
                    text=True,
                    stdin=subprocess.PIPE,
                    stdout=subprocess.PIPE,
                )
                for _ in range(workers)
            )
            os.close(write_end)
            write_end = -1
            for proc in procs:
                assert proc.stdout is not None
                if proc.stdout.readline().strip() != "ready":
                    raise RuntimeError(f"a {side.name} worker did not start (status {proc.wait(60)})")
            cpu_start = [process_cpu(proc.pid) for proc in procs]
            server_go = server()
            started = time.perf_counter()
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            records = _collect(read_end, jobs, time.monotonic() + DEADLINE_S)
            drain_wall = time.perf_counter() - started
            cpu_end = [process_cpu(proc.pid) for proc in procs]
            server_end = server()
        finally:
            _stop(procs)
            os.close(read_end)
            if write_end >= 0:
                os.close(write_end)
    first = min(record[2] for record in records)
    last = max(record[3] for record in records)
    return Drain(
        jobs=jobs,
        seconds=(last - first) / 1e9,
        submit_cpu=float(submitted["cpu"]),
        worker_cpu=sum(cpu_end) - sum(cpu_start),
        server_submit_cpu=_delta(server_start, server_submitted),
        server_drain_cpu=_delta(server_go, server_end),
        drain_wall=drain_wall,
        violations=tuple(check_order(records, pg_runner.plan(jobs, keys))),
    )


def _delta(before: float | None, after: float | None) -> float | None:
    return None if before is None or after is None else after - before


def _stop(procs: Sequence[subprocess.Popen[str]]) -> None:
    for proc in procs:
        if proc.stdin is not None:
            with contextlib.suppress(OSError):
                proc.stdin.close()
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(60)
        if proc.stdout is not None:
            proc.stdout.close()


def submit_rate(side: Side, dsn: str, *, jobs: int, keys: int, mode: str) -> float | str:
    """Jobs per second submitted from one process, or why the batch call could not be measured."""
    with side.fresh(dsn) as options:
        result = side.run("submit", *options, "--jobs", str(jobs), "--keys", str(keys), "--mode", mode)
    if "error" in result:
        return str(result["error"])
    return jobs / float(result["seconds"])


# -- the peer's environment ----------------------------------------------------


def peer_python(venv: Path, say: Say) -> Path:
    """The peer venv's interpreter: created and installed on first use, reused later."""
    python = venv / "bin" / "python"
    stamp = venv / ".installed"
    if python.exists() and stamp.exists() and stamp.read_text(encoding="utf-8") == PEER_REQUIREMENT:
        return python
    say(f"installing {PEER_REQUIREMENT} into {venv} (once)")
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", PEER_REQUIREMENT],
        check=True,
    )
    stamp.write_text(PEER_REQUIREMENT, encoding="utf-8")
    return python


def _peer_versions(python: Path) -> dict[str, str]:
    code = (
        "import importlib.metadata as m, json, sys; "
        "print(json.dumps({n: m.version(n) for n in ('procrastinate', 'psycopg')} "
        "| {'python': sys.version.split()[0]}))"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True, check=True).stdout
    return dict(json.loads(out))


# -- running the workloads -------------------------------------------------------


def _row(workload: str, system: str, metric: str, unit: str, runs: Sequence[float], **extra: Any) -> Row:
    return {
        "workload": workload,
        "system": system,
        "metric": metric,
        "unit": unit,
        "value": statistics.median(runs),
        "runs": list(runs),
        **extra,
    }


def _drain_rows(workload: str, workers: int, found: dict[str, list[Drain]]) -> list[Row]:
    rows: list[Row] = []
    for name, runs in found.items():
        figures: list[tuple[str, str, list[float | None]]] = [
            ("throughput", "jobs/s", [d.rate for d in runs]),
            ("process CPU/job", "ms", [d.process_ms_per_job for d in runs]),
            ("server CPU/job", "ms", [d.server_ms_per_job for d in runs]),
            ("worker CPU", "cores", [d.worker_cpu / d.drain_wall for d in runs]),
            ("server CPU", "cores", [d.server_cores for d in runs]),
        ]
        for metric, unit, values in figures:
            known = [value for value in values if value is not None]
            if len(known) == len(values):
                rows.append(_row(workload, name, metric, unit, known, workers=workers))
    return rows


def _order_note(drained: Drain) -> str:
    if not drained.violations:
        return "order ok"
    return f"ORDER VIOLATED ({len(drained.violations)}: {'; '.join(drained.violations[:3])})"


def run(
    size: Size, sides: dict[str, Side], dsn: str, only: Sequence[str], say: Say
) -> tuple[list[Row], list[str]]:
    """Run the workloads in ``only``; return the rows and the notes."""
    postmaster = server_pid(dsn)
    rows: list[Row] = []
    notes: list[str] = []
    if postmaster is None:
        notes.append("the server is not on this machine: its CPU time is not measured")
    pair = [sides[OURS], sides[PEER]] if PEER in sides else [sides[OURS]]
    violations: dict[str, list[float]] = {side.name: [] for side in pair}

    def drains(
        workload: str, side_list: Sequence[Side], workers: int, **shape: Any
    ) -> dict[str, list[Drain]]:
        found: dict[str, list[Drain]] = {side.name: [] for side in side_list}
        poll = size.peer_poll_one_key if shape["keys"] == 1 else size.peer_poll
        for rep in range(size.reps):
            for side in side_list:
                drained = drain(
                    side, dsn, postmaster, workers=workers, concurrency=size.concurrency,
                    worker_options=("--poll-interval", str(poll)) if side.name == PEER else (), **shape,
                )  # fmt: skip
                found[side.name].append(drained)
                violations.setdefault(side.name, []).append(len(drained.violations))
                say(
                    f"{workload:12} {side.name:4} {workers} workers rep {rep + 1}/{size.reps}: "
                    f"{drained.rate:,.0f} jobs/s ({drained.jobs} jobs in {drained.seconds:.2f} s); "
                    f"{_order_note(drained)}"
                )
        return found

    if "noop-keys" in only:
        for workers in size.noop_workers:
            found = drains("noop-keys", pair, workers, jobs=size.noop_jobs, keys=size.noop_keys)
            rows += _drain_rows("noop-keys", workers, found)
    if "noop-one-key" in only:
        found = drains("noop-one-key", pair, size.one_key_workers, jobs=size.one_key_jobs, keys=1)
        rows += _drain_rows("noop-one-key", size.one_key_workers, found)
    if "io" in only:
        found = drains("io", pair, size.io_workers, jobs=size.io_jobs, keys=size.io_keys, work_s=size.io_s)
        rows += _drain_rows("io", size.io_workers, found)
    if "submit" in only:
        rates: dict[tuple[str, str], list[float]] = defaultdict(list)
        for rep in range(size.reps):
            for mode in ("each", "many"):
                for side in pair:
                    rate = submit_rate(side, dsn, jobs=size.submit_jobs, keys=size.submit_keys, mode=mode)
                    shown = rate if isinstance(rate, str) else f"{rate:,.0f} jobs/s"
                    say(f"submit       {side.name:4} {mode:4} rep {rep + 1}/{size.reps}: {shown}")
                    if isinstance(rate, str):
                        notes += [] if rate in notes else [rate]
                    else:
                        rates[side.name, mode].append(rate)
        for (name, mode), runs in rates.items():
            rows.append(_row("submit", name, "per job" if mode == "each" else "batch", "jobs/s", runs))
    if "scale" in only:
        for workers in size.scale_workers:
            found = drains("scale", [sides[OURS]], workers, jobs=size.noop_jobs, keys=size.noop_keys)
            rows += _drain_rows("scale", workers, found)
    for name, counts in violations.items():
        if counts:
            rows.append({**_row("order", name, "violations", "jobs", counts), "value": sum(counts)})
    return rows, notes


# -- the table and the goals ---------------------------------------------------


def _find(
    rows: Sequence[Row], workload: str, system: str, metric: str, workers: int | None = None
) -> Row | None:
    for row in rows:
        if (row["workload"], row["system"], row["metric"]) == (workload, system, metric) and (
            workers is None or row.get("workers") == workers
        ):
            return row
    return None


def _fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit in ("jobs/s", "jobs"):
        return f"{value:,.0f}"
    if unit == "ms":
        return f"{value:.3f}"
    return f"{value:.2f}"


@dataclass(frozen=True)
class Line:
    """One line of the table: a measured comparison, its goal and whether it was met.

    ``ours`` and ``peer`` are None where not measured; ``met`` is None for a
    line with no goal, or whose goal lacks a figure.
    """

    label: str
    unit: str
    ours: float | None
    peer: float | None
    ratio: str
    goal: str
    met: bool | None


def _compare(
    rows: Sequence[Row],
    label: str,
    workload: str,
    metric: str,
    *,
    workers: int | None = None,
    kind: str = "",
    want: float = 0.0,
) -> Line | None:
    # kind: "faster" (ours / peer >= want), "cheaper" (ours / peer < want),
    # "at least" (ours >= want, in the row's unit), "zero", or "" (no goal).
    found = [_find(rows, workload, name, metric, workers) for name in (OURS, PEER)]
    if found == [None, None]:
        return None
    ours, peer = (row["value"] if row is not None else None for row in found)
    unit = next(row for row in found if row is not None)["unit"]
    ratio = ours / peer if ours is not None and peer else None
    goal, met = "", None
    if kind == "faster":
        goal, met = f">= {want:.1f} x", None if ratio is None else ratio >= want
    elif kind == "cheaper":
        goal, met = f"< {want:.1f} x", None if ratio is None else ratio < want
    elif kind == "at least":
        goal, met = f">= {want:,.0f} {unit}", None if ours is None else ours >= want
    elif kind == "zero":
        goal, met = "0", None if ours is None else ours == 0
    shown = f"{ratio:.2f} x" if ratio is not None and kind != "zero" else ""
    return Line(label, unit, ours, peer, shown, goal, met)


def _batch(rows: Sequence[Row]) -> Line | None:
    line = _compare(
        rows, "submit from one process, one batch", "submit", "batch", kind="at least", want=10_000
    )
    if line is not None and line.ours is None:
        return replace(line, ratio="submit_many: not available")
    return line


def goals(rows: Sequence[Row]) -> list[Line]:
    """The table's lines, from the rows: each comparison with its goal and whether it was met."""

    def plural(workers: int) -> str:
        return f"{workers} worker{'s' if workers > 1 else ''}"

    lines: list[Line | None] = []
    series = sorted(
        (
            row
            for row in rows
            if (row["workload"], row["system"], row["metric"]) == ("noop-keys", OURS, "throughput")
        ),
        key=lambda row: int(row["workers"]),
    )
    workers_of = {row["workload"]: row.get("workers", 0) for row in rows}
    for row in series:
        label = f"no-op, 64 keys, {plural(row['workers'])}"
        lines.append(
            _compare(rows, label, "noop-keys", "throughput", workers=row["workers"], kind="faster", want=3.0)
        )
    if len(series) > 1:
        values = [row["value"] for row in series]
        lines.append(
            Line(
                f"no-op, 64 keys, ours from {plural(series[0]['workers'])} to {series[-1]['workers']}",
                "jobs/s",
                None,
                None,
                " -> ".join(f"{value:,.0f}" for value in values),
                "never falls",
                all(later >= earlier for earlier, later in itertools.pairwise(values)),
            )
        )
    for workload, label, kind, want in (
        ("noop-one-key", "no-op, one key", "faster", 3.0),
        ("io", "20 ms jobs, 64 keys", "faster", 1.0),
    ):
        lines.append(
            _compare(
                rows,
                f"{label}, {plural(workers_of.get(workload, 0))}",
                workload,
                "throughput",
                kind=kind,
                want=want,
            )
        )
    lines += [
        _compare(rows, "20 ms jobs: server CPU per job", "io", "server CPU/job", kind="cheaper", want=1.0),
        _compare(
            rows,
            "20 ms jobs: submitter + worker CPU per job",
            "io",
            "process CPU/job",
            kind="cheaper",
            want=1.0,
        ),
        _compare(rows, "submit from one process, one call per job", "submit", "per job"),
        _batch(rows),
        _compare(rows, "order or exclusion violations, all drain runs", "order", "violations", kind="zero"),
    ]
    return [line for line in lines if line is not None]


def summary(results: dict[str, Any]) -> str:
    """One line: the machine, Python, PostgreSQL, procrastinate and the code measured."""
    machine, versions = results["machine"], results["versions"]
    peer = versions.get("procrastinate")
    return (
        f"{machine['nproc']} x {machine['cpu_model']}; Python {machine['python']}; "
        f"PostgreSQL {versions['postgres']} ({versions['server']}); "
        + (f"procrastinate {peer} (psycopg {versions['peer_psycopg']}); " if peer else "")
        + f"keyed_dispatch {versions['keyed_dispatch']} at {versions['commit']}; {results['date']}"
    )


def _scale_lines(results: dict[str, Any]) -> list[str]:
    by_workers: dict[int, dict[str, float]] = defaultdict(dict)
    for row in sorted(results["rows"], key=lambda row: row.get("workers") or 0):
        if row["workload"] == "scale":
            by_workers[row["workers"]][row["metric"]] = row["value"]
    if not by_workers:
        return []
    out = ["", "scale, ours: no-op jobs over 64 keys by worker processes (CPU in cores while draining)"]
    base = next(iter(by_workers.values()))["throughput"]
    for workers, metrics in by_workers.items():
        rate = metrics["throughput"]
        line = f"  {workers} workers: {rate:>8,.0f} jobs/s ({rate / base:.2f} x the first)"
        line += f"; workers {metrics['worker CPU']:.2f}"
        if "server CPU" in metrics:
            together = metrics["server CPU"] + metrics["worker CPU"]
            cores = results["machine"]["nproc"]
            line += f", server {metrics['server CPU']:.2f}, together {together:.2f} of {cores}"
        out.append(line)
    return out


def table(results: dict[str, Any]) -> str:
    """The terminal table: what was run, then one line per comparison with its goal."""
    params = results["params"]
    peer = results["versions"].get("procrastinate", "-")
    out = [
        f"{TITLE}, {results['size']} run, {params['reps']} repetition(s), medians:",
        summary(results),
        f"each worker process runs {params['concurrency']} jobs at once (our threads; procrastinate's "
        f"concurrency); procrastinate's workers poll every {params['peer_poll'] * 1000:g} ms "
        f"({params['peer_poll_one_key'] * 1000:g} ms on one key).",
        "drain rate: the backlog is submitted before the workers start; "
        "jobs / (first job start .. last job end), on one clock across processes.",
        "",
    ]
    lines = goals(results["rows"])
    header = ["", "unit", "keyed_dispatch", f"procrastinate {peer}", "ours vs peer", "goal", ""]
    cells = [header] + [
        [
            line.label,
            line.unit,
            _fmt(line.ours, line.unit),
            _fmt(line.peer, line.unit),
            line.ratio,
            line.goal and f"goal: {line.goal}",
            {True: "met", False: "not met", None: ""}[line.met],
        ]
        for line in lines
    ]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    for number, row in enumerate(cells):
        text = "  ".join(
            cell.rjust(width) if i in (2, 3) else cell.ljust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        ).rstrip()
        out.append(text)
        if number == 0:
            out.append("-" * len(text))
    out += _scale_lines(results)
    met = [line.met for line in lines if line.met is not None]
    if met:
        out.append(f"\n{sum(met)} of {len(met)} goals met.")
    out += [f"note: {note}" for note in results["notes"]]
    return "\n".join(out)


# -- the chart -------------------------------------------------------------------

_COLORS = {OURS: "#2e9e5b", PEER: "#e07b39"}
_GOAL_COLOR = "#b00020"


def chart(results: dict[str, Any], path: Path) -> str:
    """Draw throughput, CPU per job and submit rates per system to ``path`` (PNG).

    Returns what was done: the chart is skipped, with that reason, when
    matplotlib (the ``bench`` extra) is not installed.
    """
    loaded = load_pyplot()
    if loaded is None:
        return CHART_SKIPPED
    plt, Line2D, Patch = loaded  # noqa: N806  # matplotlib's class names
    rows: list[Row] = results["rows"]
    noop_workers = sorted({row["workers"] for row in rows if row["workload"] == "noop-keys"})
    # (title, y label, groups as (workload, metric, workers, label), goal as (group, value))
    panels: list[tuple[str, str, list[tuple[str, str, int | None, str]], list[tuple[int, float]]]] = [
        (
            "No-op jobs over 64 keys, higher is better",
            "jobs per second",
            [("noop-keys", "throughput", w, f"{w} worker{'s' if w > 1 else ''}") for w in noop_workers],
            [],
        ),
        (
            "One key, and 20 ms jobs, higher is better",
            "jobs per second",
            [
                ("noop-one-key", "throughput", None, "no-op,\none key"),
                ("io", "throughput", None, "20 ms jobs,\n64 keys"),
            ],
            [],
        ),
        (
            "CPU per 20 ms job, lower is better",
            "CPU milliseconds per job",
            [
                ("io", "server CPU/job", None, "PostgreSQL server"),
                ("io", "process CPU/job", None, "submitter + workers"),
            ],
            [],
        ),
        (
            "Submits from one process, higher is better",
            "jobs per second",
            [("submit", "per job", None, "one call per job"), ("submit", "batch", None, "one batch")],
            [(1, 10_000.0)],
        ),
    ]
    figure, axes = plt.subplots(2, 2, figsize=(10, 8.2), squeeze=False)
    names = (OURS, PEER)
    for axis, (title, ylabel, groups, goal_lines) in zip(axes.flat, panels, strict=True):
        width = 0.8 / len(names)
        top = 0.0
        for index, name in enumerate(names):
            heights, positions = [], []
            for group_index, (workload, metric, workers, _label) in enumerate(groups):
                row = _find(rows, workload, name, metric, workers)
                if row is not None:
                    heights.append(row["value"])
                    positions.append(group_index + (index - (len(names) - 1) / 2) * width)
            if not heights:
                continue
            top = max(top, *heights)
            bars = axis.bar(positions, heights, width * 0.92, color=_COLORS[name])
            unit = "ms" if "CPU" in title else "jobs/s"
            axis.bar_label(bars, labels=[_fmt(h, unit) for h in heights], fontsize=9, padding=2)
        for group_index, (workload, metric, workers, _label) in enumerate(groups):
            if _find(rows, workload, OURS, metric, workers) is None and workload == "submit":
                position = group_index - width / 2
                axis.text(
                    position, top * 0.04, "submit_many:\nnot available", ha="center", va="bottom", fontsize=9
                )
        for group_index, value in goal_lines:
            axis.hlines(value, group_index - 0.45, group_index + 0.45, linestyles="--", color=_GOAL_COLOR)
            top = max(top, value)
        axis.set_ylim(0, top * 1.15 or 1)
        if "CPU" not in title:
            axis.yaxis.set_major_formatter(lambda value, _position: f"{value:,.0f}")
        axis.set_xticks(range(len(groups)), [label for *_, label in groups], fontsize=10)
        axis.tick_params(axis="y", labelsize=10)
        axis.set_title(title, fontsize=12)
        axis.set_ylabel(ylabel, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    versions = results["versions"]
    handles = [
        Patch(color=_COLORS[OURS], label=f"keyed_dispatch {versions['keyed_dispatch']}"),
        Patch(color=_COLORS[PEER], label=f"procrastinate {versions.get('procrastinate', '')}"),
        Line2D([], [], color=_GOAL_COLOR, linestyle="--", label="goal"),
    ]
    figure.legend(
        handles=handles, loc="upper center", ncol=3, fontsize=10, bbox_to_anchor=(0.5, 0.95), frameon=False
    )
    machine = results["machine"]
    figure.suptitle(
        f"PostgreSQL {versions['postgres']}, one server ({results['size']} run): "
        f"{machine['nproc']} x {machine['cpu_model']}, Python {machine['python']}, "
        f"{results['params']['concurrency']} jobs at once per worker process",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.91))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"wrote {path}"


# -- the command line --------------------------------------------------------------


def _commit() -> str:
    # The last commit that changed the package: the code measured.
    try:
        head = subprocess.run(
            ["git", "log", "-1", "--format=%h", "--", "keyed_dispatch"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "keyed_dispatch"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")


def _choices(parser: argparse.ArgumentParser, text: str | None) -> list[str]:
    if text is None:
        return [workload for workload in WORKLOADS if workload != "scale"]
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in WORKLOADS]
    if unknown or not chosen:
        parser.error(
            f"--only: unknown {', '.join(unknown) or '(empty)'}; expected from {', '.join(WORKLOADS)}"
        )
    return [workload for workload in WORKLOADS if workload in chosen]


def merge(documents: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One results document from several runs (split by workload or worker count).

    Each (workload, workers) comes from the first run that measured it; the
    order violations are added up over every run.
    """
    sizes = {document["size"] for document in documents}
    if len(sizes) > 1:
        raise ValueError(f"runs of different sizes cannot be merged: {', '.join(sorted(sizes))}")
    merged = {**documents[0], "rows": [], "notes": []}
    seen: set[tuple[str, int | None]] = set()
    order: dict[str, Row] = {}
    for document in documents:
        fresh = {(row["workload"], row.get("workers")) for row in document["rows"]} - seen
        for row in document["rows"]:
            if row["workload"] == "order":
                kept = order.setdefault(row["system"], {**row, "runs": []})
                kept["runs"] = kept["runs"] + row["runs"]
                kept["value"] = sum(kept["runs"])
            elif (row["workload"], row.get("workers")) in fresh:
                merged["rows"].append(row)
        seen |= fresh
        merged["notes"] += [note for note in document["notes"] if note not in merged["notes"]]
        merged["versions"] = {**document["versions"], **merged["versions"]}
    merged["rows"] += order.values()
    workloads = {workload for workload, _ in seen}
    merged["params"] = {**merged["params"], "workloads": [w for w in WORKLOADS if w in workloads]}
    merged["duration_s"] = round(sum(document["duration_s"] for document in documents), 1)
    merged["goals"] = [asdict(line) for line in goals(merged["rows"])]
    return merged


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 also when goals are not met)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.bench_procrastinate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--quick", action="store_true", help="fewer jobs, one repetition (about a minute)")
    parser.add_argument("--size", choices=sorted(SIZES), help="full (default), quick or smoke")
    parser.add_argument("--reps", type=int, help="repetitions, overriding the size's")
    parser.add_argument(
        "--only", help=f"comma-separated workloads, from: {','.join(WORKLOADS)} (default: all but scale)"
    )
    parser.add_argument(
        "--workers", help="comma-separated worker counts of noop-keys and scale (default 1,2,4 and 1,2,4,8)"
    )
    parser.add_argument("--dsn", help="an existing server (default: start an embedded one)")
    parser.add_argument(
        "--peer-venv", type=Path, default=PEER_VENV, help="procrastinate's virtual environment"
    )
    parser.add_argument(
        "--out", type=Path, help="the JSON file (default: benchmarks/results/procrastinate-SIZE.json)"
    )
    parser.add_argument("--chart", type=Path, help="the PNG chart (default: beside the JSON file)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--replot",
        type=Path,
        nargs="+",
        metavar="JSON",
        help="measure nothing: print the table and draw the chart of these results (several: merged)",
    )
    args = parser.parse_args(argv)
    begun = time.perf_counter()

    def say(message: str) -> None:
        if not args.quiet:
            print(f"[{time.perf_counter() - begun:6.1f}s] {message}", file=sys.stderr, flush=True)

    if args.replot is not None:
        try:
            results = merge([json.loads(path.read_text(encoding="utf-8")) for path in args.replot])
        except ValueError as exc:
            parser.error(str(exc))
        print(table(results))
        out = args.out or args.replot[0]
        if args.out is not None:
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
        if not args.no_chart:
            say(chart(results, args.chart or out.with_suffix(".png")))
        return 0
    if args.quick and args.size not in (None, "quick"):
        parser.error("--quick and --size disagree")
    size = SIZES[args.size or ("quick" if args.quick else "full")]
    if args.reps is not None:
        if args.reps < 1:
            parser.error("--reps must be >= 1")
        size = replace(size, reps=args.reps)
    only = _choices(parser, args.only)
    if args.workers is not None:
        try:
            counts = tuple(int(item) for item in args.workers.split(","))
        except ValueError:
            parser.error(f"--workers: expected comma-separated counts, got {args.workers!r}")
        if not counts or min(counts) < 1:
            parser.error(f"--workers: counts must be >= 1, got {args.workers!r}")
        size = replace(size, noop_workers=counts, scale_workers=counts)
    from keyed_dispatch import __version__  # noqa: PLC0415
    from keyed_dispatch.postgres import EmbeddedPostgres  # noqa: PLC0415

    sides = {OURS: Side(OURS, sys.executable)}
    versions: dict[str, str] = {"keyed_dispatch": __version__, "commit": _commit()}
    if set(only) - {"scale"}:
        python = peer_python(args.peer_venv, say)
        peer = _peer_versions(python)
        sides[PEER] = Side(PEER, str(python))
        versions |= {"procrastinate": peer["procrastinate"], "peer_psycopg": peer["psycopg"]}
    server = EmbeddedPostgres() if args.dsn is None else None
    dsn = args.dsn or (server.dsn if server else "")
    try:
        import psycopg  # noqa: PLC0415

        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute("SHOW server_version").fetchone()
            assert row is not None
            versions["postgres"] = str(row[0]).split()[0]
        versions["server"] = "embedded, fsync and synchronous_commit off" if server else "given by --dsn"
        versions["psycopg"] = importlib.metadata.version("psycopg")
        say(f"{TITLE}, {size.name} run: {', '.join(only)}")
        rows, notes = run(size, sides, dsn, only, say)
    finally:
        if server is not None:
            server.close()
    results = {
        "benchmark": TITLE,
        "size": size.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - begun, 1),
        "machine": _machine(),
        "versions": versions,
        "params": {**asdict(size), "workloads": list(only)},
        "rows": rows,
        "goals": [asdict(line) for line in goals(rows)],
        "notes": notes,
    }
    print(table(results))
    out = args.out or RESULTS_DIR / f"procrastinate-{size.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    say(f"wrote {out}")
    if not args.no_chart:
        say(chart(results, args.chart or out.with_suffix(".png")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
