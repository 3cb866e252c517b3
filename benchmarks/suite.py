"""Run the benchmark suite: ``python -m benchmarks.suite [--quick]`` from the checkout.

(``make bench`` and ``make bench-quick`` do the same.) Every system runs
every workload it supports with the same parameters and the same job lists,
drawn from one random seed; repetitions interleave the systems; medians are
reported and ratios are taken between systems of the same run. Progress
goes to stderr, the table to stdout, the results to a JSON file and, when
matplotlib is installed (the ``bench`` extra), a PNG chart.
"""

from __future__ import annotations

import argparse
import datetime
import importlib
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TextIO

from . import report, workloads
from .systems import SYSTEM_CLASSES, SYSTEMS, make_system

__all__ = ["SIZES", "Size", "main", "run"]

Row = dict[str, Any]

RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass(frozen=True)
class Size:
    """The parameters of one run; ``full`` is the reference run, the others shrink it."""

    name: str
    reps: int
    io_reps: int
    workers: int = 8
    seed: int = 20240605
    noop_jobs: int = 200_000
    noop_keys: int = 1000
    hot_jobs: int = 3000
    hot_keys: int = 200
    hot_s: float = 1.1
    mild_jobs: int = 4000
    mild_keys: int = 2000
    mild_s: float = 0.6
    sleep_s: float = 0.001
    latency_samples: int = 2000
    latency_keys: int = 1000
    latency_gap_s: float = 0.0005
    memory_count: int = 20_000
    churn_keys: int = 1_000_000
    # The lock map keeps every lock, so its memory grows by the same bytes
    # per key at any length: a tenth of the run shows it, and spares the
    # run minutes under tracemalloc and 190 MB.
    churn_baseline_keys: int = 100_000
    churn_systems: tuple[str, ...] = ("locks", "keyed")
    multi_jobs: int = 50_000
    multi_keys: int = 100
    order_jobs: int = 8000
    order_keys: int = 4
    run_async: bool = True


SIZES: dict[str, Size] = {
    "full": Size(name="full", reps=3, io_reps=5),
    "quick": Size(
        name="quick",
        reps=3,
        io_reps=2,
        noop_jobs=15_000,
        latency_samples=300,
        memory_count=3000,
        churn_keys=10_000,
        churn_baseline_keys=10_000,
        multi_jobs=5000,
        order_jobs=2000,
    ),
    # The smallest configuration: proves the suite runs (tests), measures nothing.
    "smoke": Size(
        name="smoke",
        reps=1,
        io_reps=1,
        noop_jobs=300,
        hot_jobs=40,
        mild_jobs=40,
        latency_samples=10,
        latency_gap_s=0.0,
        memory_count=100,
        churn_keys=300,
        churn_baseline_keys=300,
        multi_jobs=100,
        order_jobs=100,
        run_async=False,
    ),
}

WORKLOADS: tuple[str, ...] = (
    "noop-kept",
    "noop-uniform",
    "noop-one-key",
    "hot",
    "mild",
    "latency",
    "memory",
    "churn",
    "multi",
    "order",
    "async",
)


class Progress:
    """Progress lines on a stream (stderr), stamped with the elapsed time."""

    def __init__(self, stream: TextIO | None) -> None:
        self._stream = stream
        self._start = time.perf_counter()

    def __call__(self, message: str) -> None:
        if self._stream is not None:
            print(f"[{time.perf_counter() - self._start:6.1f}s] {message}", file=self._stream, flush=True)


def _row(workload: str, system: str, metric: str, runs: Sequence[float], unit: str) -> Row:
    return {
        "workload": workload,
        "system": system,
        "metric": metric,
        "value": statistics.median(runs),
        "unit": unit,
        "runs": list(runs),
    }


def _machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        model = platform.processor() or "unknown"
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "nproc": len(affinity(0)) if affinity is not None else os.cpu_count(),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def _throughput_rows(
    size: Size,
    systems: Sequence[str],
    workload: str,
    keys: list[str],
    say: Callable[[str], None],
    *,
    keep: bool = False,
) -> list[Row]:
    wall: dict[str, list[float]] = {name: [] for name in systems}
    cpu: dict[str, list[float]] = {name: [] for name in systems}
    live_keys = len(set(keys))
    for rep in range(size.reps):
        for name in systems:
            system = make_system(name, size.workers, live_keys=live_keys)
            system.warm()
            rate = workloads.throughput(system, keys, keep=keep)
            wall[name].append(rate.wall)
            cpu[name].append(rate.cpu)
            say(
                f"{workload:13} {name:7} rep {rep + 1}/{size.reps}: {rate.wall:,.0f} jobs/s, "
                f"{rate.cpu:,.0f} jobs/CPU-s"
            )
    rows = [_row(workload, name, "throughput", wall[name], "jobs/s") for name in systems]
    rows += [_row(workload, name, "per CPU second", cpu[name], "jobs/CPU-s") for name in systems]
    return rows


def _io_rows(
    size: Size,
    systems: Sequence[str],
    workload: str,
    work: workloads.IoWork,
    say: Callable[[str], None],
) -> tuple[list[Row], dict[str, Any]]:
    ratios: dict[str, list[float]] = {name: [] for name in systems}
    makespans: dict[str, list[float]] = {name: [] for name in systems}
    sleeps: dict[str, list[float]] = {name: [] for name in systems}
    gaps: dict[str, list[float]] = {name: [] for name in systems}
    busy: dict[str, list[float]] = {name: [] for name in systems}
    overshoot: dict[str, list[float]] = {name: [] for name in systems}
    floors: list[float] = []
    nominal = work.hottest * work.sleep_s
    for rep in range(size.io_reps):
        serial = workloads.serial_sleeps(work.hottest, work.sleep_s)
        floors.append(serial / nominal)
        say(f"{workload:13} floor   rep {rep + 1}/{size.io_reps}: {floors[-1]:.3f} (hottest key's sleeps)")
        for name in systems:
            system = make_system(name, size.workers, live_keys=len(set(work.keys)))
            system.warm()
            run = workloads.io_makespan(system, work)
            makespans[name].append(run.makespan)
            ratios[name].append(run.makespan / work.bound)
            sleeps[name].append(run.sleeps / work.bound)
            gaps[name].append(run.gaps / work.bound)
            busy[name].append(run.busy)
            overshoot[name].append(run.overshoot)
            say(
                f"{workload:13} {name:7} rep {rep + 1}/{size.io_reps}: makespan {run.makespan:.3f}s, "
                f"/ bound {ratios[name][-1]:.3f} (hot key: sleeps {sleeps[name][-1]:.3f}, "
                f"hand-offs {gaps[name][-1]:.3f}; workers busy {run.busy:.1%}, sleep x {run.overshoot:.3f})"
            )
    rows = [_row(workload, name, "makespan/bound", ratios[name], "x") for name in systems]
    rows += [_row(workload, name, "makespan", makespans[name], "s") for name in systems]
    rows += [_row(workload, name, "hot-key sleeps/bound", sleeps[name], "x") for name in systems]
    rows += [_row(workload, name, "hot-key hand-offs/bound", gaps[name], "x") for name in systems]
    rows += [_row(workload, name, "workers busy", busy[name], "share") for name in systems]
    rows += [_row(workload, name, "mean sleep / nominal", overshoot[name], "x") for name in systems]
    rows.append(_row(workload, "floor", "makespan/bound", floors, "x"))
    info = {
        "jobs": len(work.keys),
        "keys_used": len(set(work.keys)),
        "hottest_key_jobs": work.hottest,
        "bound_s": work.bound,
        "bound_kind": "hottest key" if work.hottest * work.workers >= len(work.keys) else "total / workers",
        "floor_serial_s": statistics.median(floors) * nominal,
        "floor": statistics.median(floors),
    }
    return rows, info


def _latency_rows(size: Size, systems: Sequence[str], say: Callable[[str], None]) -> list[Row]:
    delays: dict[str, list[float]] = {name: [] for name in systems}
    per_rep = max(1, size.latency_samples // size.reps)
    for rep in range(size.reps):
        for name in systems:
            system = make_system(name, size.workers)
            system.warm()
            try:
                delays[name] += workloads.latency_samples(
                    system, per_rep, size.latency_keys, size.latency_gap_s
                )
            finally:
                system.shutdown()
            say(f"latency       {name:7} rep {rep + 1}/{size.reps}: {per_rep} samples")
    rows: list[Row] = []
    for name in systems:
        ordered = sorted(delays[name])
        for metric, quantile in (("p50", 0.50), ("p99", 0.99)):
            value = ordered[min(len(ordered) - 1, int(quantile * len(ordered)))]
            rows.append(
                {
                    "workload": "latency",
                    "system": name,
                    "metric": metric,
                    "value": value,
                    "unit": "us",
                    "runs": [value],
                    "samples": len(ordered),
                }
            )
    return rows


def _memory_rows(size: Size, systems: Sequence[str], say: Callable[[str], None]) -> tuple[list[Row], float]:
    rows: list[Row] = []
    future = 0.0
    for name in systems:
        costs = workloads.memory_costs(name, size.workers, size.memory_count)
        future = costs.future
        say(
            f"memory        {name:7} queued job {costs.queued_job:.0f} B, active key "
            f"{costs.active_key:.0f} B, idle key {costs.idle_key:.1f} B"
        )
        for metric, value in (
            ("queued job", costs.queued_job),
            ("queued job and its future", costs.queued_job + costs.future),
            ("active key", costs.active_key),
            ("idle key", costs.idle_key),
        ):
            rows.append(_row("memory", name, metric, [value], "B"))
    return rows, future


def _churn_rows(size: Size, systems: Sequence[str], say: Callable[[str], None]) -> list[Row]:
    rows: list[Row] = []
    for name in systems:
        if name not in size.churn_systems:
            continue
        count = size.churn_keys if name == "keyed" else size.churn_baseline_keys
        churn = workloads.memory_churn(name, size.workers, count)
        say(
            f"churn         {name:7} {churn.keys:,} keys: retained {churn.retained:,} B, "
            f"peak {churn.peak - churn.start:,} B"
        )
        rows.append(_row("churn", name, "keys", [churn.keys], "keys"))
        rows.append(_row("churn", name, "retained", [churn.retained], "B"))
        rows.append(_row("churn", name, "retained/key", [churn.retained / churn.keys], "B"))
        rows.append(_row("churn", name, "peak", [churn.peak - churn.start], "B"))
    return rows


def _multi_rows(size: Size, systems: Sequence[str], say: Callable[[str], None]) -> list[Row]:
    keysets, singles = workloads.multi_keysets(
        random.Random(f"{size.seed}:multi"), size.multi_jobs, size.multi_keys
    )
    capable = [name for name in systems if SYSTEM_CLASSES[name].multi_key]
    # (label, key sets) -> system -> [(wall, cpu) per repetition]
    variants = (("single-key", singles), ("2-3 keys", keysets))
    rates: dict[str, dict[str, list[workloads.Rate]]] = {
        label: {name: [] for name in capable} for label, _ in variants
    }
    for rep in range(size.reps):
        for name in capable:
            for label, sets in variants:
                system = make_system(name, size.workers)
                system.warm()
                rate = workloads.multi_throughput(system, sets)
                rates[label][name].append(rate)
                say(
                    f"multi         {name:7} rep {rep + 1}/{size.reps}: {label} {rate.wall:,.0f} jobs/s, "
                    f"{rate.cpu:,.0f} jobs/CPU-s"
                )
    rows: list[Row] = []
    for name in capable:
        single, multi = rates["single-key"][name], rates["2-3 keys"][name]
        rows.append(_row("multi", name, "single-key", [r.wall for r in single], "jobs/s"))
        rows.append(_row("multi", name, "2-3 keys", [r.wall for r in multi], "jobs/s"))
        ratios = [m.wall / s.wall for m, s in zip(multi, single, strict=True)]
        rows.append(_row("multi", name, "multi/single", ratios, "x"))
        ratios = [m.cpu / s.cpu for m, s in zip(multi, single, strict=True)]
        rows.append(_row("multi", name, "multi/single per CPU-s", ratios, "x"))
    return rows


def _order_rows(size: Size, systems: Sequence[str], say: Callable[[str], None]) -> list[Row]:
    keys = [f"order-{n % size.order_keys}" for n in range(size.order_jobs)]
    inversions: dict[str, list[float]] = {name: [] for name in systems}
    overlaps: dict[str, list[float]] = {name: [] for name in systems}
    for rep in range(size.reps):
        for name in systems:
            system = make_system(name, size.workers)
            system.warm()
            inverted, overlapped = workloads.order_violations(system, keys)
            inversions[name].append(inverted)
            overlaps[name].append(overlapped)
            say(
                f"order         {name:7} rep {rep + 1}/{size.reps}: "
                f"{inverted} inversions, {overlapped} overlaps"
            )
    rows = [_row("order", name, "inversions", inversions[name], "jobs") for name in systems]
    rows += [_row("order", name, "overlaps", overlaps[name], "jobs") for name in systems]
    return rows


def _async_rows(quick: bool, say: Callable[[str], None], notes: list[str]) -> list[Row]:
    # The asyncio rows come from benchmarks/bench_async.py (written with the
    # asyncio dispatcher): ``run(quick) -> list[row]``, rows shaped like ours.
    try:
        bench_async = importlib.import_module(f"{__package__}.bench_async")
    except ImportError as exc:
        missing = isinstance(exc, ModuleNotFoundError) and exc.name == f"{__package__}.bench_async"
        notes.append(
            "async rows skipped: "
            + (
                "benchmarks/bench_async.py is not present"
                if missing
                else f"bench_async failed to import: {exc!r}"
            )
        )
        say(notes[-1])
        return []
    say("async         running benchmarks/bench_async.py")
    rows: list[Row] = list(bench_async.run(quick))
    for row in rows:
        say(
            f"async         {row['system']:7} {row['workload']} {row['metric']}: "
            f"{row['value']:,.3g} {row['unit']}"
        )
    return rows


def run(
    size: Size,
    *,
    systems: Sequence[str] = SYSTEMS,
    only: Sequence[str] = WORKLOADS,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run the workloads in ``only`` on ``systems``; return the results document.

    The document holds the machine, the parameters, one row per (workload,
    system, metric) with the median ``value`` and every repetition in
    ``runs``, KeyedDispatcher's goals evaluated on this run, and notes.
    """
    say = progress if progress is not None else (lambda message: None)
    started = time.perf_counter()
    machine = _machine()
    rows: list[Row] = []
    notes: list[str] = []
    info: dict[str, Any] = {}
    uniform = [f"uniform-{n % size.noop_keys}" for n in range(size.noop_jobs)]
    if "noop-kept" in only:
        rows += _throughput_rows(size, systems, "noop-kept", uniform, say, keep=True)
    if "noop-uniform" in only:
        rows += _throughput_rows(size, systems, "noop-uniform", uniform, say)
    if "noop-one-key" in only:
        rows += _throughput_rows(size, systems, "noop-one-key", ["one-key"] * size.noop_jobs, say)
    for workload, jobs, nkeys, s in (
        ("hot", size.hot_jobs, size.hot_keys, size.hot_s),
        ("mild", size.mild_jobs, size.mild_keys, size.mild_s),
    ):
        if workload in only:
            work = workloads.IoWork(
                workloads.zipf_keys(random.Random(f"{size.seed}:{workload}"), jobs, nkeys, s, workload),
                size.sleep_s,
                size.workers,
            )
            io_rows, info[workload] = _io_rows(size, systems, workload, work, say)
            rows += io_rows
    if "latency" in only:
        rows += _latency_rows(size, systems, say)
    if "memory" in only:
        memory_rows, info["future_bytes"] = _memory_rows(size, systems, say)
        rows += memory_rows
    if "churn" in only:
        rows += _churn_rows(size, systems, say)
    if "multi" in only:
        rows += _multi_rows(size, systems, say)
    if "order" in only:
        rows += _order_rows(size, systems, say)
    if "async" in only and size.run_async:
        rows += _async_rows(size.name != "full", say, notes)
    if hasattr(os, "getloadavg"):
        machine["loadavg_end"] = list(os.getloadavg())
    return {
        "suite": report.SUITE,
        "size": size.name,
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "duration_s": round(time.perf_counter() - started, 1),
        "machine": machine,
        "params": {**asdict(size), "systems": list(systems), "workloads": list(only)},
        "info": info,
        "rows": rows,
        "goals": report.goals(rows),
        "notes": notes,
    }


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; returns the exit status (0 also when goals are not met)."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.suite",
        description="Benchmark KeyedDispatcher against ThreadPoolExecutor, a lock per key (the "
        "lock-manager design) and hashed single-thread executors (BookKeeper's OrderedExecutor), "
        "and AsyncKeyedDispatcher against an asyncio.Lock per key. Run it from the source checkout.",
    )
    parser.add_argument("--quick", action="store_true", help="the quick run (under a minute)")
    parser.add_argument("--size", choices=sorted(SIZES), help="full (default), quick or smoke")
    parser.add_argument("--only", help=f"comma-separated workloads, from: {','.join(WORKLOADS)}")
    parser.add_argument("--systems", help=f"comma-separated systems, from: {','.join(SYSTEMS)}")
    parser.add_argument("--reps", type=int, help="repetitions (both kinds), overriding the size's")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "latest.json", help="the JSON file")
    parser.add_argument("--chart", type=Path, help="the PNG chart (default: beside the JSON file)")
    parser.add_argument("--no-chart", action="store_true", help="do not draw the chart")
    parser.add_argument("--quiet", action="store_true", help="no progress lines on stderr")
    parser.add_argument(
        "--replot",
        type=Path,
        metavar="JSON",
        help="measure nothing: print the table and draw the chart of JSON",
    )
    args = parser.parse_args(argv)
    if args.replot is not None:
        results = json.loads(args.replot.read_text(encoding="utf-8"))
        print(report.table(results))
        if not args.no_chart:
            print(report.chart(results, args.chart or args.replot.with_suffix(".png")), file=sys.stderr)
        return 0
    if args.quick and args.size not in (None, "quick"):
        parser.error("--quick and --size disagree")
    size = SIZES[args.size or ("quick" if args.quick else "full")]
    if args.reps is not None:
        if args.reps < 1:
            parser.error("--reps must be >= 1")
        size = replace(size, reps=args.reps, io_reps=args.reps)
    only = _choices(parser, "--only", args.only, WORKLOADS)
    systems = _choices(parser, "--systems", args.systems, SYSTEMS)
    progress = Progress(None if args.quiet else sys.stderr)
    progress(f"keyed_dispatch benchmarks, {size.name} run; systems {', '.join(systems)}")
    results = run(size, systems=systems, only=only, progress=progress)
    print(report.table(results))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report.to_json(results), encoding="utf-8")
    progress(f"wrote {args.out}")
    if not args.no_chart:
        chart = args.chart if args.chart is not None else args.out.with_suffix(".png")
        message = report.chart(results, chart)
        progress(message)
    return 0


def _choices(
    parser: argparse.ArgumentParser, flag: str, text: str | None, allowed: Sequence[str]
) -> list[str]:
    if text is None:
        return list(allowed)
    chosen = [item.strip() for item in text.split(",") if item.strip()]
    unknown = [item for item in chosen if item not in allowed]
    if unknown or not chosen:
        parser.error(f"{flag}: unknown {', '.join(unknown) or '(empty)'}; expected from {', '.join(allowed)}")
    # Keep the suite's order, whatever the order given.
    return [item for item in allowed if item in chosen]


if __name__ == "__main__":
    sys.exit(main())
