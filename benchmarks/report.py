"""The suite's outputs: KeyedDispatcher's goals, the terminal table, JSON, the chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CHART_SKIPPED",
    "SUITE",
    "SYSTEMS",
    "chart",
    "goals",
    "load_pyplot",
    "summary",
    "table",
    "to_json",
]

Row = dict[str, Any]

#: The ``suite`` field of a results document.
SUITE = "keyed_dispatch benchmarks"

#: KeyedDispatcher's row name; the other thread systems are its baselines.
OURS = "keyed"

#: What a chart function returns when matplotlib is missing.
CHART_SKIPPED = (
    "chart skipped: matplotlib is not installed: pip install 'keyed_dispatch[bench]' "
    "(from a checkout: pip install -e '.[bench]')"
)


def load_pyplot() -> tuple[Any, Any, Any] | None:
    """matplotlib's ``pyplot``, ``Line2D`` and ``Patch`` (Agg backend); None without the ``bench`` extra."""
    try:
        # Optional (the ``bench`` extra): mypy may run where it is missing.
        import matplotlib as mpl  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
        from matplotlib.lines import Line2D  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
        from matplotlib.patches import Patch  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return None
    return plt, Line2D, Patch


#: Each system's row name, with what it is: (short label, description).
SYSTEMS: dict[str, tuple[str, str]] = {
    "tpe": ("ThreadPoolExecutor", "a bare ThreadPoolExecutor, keys ignored (no order, no exclusion)"),
    "locks": (
        "lock per key",
        "a ThreadPoolExecutor whose jobs take a lock per key (the lock-manager design)",
    ),
    "hashed": (
        "hashed executors",
        "hashed single-thread executors, one key to one thread (BookKeeper's OrderedExecutor)",
    ),
    "keyed": ("KeyedDispatcher", "KeyedDispatcher, through its public API"),
    "floor": ("floor", "the hottest key's sleeps run back to back, nothing else (the best possible)"),
    "bare": ("bare await", "await job(), no order at all"),
    "lock-map": ("asyncio.Lock per key", "async with locks[key], a defaultdict(asyncio.Lock)"),
    "ad.run": ("AsyncKeyedDispatcher.run", "await AsyncKeyedDispatcher.run(key, job)"),
    "ad.submit": (
        "AsyncKeyedDispatcher.submit",
        "await (await AsyncKeyedDispatcher.submit(key, job)), a task per job",
    ),
}

# Retained bytes after a churn run that still count as "back to the start":
# a fixed-size table (bounded by max_shards), not a cost per key.
CHURN_SLACK_BYTES = 64 * 1024


def _find(rows: Sequence[Row], workload: str, system: str, metric: str) -> float | None:
    for row in rows:
        if row["workload"] == workload and row["system"] == system and row["metric"] == metric:
            return float(row["value"])
    return None


def _goal(
    name: str, want: str, value: float | None, limit: float, op: str, *, shown: str, detail: str = ""
) -> dict[str, Any] | None:
    if value is None:
        return None
    met = value >= limit if op == ">=" else value <= limit
    return {
        "goal": name,
        "want": want,
        "value": value,
        "op": op,
        "limit": limit,
        "met": met,
        "shown": shown,
        "detail": detail,
    }


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def goals(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """KeyedDispatcher's goals, evaluated on ``rows`` (one run).

    Each goal compares KeyedDispatcher with a baseline measured in the same
    run (or with a fixed limit, for memory and order). A goal whose rows
    are missing (a partial run) is left out.
    """

    def get(workload: str, system: str, metric: str) -> float | None:
        return _find(rows, workload, system, metric)

    found: list[dict[str, Any] | None] = []
    for workload, limit in (("noop-kept", 1.0), ("noop-uniform", 1.1), ("noop-one-key", 1.2)):
        ours, tpe = get(workload, OURS, "throughput"), get(workload, "tpe", "throughput")
        ratio = _ratio(ours, tpe)
        cpu = _ratio(get(workload, OURS, "per CPU second"), get(workload, "tpe", "per CPU second"))
        found.append(
            _goal(
                f"{workload} throughput",
                f">= {limit:.1f} x ThreadPoolExecutor",
                ratio,
                limit,
                ">=",
                shown=f"{ratio or 0:.2f} x",
                detail=f"{ours or 0:,.0f} vs {tpe or 0:,.0f} jobs/s"
                + (f"; per CPU second {cpu:.2f} x" if cpu is not None else ""),
            )
        )
    for workload, fixed in (("hot", 1.15), ("mild", None)):
        value = get(workload, OURS, "makespan/bound")
        # Mild skew leaves every worker busy: the unordered pool's own
        # figure is the floor there, so the goal is to be within 0.01 of it.
        unordered = get(workload, "tpe", "makespan/bound")
        if fixed is None and unordered is None:
            continue
        limit = fixed if fixed is not None else unordered + 0.01  # type: ignore[operator]
        want = (
            f"<= {limit:.2f} x lower bound"
            if fixed is not None
            else f"<= ThreadPoolExecutor's + 0.01 ({limit:.3f} x bound)"
        )
        extra = [
            f"{label} {other:.3f}"
            for label, other in (
                ("floor", get(workload, "floor", "makespan/bound")),
                ("hashed", get(workload, "hashed", "makespan/bound")),
                ("tpe (no order)", get(workload, "tpe", "makespan/bound")),
                ("keyed: mean sleep", get(workload, OURS, "mean sleep / nominal")),
                ("workers busy", get(workload, OURS, "workers busy")),
                ("hot-key hand-offs", get(workload, OURS, "hot-key hand-offs/bound")),
            )
            if other is not None
        ]
        found.append(
            _goal(
                f"{workload} makespan",
                want,
                value,
                limit,
                "<=",
                shown=f"{value or 0:.3f} x",
                detail=", ".join(extra),
            )
        )
    for metric in ("p50", "p99"):
        ours, tpe = get("latency", OURS, metric), get("latency", "tpe", metric)
        ratio = _ratio(ours, tpe)
        found.append(
            _goal(
                f"submit-to-start latency {metric}",
                "<= 1.0 x ThreadPoolExecutor",
                ratio,
                1.0,
                "<=",
                shown=f"{ratio or 0:.2f} x",
                detail=f"{ours or 0:.1f} vs {tpe or 0:.1f} us",
            )
        )
    queued = get("memory", OURS, "queued job")
    found.append(
        _goal(
            "memory per queued job",
            "<= 200 B beyond its Future",
            queued,
            200.0,
            "<=",
            shown=f"{queued or 0:.0f} B",
            detail=f"ThreadPoolExecutor {get('memory', 'tpe', 'queued job') or 0:.0f} B; "
            f"its future included: {get('memory', OURS, 'queued job and its future') or 0:,.0f} B "
            f"against {get('memory', 'tpe', 'queued job and its future') or 0:,.0f} B "
            "(ours is lighter than a plain Future)",
        )
    )
    active = get("memory", OURS, "active key")
    found.append(
        _goal("memory per active key", "<= 200 B", active, 200.0, "<=", shown=f"{active or 0:.0f} B")
    )
    idle = get("memory", OURS, "idle key")
    # tracemalloc averages over thousands of keys: under half a byte is nothing.
    found.append(
        _goal(
            "memory per idle key",
            "0 B (below 0.5 B)",
            idle,
            0.5,
            "<=",
            shown=f"{idle or 0:.1f} B",
        )
    )
    retained = get("churn", OURS, "retained")
    per_key = get("churn", OURS, "retained/key")
    found.append(
        _goal(
            "memory after key churn",
            f"back to its start (within {CHURN_SLACK_BYTES // 1024} KiB)",
            retained,
            float(CHURN_SLACK_BYTES),
            "<=",
            shown=f"+{retained or 0:,.0f} B",
            detail=f"{per_key or 0:.3g} B per key; the slack is a bounded table, not a cost per key",
        )
    )
    multi = get("multi", OURS, "multi/single")
    found.append(
        _goal(
            "multi-key throughput (2-3 keys)",
            ">= 0.8 x single-key",
            multi,
            0.8,
            ">=",
            shown=f"{multi or 0:.2f} x",
            detail=f"per CPU second {get('multi', OURS, 'multi/single per CPU-s') or 0:.2f} x; "
            f"locks {get('multi', 'locks', 'multi/single') or 0:.2f} x",
        )
    )
    for metric in ("inversions", "overlaps"):
        value = get("order", OURS, metric)
        found.append(
            _goal(
                f"same-key {metric}",
                "0",
                value,
                0.0,
                "<=",
                shown=f"{value or 0:.0f}",
                detail=f"locks {get('order', 'locks', metric) or 0:.0f}, "
                f"tpe {get('order', 'tpe', metric) or 0:.0f}",
            )
        )
    found += _async_goals(rows)
    return [goal for goal in found if goal is not None]


def _async_goals(rows: Sequence[Row]) -> list[dict[str, Any] | None]:
    # benchmarks/bench_async.py's rows: for each async workload, system
    # "ad.run" against "lock-map" (the asyncio.Lock map) on "throughput"
    # (jobs per CPU second). Its ratio rows are used when present, else the
    # ratio of the throughput rows.
    found: list[dict[str, Any] | None] = []
    workloads = [
        row["workload"] for row in rows if row["system"] == "ad.run" and row["metric"] == "throughput"
    ]
    for workload in dict.fromkeys(workloads):
        ours = _find(rows, workload, "ad.run", "throughput")
        lock_map = _find(rows, workload, "lock-map", "throughput")
        ratio = _find(rows, workload, "ad.run", "throughput vs lock-map")
        if ratio is None:
            ratio = _ratio(ours, lock_map)
        bare = _find(rows, workload, "ad.run", "throughput vs bare")
        found.append(
            _goal(
                f"{workload}: AsyncKeyedDispatcher.run",
                ">= 1.0 x asyncio.Lock per key",
                ratio,
                1.0,
                ">=",
                shown=f"{ratio or 0:.2f} x",
                detail=f"{ours or 0:,.0f} vs {lock_map or 0:,.0f} jobs/CPU-s"
                + (f"; {bare:.2f} x bare await" if bare is not None else ""),
            )
        )
    return found


def _fmt(value: float, unit: str) -> str:
    if unit in ("jobs/s", "jobs/CPU-s"):
        return f"{value:,.0f}"
    if unit == "B":
        return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.1f}"
    if unit in ("x", "s", "share"):
        return f"{value:.3f}"
    if unit == "us":
        return f"{value:.1f}"
    if unit in ("jobs", "keys"):
        return f"{value:,.0f}"
    return f"{value:.4g}"


def _reference(workload: str, metric: str) -> str | None:
    # The baseline a thread row's ratio is taken against.
    if workload in ("noop-kept", "noop-uniform", "noop-one-key", "latency"):
        return "tpe"
    if workload in ("hot", "mild") and metric == "makespan/bound":
        return "hashed"
    if workload == "multi":
        return "locks"
    return None


def _matrix(rows: Sequence[Row], systems: list[str], with_ratio: bool) -> list[str]:
    groups: dict[tuple[str, str], dict[str, Row]] = {}
    for row in rows:
        groups.setdefault((row["workload"], row["metric"]), {})[row["system"]] = row
    header = ["workload", "metric", "unit", *systems]
    if with_ratio:
        header.append(f"{OURS} vs ref")
    lines: list[list[str]] = [header]
    for (workload, metric), by_system in groups.items():
        unit = next(iter(by_system.values()))["unit"]
        cells = [workload, metric, unit]
        cells += [_fmt(by_system[s]["value"], unit) if s in by_system else "-" for s in systems]
        if with_ratio:
            reference = _reference(workload, metric)
            ours, ref = by_system.get(OURS), by_system.get(reference or "")
            ratio = _ratio(ours["value"] if ours else None, ref["value"] if ref else None)
            cells.append(f"{ratio:.2f} x {reference}" if ratio is not None else "")
        lines.append(cells)
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    out = []
    for number, line in enumerate(lines):
        text = "  ".join(
            cell.ljust(width) if i < 3 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(line, widths, strict=True))
        )
        out.append(text.rstrip())
        if number == 0:
            out.append("-" * len(text))
    return out


def summary(results: dict[str, Any]) -> list[str]:
    """What a run compared: its size, systems, workloads, machine and Python."""
    rows: list[Row] = results["rows"]
    params = results["params"]
    machine = results["machine"]
    present = list(dict.fromkeys(row["system"] for row in rows))
    thread = [s for s in params["systems"] if s in present]
    asyncio_systems = [s for s in present if s not in thread and s != "floor"]
    workloads = list(dict.fromkeys(row["workload"] for row in rows))

    def names(systems: Sequence[str]) -> str:
        labels = [SYSTEMS.get(s, (s, s))[0] for s in systems]
        return ", ".join(labels[:-1]) + " and " + labels[-1] if len(labels) > 1 else "".join(labels)

    compared = []
    if OURS in thread and len(thread) > 1:
        compared.append(f"KeyedDispatcher against {names([s for s in thread if s != OURS])}")
    ours_async = [s for s in asyncio_systems if s.startswith("ad.")]
    if ours_async and len(asyncio_systems) > len(ours_async):
        others = [s for s in asyncio_systems if s not in ours_async]
        compared.append(f"AsyncKeyedDispatcher against {names(others)}")
    out = [
        f"{SUITE}, {results['size']} run ({results['duration_s']} s) on {machine['nproc']} x "
        f"{machine['cpu_model']}, {machine.get('implementation', 'Python')} {machine['python']}, "
        f"{params['workers']} worker threads:",
        f"{'; '.join(compared) or 'systems ' + names(present)}; {len(workloads)} workloads.",
        "",
        "systems:",
    ]
    shown = [*thread, *(["floor"] if "floor" in present else []), *asyncio_systems]
    width = max((len(name) for name in shown), default=0)
    out += [f"  {name.ljust(width)}  {SYSTEMS.get(name, (name, name))[1]}" for name in shown]
    out.append(f"workloads: {', '.join(workloads)}")
    return out


def table(results: dict[str, Any]) -> str:
    """The terminal table: what was compared, values per system and workload, ratios, goals.

    The goals are evaluated again from the rows, so an older results file
    shows the current goals.
    """
    rows: list[Row] = results["rows"]
    thread_systems = [s for s in results["params"]["systems"] if any(r["system"] == s for r in rows)]
    if any(r["system"] == "floor" for r in rows):
        thread_systems.append("floor")
    thread_rows = [r for r in rows if r["system"] in thread_systems]
    other_rows = [r for r in rows if r["system"] not in thread_systems]
    out = [*summary(results), ""]
    if thread_rows:
        out += _matrix(thread_rows, thread_systems, with_ratio=True)
    info = results.get("info", {})
    for workload in ("hot", "mild"):
        if workload in info:
            details = info[workload]
            out.append(
                f"{workload}: {details['jobs']:,} jobs on {details['keys_used']} keys, hottest key "
                f"{details['hottest_key_jobs']} jobs; lower bound {details['bound_s']:.3f} s "
                f"({details['bound_kind']}); floor: the hottest key's sleeps back to back took "
                f"{details['floor_serial_s']:.3f} s"
            )
    if "future_bytes" in info:
        out.append(
            f"memory: a plain concurrent.futures.Future is {info['future_bytes']:,.0f} B (not counted)"
        )
    if other_rows:
        async_systems: list[str] = []
        for row in other_rows:
            if row["system"] not in async_systems:
                async_systems.append(row["system"])
        out += ["", "asyncio (benchmarks/bench_async.py):", ""]
        out += _matrix(other_rows, async_systems, with_ratio=False)
    found = goals(rows)
    if found:
        out += ["", "Goals for KeyedDispatcher, each against a baseline measured in this run:", ""]
        cells = [(g["goal"], g["want"], g["shown"], "met" if g["met"] else "not met") for g in found]
        widths = [max(len(line[i]) for line in cells) for i in range(4)]
        for g, line in zip(found, cells, strict=True):
            detail = f"  ({g['detail']})" if g["detail"] else ""
            text = (
                f"  {line[0].ljust(widths[0])}  goal: {line[1].ljust(widths[1])}  "
                f"{line[2].rjust(widths[2])}  {line[3].ljust(widths[3])}{detail}"
            )
            out.append(text.rstrip())
        met = sum(1 for g in found if g["met"])
        out.append(f"\n  {met} of {len(found)} goals met.")
    for note in results["notes"]:
        out.append(f"note: {note}")
    return "\n".join(out)


def to_json(results: dict[str, Any]) -> str:
    """The results document as indented JSON."""
    return json.dumps(results, indent=2, sort_keys=False) + "\n"


def _short(value: float, unit: str) -> str:
    if unit == "jobs/s":
        return f"{value / 1000:.0f}"  # the axis says "thousand"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:.0f}"


# Colours per system: the baselines muted, ours green.
_COLORS = {
    "tpe": "#9e9e9e",
    "locks": "#e07b39",
    "hashed": "#5b8cc0",
    "keyed": "#2e9e5b",
    "floor": "#444444",
    "bare": "#9e9e9e",
    "lock-map": "#e07b39",
    "ad.run": "#2e9e5b",
    "ad.submit": "#8fd19e",
}
_GOAL_COLOR = "#b00020"
# The chart's legend says more than a system's short label where a bar needs it.
_CHART_LABELS = {"tpe": "ThreadPoolExecutor (no order)", "floor": "floor: hot key's sleeps back to back"}

# The makespan panel's bars start at the lower bound (1.0) and grow up or
# down from it: drawn from 0, bars of 1.08 and 1.18 look alike.
_BOUND = 1.0


def chart(results: dict[str, Any], path: Path) -> str:
    """Draw throughput, makespan / lower bound, latency and asyncio per system to ``path`` (PNG).

    Returns a line saying what was done: the chart is skipped, with that
    reason, when matplotlib (the ``bench`` extra) is not installed.
    """
    loaded = load_pyplot()
    if loaded is None:
        return CHART_SKIPPED
    plt, Line2D, Patch = loaded  # noqa: N806  # matplotlib's class names
    rows: list[Row] = results["rows"]
    systems = [s for s in results["params"]["systems"] if any(r["system"] == s for r in rows)]

    mild_tpe = _find(rows, "mild", "tpe", "makespan/bound")
    # (title, y label, unit, bar groups as (workload, metric, label), systems,
    # goal segments as (group index, value))
    panels: list[tuple[str, str, str, list[tuple[str, str, str]], list[str], list[tuple[int, float]]]] = [
        (
            "Throughput, higher is better",
            "thousand jobs per second",
            "jobs/s",
            [
                ("noop-kept", "throughput", "no-op,\nfutures\nkept"),
                ("noop-uniform", "throughput", "no-op,\nfutures\ndropped"),
                ("noop-one-key", "throughput", "no-op,\none key"),
                ("multi", "single-key", "multi:\n1 key"),
                ("multi", "2-3 keys", "multi:\n2-3 keys"),
            ],
            systems,
            [],
        ),
        (
            "Makespan / lower bound, lower is better",
            "makespan / lower bound\n(bars start at the bound, 1.0)",
            "x",
            [
                ("hot", "makespan/bound", "hot keys (Zipf 1.1)\ngoal <= 1.15"),
                ("mild", "makespan/bound", "mild (Zipf 0.6)\ngoal <= unordered + 0.01"),
            ],
            [*systems, "floor"],
            [(0, 1.15)] + ([(1, mild_tpe + 0.01)] if mild_tpe is not None else []),
        ),
        (
            "Submit-to-start latency, lower is better",
            "microseconds",
            "us",
            [("latency", "p50", "median"), ("latency", "p99", "p99")],
            systems,
            [],
        ),
    ]
    async_workloads = list(
        dict.fromkeys(r["workload"] for r in rows if r["system"] == "ad.run" and r["metric"] == "throughput")
    )
    if async_workloads:
        panels.append(
            (
                "asyncio throughput, higher is better",
                "thousand jobs per CPU second",
                "jobs/s",
                [(w, "throughput", w.removeprefix("async-")) for w in async_workloads],
                ["bare", "lock-map", "ad.run", "ad.submit"],
                [],
            )
        )
    columns = 2
    lines_of_panels = -(-len(panels) // columns)
    figure, axes = plt.subplots(
        lines_of_panels, columns, figsize=(10, 4.3 * lines_of_panels + 1.0), squeeze=False
    )
    flat = list(axes.flat)
    for axis in flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (title, ylabel, unit, groups, names, goal_lines) in zip(flat, panels, strict=False):
        base = _BOUND if unit == "x" else 0.0
        width = 0.8 / max(1, len(names))
        tops: list[float] = [base]
        bottoms: list[float] = [base]
        for index, name in enumerate(names):
            heights: list[float] = []
            positions: list[float] = []
            for group_index, (workload, metric, _label) in enumerate(groups):
                value = _find(rows, workload, name, metric)
                if value is not None:
                    heights.append(value)
                    positions.append(group_index + (index - (len(names) - 1) / 2) * width)
            if not heights:
                continue
            tops.append(max(heights))
            bottoms.append(min(heights))
            bars = axis.bar(
                positions,
                [height - base for height in heights],
                width * 0.92,
                bottom=base,
                color=_COLORS.get(name),
            )
            labels = [_short(height, unit) for height in heights]
            # A white box keeps a label legible where a goal line crosses it.
            boxed = {"bbox": {"facecolor": "white", "edgecolor": "none", "pad": 0.6}} if goal_lines else {}
            axis.bar_label(bars, labels=labels, fontsize=9, padding=2, **boxed)
        for group_index, value in goal_lines:
            axis.hlines(
                value, group_index - 0.45, group_index + 0.45, linestyles="--", color=_GOAL_COLOR, zorder=2.5
            )
        top, bottom = max(tops), min(bottoms)
        if unit == "x":
            span = top - bottom
            axis.set_ylim(bottom - 0.12 * span, top + 0.12 * span)
            axis.axhline(_BOUND, color="#222222", linewidth=0.8)
        else:
            # Head room for the labels, and for the legend in the asyncio panel.
            axis.set_ylim(0, top * (1.4 if names[0] == "bare" else 1.14))
            if unit == "jobs/s":
                axis.yaxis.set_major_formatter(lambda value, _position: f"{value / 1000:.0f}")
        axis.set_xticks(range(len(groups)), [label for _, _, label in groups], fontsize=10)
        axis.tick_params(axis="y", labelsize=10)
        axis.set_title(title, fontsize=12)
        axis.set_ylabel(ylabel, fontsize=10)
        axis.grid(axis="y", alpha=0.3)
        axis.set_axisbelow(True)
    labels = {**{name: SYSTEMS[name][0] for name in systems}, **_CHART_LABELS}
    thread_handles = [Patch(color=_COLORS[name], label=labels[name]) for name in [*systems, "floor"]]
    thread_handles.append(Line2D([], [], color=_GOAL_COLOR, linestyle="--", label="goal"))
    figure.legend(
        handles=thread_handles, loc="upper center", ncol=3, fontsize=10, bbox_to_anchor=(0.5, 0.955),
        frameon=False,
    )  # fmt: skip
    if async_workloads:
        async_names = ["bare", "lock-map", "ad.run", "ad.submit"]
        async_axis = flat[len(panels) - 1]
        async_axis.legend(
            handles=[Patch(color=_COLORS[name], label=SYSTEMS[name][0]) for name in async_names],
            fontsize=9,
            loc="upper center",
            ncol=2,
            frameon=False,
        )
    machine = results["machine"]
    figure.suptitle(
        f"keyed_dispatch benchmarks ({results['size']} run): {machine['nproc']} x {machine['cpu_model']}, "
        f"Python {machine['python']}, {results['params']['workers']} worker threads",
        fontsize=12,
    )
    figure.tight_layout(rect=(0, 0, 1, 0.91))
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return f"wrote {path}"
