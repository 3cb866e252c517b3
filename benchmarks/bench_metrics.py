"""What ``metrics=True`` costs: no-op jobs with the histograms on and off.

No-op jobs are the worst case (the recording is the same whatever the job
does, so the slower the job, the smaller its share). Three workloads, each
run by a dispatcher with ``metrics=False`` and one with ``metrics=True``:

* ``thread-noop``: a KeyedDispatcher with 8 workers, no-op jobs submitted
  over 1000 keys from one thread, then waited for (the suite's no-op
  workload);
* ``async-run``: an AsyncKeyedDispatcher, 100 tasks on 100 keys, each
  awaiting ``ad.run(key, job)`` with ``job`` one trip through the loop;
* ``async-submit``: the same with ``await (await ad.submit(key, job))``.

Repetitions interleave the two settings (off, on, on, off, ...) after one
warm-up run of each; the table shows the median throughput of each and the
ratio on / off of the medians. Our goal: a ratio of at least 0.95. Run it
on a quiet machine, from the checkout::

    python -m benchmarks.bench_metrics [--quick] [--reps N]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import statistics
import sys
import time
from collections.abc import Callable, Sequence

from keyed_dispatch import AsyncKeyedDispatcher, KeyedDispatcher

GOAL = 0.95


def _noop() -> None:
    return None


def thread_noop(metrics: bool, jobs: int) -> float:
    """Jobs per second of no-op jobs over 1000 keys on 8 workers."""
    with KeyedDispatcher(8, metrics=metrics, wait_warning=None) as d:
        d.submit(0, _noop).result()  # the workers start outside the timing
        started = time.perf_counter()
        futures = [d.submit(i % 1000, _noop) for i in range(jobs)]
        for future in futures:
            future.result()
        elapsed = time.perf_counter() - started
    return jobs / elapsed


async def _job() -> None:
    await asyncio.sleep(0)


async def _async(metrics: bool, jobs: int, inline: bool) -> float:
    tasks = 100
    per_task = max(1, jobs // tasks)
    async with AsyncKeyedDispatcher(tasks, metrics=metrics, wait_warning=None) as ad:

        async def run(key: int) -> None:
            for _ in range(per_task):
                await ad.run(key, _job)

        async def submit(key: int) -> None:
            for _ in range(per_task):
                await (await ad.submit(key, _job))

        body = run if inline else submit
        started = time.perf_counter()
        await asyncio.gather(*(body(i) for i in range(tasks)))
        elapsed = time.perf_counter() - started
    return tasks * per_task / elapsed


WORKLOADS: dict[str, Callable[[bool, int], float]] = {
    "thread-noop": thread_noop,
    "async-run": lambda metrics, jobs: asyncio.run(_async(metrics, jobs, inline=True)),
    "async-submit": lambda metrics, jobs: asyncio.run(_async(metrics, jobs, inline=False)),
}


def measure(name: str, jobs: int, reps: int) -> tuple[float, float]:
    """Median jobs/s with metrics off and on, over ``reps`` interleaved runs each."""
    workload = WORKLOADS[name]
    runs: dict[bool, list[float]] = {False: [], True: []}
    workload(False, jobs)  # warm-up, not counted
    workload(True, jobs)
    for rep in range(reps):
        # off, on / on, off: neither setting always runs first.
        for metrics in (False, True) if rep % 2 == 0 else (True, False):
            gc.collect()
            runs[metrics].append(workload(metrics, jobs))
    return statistics.median(runs[False]), statistics.median(runs[True])


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs (a smoke run; the ratio is noisy)")
    parser.add_argument("--reps", type=int, default=None, help="interleaved repetitions of each setting")
    parser.add_argument("--jobs", type=int, default=None, help="jobs per run")
    args = parser.parse_args(argv)
    jobs = args.jobs or (2_000 if args.quick else 100_000)
    reps = args.reps or (3 if args.quick else 9)
    print(f"{'workload':<14} {'off jobs/s':>12} {'on jobs/s':>12} {'on/off':>7}")
    worst = float("inf")
    for name in WORKLOADS:
        off, on = measure(name, jobs, reps)
        ratio = on / off
        worst = min(worst, ratio)
        print(f"{name:<14} {off:>12,.0f} {on:>12,.0f} {ratio:>7.3f}")
    verdict = "meets" if worst >= GOAL else "misses"
    print(f"worst on/off ratio {worst:.3f}: {verdict} the goal of {GOAL} ({jobs} jobs, {reps} reps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
