"""Where a no-op job's time goes: ``python -m benchmarks.profile_paths``.

Three views of the dispatch paths of each system on noop-uniform and
noop-one-key:

* pipelined: a normal timed run (as the suite's): wall-clock and CPU ns per
  job (CPU of the whole process, all threads, user and system), and the
  context switches the process made per job (``getrusage``): a contended
  lock shows as switches;
* split: with every worker held busy, the submit loop alone, then, once the
  workers are let go, the drain alone (run loop and completion), in CPU ns
  per job; with the cyclic GC on and off, because the GC's share grows
  with the objects a queued job keeps alive;
* profile: cProfile in the submitting thread and in every worker thread of
  a pipelined run, the top functions by own CPU time (``time.thread_time``,
  so a thread waiting for the GIL or a lock is not charged), in ns per job.
  cProfile inflates every call by a similar amount, so read the ranking and
  the shares, not the absolute figures.

Run from the checkout's root, for example::

    python -m benchmarks.profile_paths --system keyed --workload noop-one-key
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import resource
import sys
import threading
import time
from collections.abc import Hashable, Sequence
from types import FrameType
from typing import Any

from .systems import SYSTEMS, make_system
from .workloads import noop

__all__ = ["main", "profile_run", "split_costs"]


def _keys(workload: str, jobs: int) -> list[Hashable]:
    if workload == "noop-one-key":
        return ["one-key"] * jobs
    return [f"uniform-{n % 1000}" for n in range(jobs)]


def split_costs(name: str, keys: Sequence[Hashable], *, collect: bool) -> tuple[float, float]:
    """(submit, drain) in CPU ns per job, the two phases apart (see module doc).

    CPU time of the whole process: while the workers are held, that is the
    submitting thread's; during the drain, the workers' (and shutdown's).
    """
    system = make_system(name, 8, live_keys=len(set(keys)))
    system.warm()
    release = threading.Event()
    gates = system.occupy(release)
    gc.collect()
    if not collect:
        gc.disable()
    try:
        start = time.process_time_ns()
        system.submit_many(keys, noop)
        submitted = time.process_time_ns()
        release.set()
        system.shutdown()
        drained = time.process_time_ns()
    finally:
        gc.enable()
    for gate in gates:
        gate.result()
    return (submitted - start) / len(keys), (drained - submitted) / len(keys)


def _switches() -> int:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_nvcsw + usage.ru_nivcsw


def pipelined(name: str, keys: Sequence[Hashable]) -> tuple[float, float, float]:
    """(wall ns, CPU ns, context switches) per job of a normal run."""
    system = make_system(name, 8, live_keys=len(set(keys)))
    system.warm()
    gc.collect()
    switches = _switches()
    cpu = time.process_time_ns()
    start = time.perf_counter_ns()
    system.submit_many(keys, noop)
    system.shutdown()
    elapsed = time.perf_counter_ns() - start
    cpu = time.process_time_ns() - cpu
    return elapsed / len(keys), cpu / len(keys), (_switches() - switches) / len(keys)


# From Python 3.12 cProfile runs on sys.monitoring, which is process-wide:
# one profiler at a time sees every thread, so threads cannot be split.
PER_THREAD_PROFILES = sys.version_info < (3, 12)


def profile_run(name: str, keys: Sequence[Hashable]) -> tuple[pstats.Stats, pstats.Stats | None]:
    """cProfile a pipelined run: (submitting thread, worker threads merged).

    On Python 3.12 and later the first profile covers every thread and the
    second is None (see PER_THREAD_PROFILES).
    """
    if not PER_THREAD_PROFILES:
        system = make_system(name, 8, live_keys=len(set(keys)))
        system.warm()
        gc.collect()
        everything = cProfile.Profile()
        everything.enable()
        system.submit_many(keys, noop)
        system.shutdown()
        everything.disable()
        return pstats.Stats(everything), None
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def start_profiler(frame: FrameType, event: str, arg: Any) -> None:
        # First profile event in a new thread: hand the thread to cProfile.
        sys.setprofile(None)
        profiler = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(profiler)
        profiler.enable()

    threading.setprofile(start_profiler)
    try:
        system = make_system(name, 8, live_keys=len(set(keys)))
        system.warm()  # the worker threads start here, profiled
    finally:
        threading.setprofile(None)
    gc.collect()
    submitter = cProfile.Profile(time.thread_time)
    submitter.enable()
    system.submit_many(keys, noop)
    submitter.disable()
    system.shutdown()
    for profiler in profiles:
        profiler.disable()
    workers = pstats.Stats(profiles[0]) if profiles else None
    if workers is not None:
        for profiler in profiles[1:]:
            workers.add(profiler)
    return pstats.Stats(submitter), workers


def _top(stats: pstats.Stats, jobs: int, count: int) -> list[str]:
    entries: dict[tuple[str, int, str], tuple[int, int, float, float, Any]]
    entries = stats.stats  # type: ignore[attr-defined]
    total = sum(tottime for (_, _, tottime, _, _) in entries.values())
    ranked = sorted(entries.items(), key=lambda item: item[1][2], reverse=True)[:count]
    lines = [f"    {'own ns/job':>10} {'share':>6} {'calls/job':>9}  function", f"    {'-' * 60}"]
    for (filename, line, function), (_, calls, tottime, _, _) in ranked:
        where = filename.rsplit("/", 1)[-1] if filename != "~" else ""
        label = f"{where}:{line}({function})" if where else function
        lines.append(f"    {tottime * 1e9 / jobs:10.0f} {tottime / total:6.1%} {calls / jobs:9.2f}  {label}")
    lines.append(f"    {total * 1e9 / jobs:10.0f} total own time per job (profiled)")
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    """Print the split costs and the profiles; returns 0."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.profile_paths")
    parser.add_argument(
        "--system", choices=SYSTEMS, action="append", help="repeatable; default keyed and tpe"
    )
    parser.add_argument("--workload", choices=("noop-uniform", "noop-one-key"), action="append")
    parser.add_argument("--jobs", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=3, help="split repetitions (median)")
    parser.add_argument("--top", type=int, default=14)
    parser.add_argument("--no-profile", action="store_true", help="the split costs only")
    args = parser.parse_args(argv)
    systems = args.system or ["tpe", "keyed"]
    for workload in args.workload or ["noop-uniform", "noop-one-key"]:
        keys = _keys(workload, args.jobs)
        print(f"== {workload}, {args.jobs:,} no-op jobs, 8 workers")
        print(
            f"  {'':8} {'pipelined, per job':>29} | {'gated, CPU ns/job':>17} | {'same, GC off':>15}\n"
            f"  {'system':8} {'wall ns':>8} {'CPU ns':>8} {'switches':>11} | "
            f"{'submit':>8} {'drain':>8} | {'submit':>7} {'drain':>7}"
        )
        middle = args.reps // 2
        for name in systems:
            run = sorted(pipelined(name, keys) for _ in range(args.reps))[middle]
            on = sorted(split_costs(name, keys, collect=True) for _ in range(args.reps))[middle]
            off = sorted(split_costs(name, keys, collect=False) for _ in range(args.reps))[middle]
            print(
                f"  {name:8} {run[0]:8,.0f} {run[1]:8,.0f} {run[2]:11.2f} | {on[0]:8,.0f} {on[1]:8,.0f} | "
                f"{off[0]:7,.0f} {off[1]:7,.0f}"
            )
        if args.no_profile:
            continue
        for name in systems:
            submitter, workers = profile_run(name, keys)
            which = "submitting thread" if PER_THREAD_PROFILES else "all threads, wall time"
            print(f"\n  {name}: {which} (cProfile)")
            print("\n".join(_top(submitter, args.jobs, args.top)))
            if workers is not None:
                print(f"\n  {name}: worker threads, merged (cProfile)")
                print("\n".join(_top(workers, args.jobs, args.top)))
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
