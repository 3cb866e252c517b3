"""Overhead of ``AsyncKeyedDispatcher.run`` against a bare await and a lock map.

Every workload runs the same job, ``await asyncio.sleep(0)`` (one trip
through the event loop, the least real async work) or a 1 ms sleep (an
exchange call), from many concurrent tasks, each awaiting its jobs one after
the other, under four systems:

* ``bare``: ``await job()``, no ordering at all (the floor);
* ``lock-map``: ``async with locks[key]: await job()`` with
  ``locks = defaultdict(asyncio.Lock)`` (the lock-manager design on asyncio;
  the map is never cleaned, which flatters it);
* ``ad.run``: ``await ad.run(key, job)`` on an ``AsyncKeyedDispatcher``;
* ``ad.submit``: ``await (await ad.submit(key, job))``, a task per job.

Each repetition runs every system once on a fresh event loop, ``lock-map``
and ``ad.run`` one right after the other (which goes first alternates), so
that the two see the same machine; a ratio is taken within each repetition
and the ratio shown is the median of those, which a noisy neighbour moves
less than a ratio of medians. Throughputs are medians over repetitions. Our
goal: ``ad.run`` at least as fast as ``lock-map`` on every workload. Run it
standalone::

    python benchmarks/bench_async.py [--quick] [--reps N] [--only async-hot,...]

or through the main suite, which calls :func:`run`. ``--calls`` prints
instead what one uncontended call costs (see :func:`per_call`).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Any

from keyed_dispatch import AsyncKeyedDispatcher

Row = dict[str, Any]


@dataclass(frozen=True)
class Workload:
    name: str
    tasks: int  # concurrent tasks
    keys: int  # task i uses key i % keys
    jobs: int  # jobs per task, awaited one after the other
    job_sleep: float  # seconds the job sleeps (0: one loop trip)
    about: str


def _workloads(quick: bool) -> list[Workload]:
    scale = 1 if quick else 4
    return [
        Workload("async-spread", 100, 100, 50 * scale, 0.0, "100 tasks, a key each (no contention)"),
        Workload("async-shared", 100, 10, 50 * scale, 0.0, "100 tasks on 10 keys"),
        Workload("async-hot", 100, 1, 20 * scale, 0.0, "100 tasks on one key"),
        Workload("async-io", 200, 50, 5 * scale, 0.001, "200 tasks on 50 keys, jobs sleep 1 ms"),
    ]


SYSTEMS = ("bare", "lock-map", "ad.run", "ad.submit")


def _job_for(sleep: float) -> Callable[[], Awaitable[None]]:
    async def job() -> None:
        await asyncio.sleep(sleep)

    return job


async def _one(workload: Workload, system: str) -> tuple[float, float]:
    """Run ``workload`` under ``system`` on the running loop.

    Returns jobs per CPU second and jobs per wall-clock second.
    """
    job = _job_for(workload.job_sleep)
    per_task = workload.jobs
    # Default max_shards (1000): room for every key, as the lock map has.
    ad = AsyncKeyedDispatcher(max_concurrency=workload.tasks)
    locks: defaultdict[Hashable, asyncio.Lock] = defaultdict(asyncio.Lock)

    async def bare(key: int) -> None:
        for _ in range(per_task):
            await job()

    async def lock_map(key: int) -> None:
        for _ in range(per_task):
            async with locks[key]:
                await job()

    async def ad_run(key: int) -> None:
        for _ in range(per_task):
            await ad.run(key, job)

    async def ad_submit(key: int) -> None:
        for _ in range(per_task):
            await (await ad.submit(key, job))

    body = {"bare": bare, "lock-map": lock_map, "ad.run": ad_run, "ad.submit": ad_submit}[system]
    started = time.perf_counter()
    cpu_started = time.process_time()
    await asyncio.gather(*(body(i % workload.keys) for i in range(workload.tasks)))
    cpu = time.process_time() - cpu_started
    elapsed = time.perf_counter() - started
    await ad.aclose()
    jobs = workload.tasks * per_task
    return jobs / cpu, jobs / elapsed


GOAL = 1.0  # ad.run throughput / lock-map throughput, at least


def _orders(rep: int) -> tuple[str, ...]:
    # lock-map and ad.run always next to each other, each first in turn;
    # the other two systems before or after the pair, in turn.
    pair = ("lock-map", "ad.run") if rep % 2 == 0 else ("ad.run", "lock-map")
    rest = ("bare", "ad.submit") if rep % 4 < 2 else ("ad.submit", "bare")
    return pair + rest if rep % 3 else rest + pair


def run(quick: bool, *, reps: int | None = None, only: Sequence[str] | None = None) -> list[Row]:
    """Measure every workload under every system; return the suite's rows.

    Rows, per workload and system: ``{"workload", "system", "metric",
    "value" (the median), "unit", "runs" (one value per repetition)}`` with
    metric ``"throughput"`` (jobs per CPU second of the process: the loop is
    single-threaded, so this is its work per job, and it does not move when
    other processes steal the CPU) and ``"wall throughput"`` (jobs per
    wall-clock second), unit ``"jobs/s"``; then, for the dispatcher systems,
    ``"throughput vs lock-map"`` and ``"throughput vs bare"``: one ratio per
    repetition (``runs``, each against the baseline of the same repetition)
    and their median (``value``), unit ``"x"``.

    Args:
        quick: smaller workloads and fewer repetitions.
        reps: repetitions counted (default 7 quick, 11 full), after one
            warm-up repetition.
        only: the workloads to run, by name (default: all).
    """
    if reps is None:
        reps = 7 if quick else 11
    rows: list[Row] = []
    for workload in _workloads(quick):
        if only and workload.name not in only:
            continue
        cpu: dict[str, list[float]] = {system: [] for system in SYSTEMS}
        wall: dict[str, list[float]] = {system: [] for system in SYSTEMS}
        # A warm-up repetition, not counted: first calls fill caches.
        for rep in range(reps + 1):
            for system in _orders(rep):
                gc.collect()
                per_cpu_s, per_wall_s = asyncio.run(_one(workload, system))
                if rep:
                    cpu[system].append(per_cpu_s)
                    wall[system].append(per_wall_s)
        for metric, runs in (("throughput", cpu), ("wall throughput", wall)):
            rows += [_row(workload.name, system, metric, runs[system], "jobs/s") for system in SYSTEMS]
        for system in ("ad.run", "ad.submit"):
            for metric, base in (("throughput vs lock-map", "lock-map"), ("throughput vs bare", "bare")):
                ratios = [ours / theirs for ours, theirs in zip(cpu[system], cpu[base], strict=True)]
                rows.append(_row(workload.name, system, metric, ratios, "x"))
    return rows


async def _empty() -> None:
    return None


async def _yield() -> None:
    await asyncio.sleep(0)


async def _calls(system: str, calls: int) -> float:
    # CPU ns per call of ``system``, the job an empty coroutine. One task on
    # keys that are idle each time (100 of them in turn), or, for the
    # "hand-off" systems, two tasks on one key with a job that yields once:
    # each call then waits for the other task's job, which hands the key
    # over at its end (two trips through the loop per call, for both).
    base, _, variant = system.partition(" ")
    job = _yield if variant == "hand-off" else _empty
    ad = AsyncKeyedDispatcher(metrics=variant == "metrics")
    locks: defaultdict[Hashable, asyncio.Lock] = defaultdict(asyncio.Lock)
    # Outside the timing: the dispatcher binds to the loop, the locks are made.
    for key in range(100):
        await ad.run(key, _empty)
        locks[key] = asyncio.Lock()
    tasks, keys = (2, 1) if variant == "hand-off" else (1, 100)

    async def body(task: int) -> None:
        if base == "bare":
            for _ in range(task, calls, tasks):
                await job()
        elif base == "lock-map":
            for i in range(task, calls, tasks):
                async with locks[i % keys]:
                    await job()
        else:
            for i in range(task, calls, tasks):
                await ad.run(i % keys, job)

    started = time.process_time_ns()
    await asyncio.gather(*(body(task) for task in range(tasks)))
    elapsed = time.process_time_ns() - started
    await ad.aclose()
    return elapsed / calls


CALL_SYSTEMS = ("bare", "lock-map", "ad.run", "ad.run metrics", "lock-map hand-off", "ad.run hand-off")


def per_call(reps: int = 15, calls: int = 50_000) -> dict[str, float]:
    """CPU ns per call of each system, the least of ``reps`` interleaved runs.

    One task awaits ``calls`` empty jobs in turn, on idle keys: what is
    left beyond ``bare`` is the cost of ordering one call (for ``ad.run``,
    its path for an idle key; ``ad.run metrics``: with ``metrics=True``).
    The ``hand-off`` systems run two tasks on one key, with a job that
    yields once, so that every call waits for its turn: the difference
    between the two is what the contended path costs beyond
    ``asyncio.Lock``'s. The least value is taken: other processes only ever
    add to it.
    """
    runs: dict[str, list[float]] = {system: [] for system in CALL_SYSTEMS}
    for rep in range(reps):
        order = CALL_SYSTEMS if rep % 2 else CALL_SYSTEMS[::-1]
        for system in order:
            gc.collect()
            runs[system].append(asyncio.run(_calls(system, calls)))
    return {system: min(values) for system, values in runs.items()}


def _row(workload: str, system: str, metric: str, runs: list[float], unit: str) -> Row:
    return {
        "workload": workload,
        "system": system,
        "metric": metric,
        "value": statistics.median(runs),
        "unit": unit,
        "runs": runs,
    }


def _table(rows: list[Row], quick: bool) -> str:
    about = {w.name: w.about for w in _workloads(quick)}
    ratios = {
        (row["workload"], row["system"], row["metric"]): row["value"] for row in rows if row["unit"] == "x"
    }
    walls = {
        (row["workload"], row["system"]): row["value"] for row in rows if row["metric"] == "wall throughput"
    }
    lines = [
        "throughput = jobs per CPU second (median); wall = jobs per wall-clock second (median)",
        "",
        f"{'workload':13} {'system':10} {'throughput':>11} {'vs lock-map':>11} {'vs bare':>8} "
        f"{'wall':>9}  runs (throughput)",
    ]
    for row in rows:
        if row["metric"] != "throughput":
            continue
        key = (row["workload"], row["system"])
        vs_lock = ratios.get((*key, "throughput vs lock-map"))
        vs_bare = ratios.get((*key, "throughput vs bare"))
        runs = " ".join(f"{value / 1000:.0f}k" for value in row["runs"])
        lines.append(
            f"{row['workload']:13} {row['system']:10} {row['value']:11,.0f} "
            f"{'' if vs_lock is None else f'{vs_lock:.2f}x':>11} "
            f"{'' if vs_bare is None else f'{vs_bare:.2f}x':>8} {walls[key]:9,.0f}  {runs}"
        )
    lines.append("")
    for workload in dict.fromkeys(row["workload"] for row in rows):
        ratio = ratios[(workload, "ad.run", "throughput vs lock-map")]
        verdict = "met" if ratio >= GOAL else "not met"
        lines.append(f"{workload:13} ad.run {ratio:.2f} x lock-map   goal: >= {GOAL} x lock-map   {verdict}")
    lines.append("")
    lines += [f"{name}: {text}" for name, text in about.items()]
    lines.append("ratios: the median of one ratio per repetition (the two systems run back to back)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer jobs and repetitions")
    parser.add_argument("--reps", type=int, default=None, help="repetitions counted (after a warm-up)")
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated workloads to run: " + ", ".join(w.name for w in _workloads(False)),
    )
    parser.add_argument("--calls", action="store_true", help="print the cost of one uncontended call instead")
    args = parser.parse_args(argv)
    if args.calls:
        costs = per_call(reps=args.reps or 15)
        bare = costs["bare"]
        print("CPU ns per call, an empty job (least of interleaved runs); one task on idle keys:")
        for system, cost in costs.items():
            if system.endswith("hand-off"):
                continue
            extra = "" if system == "bare" else f"  (+{cost - bare:,.0f} over bare)"
            print(f"  {system:15} {cost:7,.0f}{extra}")
        lock, ours = costs["lock-map hand-off"], costs["ad.run hand-off"]
        print("two tasks on one key, a job that yields once, each call waits for its turn:")
        print(f"  {'lock-map':15} {lock:7,.0f}")
        print(f"  {'ad.run':15} {ours:7,.0f}  (+{ours - lock:,.0f} over lock-map)")
        return 0
    only = args.only.split(",") if args.only else None
    known = {w.name for w in _workloads(False)}
    if only and not known.issuperset(only):
        parser.error(f"unknown workload in --only: {', '.join(sorted(set(only) - known))}")
    started = time.perf_counter()
    rows = run(args.quick, reps=args.reps, only=only)
    print(_table(rows, args.quick))
    print(f"\nPython {sys.version.split()[0]}, {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
