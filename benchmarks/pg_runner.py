"""The processes of the PostgreSQL comparison (``bench_procrastinate``): workers and submitters.

Run as ``python -m benchmarks.pg_runner COMMAND ...`` from the checkout, by
our interpreter for keyed_dispatch's side and by the peer's own virtual
environment for procrastinate's. The module imports only the standard
library at the top: each side's package is imported by its own commands.

Every job records itself: at its end it writes one fixed-size record (key,
seq, start and end on ``CLOCK_MONOTONIC``, pid) to the pipe inherited as
``$KD_BENCH_RECORD_FD``. A write of under ``PIPE_BUF`` bytes is atomic, so
the records of all workers arrive whole, and the benchmark reads them all:
they time the drain and prove the order (``bench_procrastinate.check_order``).

Workers print ``ready`` once set up, then wait for a line on stdin before
they take jobs, so that every worker of a run starts together. SIGTERM stops
a worker gracefully. Submitters print one JSON line: wall and CPU seconds of
their submitting loop.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import struct
import sys
import threading
import time
from collections.abc import Sequence
from typing import Any

__all__ = ["RECORD", "Record", "main", "noop", "sleep"]

#: key index, seq (the job's rank among its key's jobs), start ns, end ns, pid
RECORD = struct.Struct("<qqqqq")
Record = tuple[int, int, int, int, int]

#: Our job functions, as ``submit`` names them (this module's name, also when run with -m).
NOOP = "benchmarks.pg_runner:noop"
SLEEP = "benchmarks.pg_runner:sleep"

_fd: int | None = None


def _record(key: int, seq: int, start: int) -> None:
    global _fd
    if _fd is None:
        _fd = int(os.environ["KD_BENCH_RECORD_FD"])
    os.write(_fd, RECORD.pack(key, seq, start, time.monotonic_ns(), os.getpid()))


def noop(key: int, seq: int) -> None:
    """A job that does nothing but record itself (the queue's own cost)."""
    _record(key, seq, time.monotonic_ns())


def sleep(key: int, seq: int, seconds: float) -> None:
    """A job that waits ``seconds`` (I/O such as an exchange call), then records itself."""
    start = time.monotonic_ns()
    time.sleep(seconds)
    _record(key, seq, start)


def key_name(index: int) -> str:
    """The key (ours) or lock (the peer's) of key index ``index``."""
    return f"k{index}"


def plan(jobs: int, keys: int) -> list[tuple[int, int]]:
    """``(key index, seq)`` per job in submission order: round robin over the keys."""
    return [(n % keys, n // keys) for n in range(jobs)]


def _wait_for_go() -> None:
    print("ready", flush=True)
    if not sys.stdin.readline():
        raise SystemExit("no start line on stdin")


# -- keyed_dispatch ----------------------------------------------------------


def _ours_worker(args: argparse.Namespace) -> None:
    from keyed_dispatch.postgres import run_worker  # noqa: PLC0415  # our side only

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.set())
    _wait_for_go()
    run_worker(
        args.dsn,
        schema=args.schema,
        concurrency=args.concurrency,
        functions=[NOOP, SLEEP],
        stop=stop,
        wait_warning=None,
    )


def _ours_submit(args: argparse.Namespace) -> dict[str, Any]:
    from keyed_dispatch.postgres import PostgresDispatcher  # noqa: PLC0415  # our side only

    jobs = plan(args.jobs, args.keys)
    func, extra = (SLEEP, (args.work_s,)) if args.work_s else (NOOP, ())
    with PostgresDispatcher(args.dsn, schema=args.schema, functions=[NOOP, SLEEP]) as dispatcher:
        if args.mode == "many":
            submit_many = getattr(dispatcher, "submit_many", None)
            if submit_many is None:
                return {"error": "submit_many: not available"}
            items: list[tuple[str, str, tuple[Any, ...], dict[str, Any]]] = [
                (key_name(key), func, (key, seq, *extra), {}) for key, seq in jobs
            ]
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                submit_many(items)
            except TypeError as exc:  # items of another shape
                return {"error": f"submit_many refused (key, function, args, kwargs) items: {exc}"}
        else:
            submit = dispatcher.submit
            wall, cpu = time.perf_counter(), time.process_time()
            for key, seq in jobs:
                submit(key_name(key), func, key, seq, *extra)
        return {"seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


# -- procrastinate -----------------------------------------------------------


def _peer_app(dsn: str) -> Any:
    import procrastinate  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415  # the peer's venv

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

    # The peer's worker runs on asyncio: a no-op is cheapest as a coroutine
    # (a plain function would take a thread hop per job). The 20 ms job is
    # the same blocking code as ours, run on the peer's threads.
    async def peer_noop(key: int, seq: int) -> None:
        noop(key, seq)

    def peer_sleep(key: int, seq: int, seconds: float) -> None:
        sleep(key, seq, seconds)

    app.task(name="noop")(peer_noop)
    app.task(name="sleep")(peer_sleep)
    return app


def _peer_worker(args: argparse.Namespace) -> None:
    app = _peer_app(args.dsn)

    async def work() -> None:
        async with app.open_async():
            await asyncio.get_running_loop().run_in_executor(None, _wait_for_go)
            # Installs its own SIGTERM handler: a graceful stop.
            await app.run_worker_async(
                concurrency=args.concurrency, fetch_job_polling_interval=args.poll_interval
            )

    asyncio.run(work())


def _peer_submit(args: argparse.Namespace) -> dict[str, Any]:
    app = _peer_app(args.dsn)
    jobs = plan(args.jobs, args.keys)
    name, extra = ("sleep", {"seconds": args.work_s}) if args.work_s else ("noop", {})
    task = app.tasks[name]
    with app.open():
        if args.mode == "many":
            # One statement for all: each job keeps its own lock.
            wall, cpu = time.perf_counter(), time.process_time()
            batch = [
                task.configure(lock=key_name(key)).make_new_job(key=key, seq=seq, **extra)
                for key, seq in jobs
            ]
            app.job_manager.batch_defer_jobs(batch)
        else:
            wall, cpu = time.perf_counter(), time.process_time()
            for key, seq in jobs:
                task.configure(lock=key_name(key)).defer(key=key, seq=seq, **extra)
        return {"seconds": time.perf_counter() - wall, "cpu": time.process_time() - cpu}


def _peer_schema(args: argparse.Namespace) -> None:
    app = _peer_app(args.dsn)
    with app.open():
        app.schema_manager.apply_schema()


def main(argv: Sequence[str] | None = None) -> int:
    """The command line of the benchmark's processes."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.pg_runner", description=__doc__)
    parser.add_argument(
        "command", choices=["ours-worker", "ours-submit", "peer-worker", "peer-submit", "peer-schema"]
    )
    parser.add_argument("--dsn", required=True)
    parser.add_argument("--schema", default="keyed_dispatch", help="our queue's schema")
    parser.add_argument("--concurrency", type=int, default=8, help="jobs a worker runs at once")
    parser.add_argument(
        "--poll-interval", type=float, default=5.0, help="the peer worker's fetch polling interval"
    )
    parser.add_argument("--jobs", type=int, default=0)
    parser.add_argument("--keys", type=int, default=1)
    parser.add_argument("--work-s", type=float, default=0.0, help="seconds each job sleeps (0: no-op)")
    parser.add_argument(
        "--mode", choices=["each", "many"], default="each", help="one submit per job, or one batch"
    )
    args = parser.parse_args(argv)
    commands = {
        "ours-worker": _ours_worker,
        "ours-submit": _ours_submit,
        "peer-worker": _peer_worker,
        "peer-submit": _peer_submit,
        "peer-schema": _peer_schema,
    }
    result = commands[args.command](args)
    if result is not None:
        print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    # Run the imported module, not this __main__ copy: the job functions and
    # the peer's tasks are then known by the module name the other
    # processes use.
    import importlib

    sys.exit(importlib.import_module("benchmarks.pg_runner").main())
