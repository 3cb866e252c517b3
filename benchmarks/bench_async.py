"""Overhead of ``AsyncKeyedDispatcher.run`` against a bare await and a lock map.

Every workload runs the same job, ``await asyncio.sleep(0)`` (one trip
through the event loop, the least real async work) or a 1 ms sleep (an
exchange call), from many concurrent tasks, each awaiting its jobs one after
the other, under three systems:

* ``bare``: ``await job()``, no ordering at all (the floor);
* ``lock-map``: ``async with locks[key]: await job()`` with
  ``locks = defaultdict(asyncio.Lock)`` (the lock-manager design on asyncio;
  the map is never cleaned, which flatters it);
* ``ad.run``: ``await ad.run(key, job)`` on an ``AsyncKeyedDispatcher``;
* ``ad.submit``: ``await (await ad.submit(key, job))``, a task per job.

Each repetition runs every system once, in turn, on a fresh event loop; the
value is the median over repetitions, and the ratios are computed from the
medians of this run. Run it standalone::

    python benchmarks/bench_async.py [--quick]

or through the main suite, which calls :func:`run`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable, Hashable
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


def run(quick: bool) -> list[Row]:
    """Measure every workload under every system; return the suite's rows.

    Rows, per workload and system: ``{"workload", "system", "metric",
    "value" (the median), "unit", "runs" (one value per repetition)}`` with
    metric ``"throughput"`` (jobs per CPU second of the process: the loop is
    single-threaded, so this is its work per job, and it does not move when
    other processes steal the CPU) and ``"wall throughput"`` (jobs per
    wall-clock second), unit ``"jobs/s"``; then, for the dispatcher systems,
    ``"throughput vs lock-map"`` and ``"throughput vs bare"`` ratios of the
    medians, unit ``"x"``.
    """
    reps = 5 if quick else 9
    rows: list[Row] = []
    for workload in _workloads(quick):
        cpu: dict[str, list[float]] = {system: [] for system in SYSTEMS}
        wall: dict[str, list[float]] = {system: [] for system in SYSTEMS}
        # A warm-up repetition, not counted: first calls fill caches.
        for rep in range(reps + 1):
            # Rotate the order so that no system always runs right after
            # the same one (allocator and cache state differ).
            order = SYSTEMS[rep % len(SYSTEMS) :] + SYSTEMS[: rep % len(SYSTEMS)]
            for system in order:
                gc.collect()
                per_cpu_s, per_wall_s = asyncio.run(_one(workload, system))
                if rep:
                    cpu[system].append(per_cpu_s)
                    wall[system].append(per_wall_s)
        for metric, runs in (("throughput", cpu), ("wall throughput", wall)):
            rows += [_row(workload.name, system, metric, runs[system], "jobs/s") for system in SYSTEMS]
        lock_median = statistics.median(cpu["lock-map"])
        bare_median = statistics.median(cpu["bare"])
        for system in ("ad.run", "ad.submit"):
            for metric, base in (
                ("throughput vs lock-map", lock_median),
                ("throughput vs bare", bare_median),
            ):
                row = _row(workload.name, system, metric, [value / base for value in cpu[system]], "x")
                row["value"] = statistics.median(cpu[system]) / base
                rows.append(row)
    return rows


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
    lines += [f"{name}: {text}" for name, text in about.items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="fewer jobs and repetitions")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    rows = run(args.quick)
    print(_table(rows, args.quick))
    print(f"\nPython {sys.version.split()[0]}, {time.perf_counter() - started:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
