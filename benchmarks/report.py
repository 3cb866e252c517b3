"""The suite's outputs: the issue's targets, the terminal table, JSON, the chart."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["chart", "table", "targets", "to_json"]

Row = dict[str, Any]

#: KeyedDispatcher's row name; the other thread systems are its baselines.
OURS = "keyed"

# Retained bytes after a churn run that still count as "back to the start":
# a fixed-size table (bounded by max_shards), not a cost per key.
CHURN_SLACK_BYTES = 64 * 1024


def _find(rows: Sequence[Row], workload: str, system: str, metric: str) -> float | None:
    for row in rows:
        if row["workload"] == workload and row["system"] == system and row["metric"] == metric:
            return float(row["value"])
    return None


def _target(
    name: str, value: float | None, limit: float, op: str, *, shown: str, detail: str = ""
) -> dict[str, Any] | None:
    if value is None:
        return None
    met = value >= limit if op == ">=" else value <= limit
    return {
        "target": name,
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


def targets(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """The issue's targets for KeyedDispatcher, evaluated on ``rows`` (one run).

    A target whose rows are missing (a partial run) is left out.
    """

    def get(workload: str, system: str, metric: str) -> float | None:
        return _find(rows, workload, system, metric)

    found: list[dict[str, Any] | None] = []
    for workload, limit in (("noop-uniform", 1.0), ("noop-one-key", 1.2)):
        ours, tpe = get(workload, OURS, "throughput"), get(workload, "tpe", "throughput")
        ratio = _ratio(ours, tpe)
        cpu = _ratio(get(workload, OURS, "per CPU second"), get(workload, "tpe", "per CPU second"))
        found.append(
            _target(
                f"{workload} throughput >= {limit:.1f} x tpe",
                ratio,
                limit,
                ">=",
                shown=f"{ratio or 0:.2f} x tpe",
                detail=f"{ours or 0:,.0f} vs {tpe or 0:,.0f} jobs/s"
                + (f"; per CPU second {cpu:.2f} x tpe" if cpu is not None else ""),
            )
        )
    for workload, limit in (("hot", 1.15), ("mild", 1.12)):
        value = get(workload, OURS, "makespan/bound")
        extra = [
            f"{label} {other:.3f}"
            for label, other in (
                ("sleep floor", get(workload, "floor", "makespan/bound")),
                ("hashed", get(workload, "hashed", "makespan/bound")),
                ("tpe, unordered", get(workload, "tpe", "makespan/bound")),
                ("keyed: mean sleep", get(workload, OURS, "mean sleep / nominal")),
                ("workers busy", get(workload, OURS, "workers busy")),
                ("hot-key hand-offs", get(workload, OURS, "hot-key hand-offs/bound")),
            )
            if other is not None
        ]
        found.append(
            _target(
                f"{workload} makespan / bound <= {limit:.2f}",
                value,
                limit,
                "<=",
                shown=f"{value or 0:.3f}",
                detail=", ".join(extra),
            )
        )
    for metric in ("p50", "p99"):
        ours, tpe = get("latency", OURS, metric), get("latency", "tpe", metric)
        ratio = _ratio(ours, tpe)
        found.append(
            _target(
                f"latency {metric} <= tpe's",
                ratio,
                1.0,
                "<=",
                shown=f"{ratio or 0:.2f} x tpe",
                detail=f"{ours or 0:.1f} vs {tpe or 0:.1f} us",
            )
        )
    active = get("memory", OURS, "active key")
    found.append(_target("memory per active key <= 200 B", active, 200.0, "<=", shown=f"{active or 0:.0f} B"))
    idle = get("memory", OURS, "idle key")
    # tracemalloc averages over thousands of keys: under half a byte is nothing.
    found.append(
        _target(
            "memory per idle key = 0 B", idle, 0.5, "<=", shown=f"{idle or 0:.1f} B", detail="met below 0.5 B"
        )
    )
    retained = get("churn", OURS, "retained")
    per_key = get("churn", OURS, "retained/key")
    found.append(
        _target(
            "churn: memory back to its start",
            retained,
            float(CHURN_SLACK_BYTES),
            "<=",
            shown=f"+{retained or 0:,.0f} B",
            detail=f"{per_key or 0:.3g} B per key; met up to {CHURN_SLACK_BYTES:,} B "
            "(a bounded table, not a cost per key)",
        )
    )
    multi = get("multi", OURS, "multi/single")
    found.append(
        _target(
            "multi (2-3 keys) >= 0.7 x single-key",
            multi,
            0.7,
            ">=",
            shown=f"{multi or 0:.2f} x single",
            detail=f"per CPU second {get('multi', OURS, 'multi/single per CPU-s') or 0:.2f}; "
            f"locks {get('multi', 'locks', 'multi/single') or 0:.2f}",
        )
    )
    for metric in ("inversions", "overlaps"):
        value = get("order", OURS, metric)
        found.append(
            _target(
                f"order: 0 same-key {metric}",
                value,
                0.0,
                "<=",
                shown=f"{value or 0:.0f}",
                detail=f"locks {get('order', 'locks', metric) or 0:.0f}, "
                f"tpe {get('order', 'tpe', metric) or 0:.0f}",
            )
        )
    found += _async_targets(rows)
    return [target for target in found if target is not None]


def _async_targets(rows: Sequence[Row]) -> list[dict[str, Any] | None]:
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
            _target(
                f"{workload}: ad.run >= 1.0 x lock-map",
                ratio,
                1.0,
                ">=",
                shown=f"{ratio or 0:.2f} x lock-map",
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
    if workload in ("noop-uniform", "noop-one-key", "latency"):
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


def table(results: dict[str, Any]) -> str:
    """The terminal table: values per system and workload, ratios, targets."""
    rows: list[Row] = results["rows"]
    thread_systems = [s for s in results["params"]["systems"] if any(r["system"] == s for r in rows)]
    if any(r["system"] == "floor" for r in rows):
        thread_systems.append("floor")
    thread_rows = [r for r in rows if r["system"] in thread_systems]
    other_rows = [r for r in rows if r["system"] not in thread_systems]
    machine = results["machine"]
    out = [
        f"keyed_dispatch bench ({results['size']} run, {results['duration_s']} s) on {machine['nproc']} x "
        f"{machine['cpu_model']}, Python {machine['python']}",
        "",
    ]
    if thread_rows:
        out += _matrix(thread_rows, thread_systems, with_ratio=True)
    info = results.get("info", {})
    for workload in ("hot", "mild"):
        if workload in info:
            details = info[workload]
            out.append(
                f"{workload}: {details['jobs']:,} jobs on {details['keys_used']} keys, hottest key "
                f"{details['hottest_key_jobs']} jobs; bound {details['bound_s']:.3f} s "
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
    found = results["targets"]
    if found:
        out += ["", "Targets for KeyedDispatcher (issue 5), ratios within this run:", ""]
        width = max(len(t["target"]) for t in found)
        shown_width = max(len(t["shown"]) for t in found)
        for t in found:
            status = "met" if t["met"] else "NOT MET"
            detail = f"  ({t['detail']})" if t["detail"] else ""
            out.append(f"  {t['target'].ljust(width)}  {t['shown'].rjust(shown_width)}  {status:7}{detail}")
        met = sum(1 for t in found if t["met"])
        out.append(f"\n  {met} of {len(found)} targets met.")
    for note in results["notes"]:
        out.append(f"note: {note}")
    return "\n".join(out)


def _short(value: float, unit: str) -> str:
    if unit == "jobs/s":
        return f"{value / 1000:.0f}k"
    if unit == "x":
        return f"{value:.2f}"
    return f"{value:.0f}"


def to_json(results: dict[str, Any]) -> str:
    """The results document as indented JSON."""
    return json.dumps(results, indent=2, sort_keys=False) + "\n"


def chart(results: dict[str, Any], path: Path) -> str:
    """Draw throughput, makespan / bound and latency per system to ``path`` (PNG).

    Returns a line saying what was done: the chart is skipped, with that
    reason, when matplotlib (the ``bench`` extra) is not installed.
    """
    try:
        # Optional (the ``bench`` extra): mypy may run where it is missing.
        import matplotlib as mpl  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415

        mpl.use("Agg")
        import matplotlib.pyplot as plt  # type: ignore[import-not-found,unused-ignore]  # noqa: PLC0415
    except ImportError:
        return "chart skipped: matplotlib is not installed (pip install -e '.[bench]')"
    rows: list[Row] = results["rows"]
    systems = [s for s in results["params"]["systems"] if any(r["system"] == s for r in rows)]
    colors = {
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

    def values(workload: str, metric: str, names: Sequence[str]) -> list[float | None]:
        return [_find(rows, workload, name, metric) for name in names]

    # (title, unit, bar groups as (workload, metric, label), systems, target
    # segments as (group index, value, label))
    panels: list[tuple[str, str, list[tuple[str, str, str]], Sequence[str], list[tuple[int, float, str]]]] = [
        (
            "Throughput (jobs/s, higher is better)",
            "jobs/s",
            [
                ("noop-uniform", "throughput", "noop-uniform"),
                ("noop-one-key", "throughput", "noop-one-key"),
                ("multi", "single-key", "multi: 1 key"),
                ("multi", "2-3 keys", "multi: 2-3 keys"),
            ],
            systems,
            [],
        ),
        (
            "Makespan / lower bound (lower is better)",
            "x",
            [("hot", "makespan/bound", "hot (Zipf 1.1)"), ("mild", "makespan/bound", "mild (Zipf 0.6)")],
            [*systems, "floor"],
            [(0, 1.15, "target 1.15"), (1, 1.12, "target 1.12")],
        ),
        (
            "Submit-to-start latency (us, lower is better)",
            "us",
            [("latency", "p50", "p50"), ("latency", "p99", "p99")],
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
                "asyncio: jobs per CPU second (higher is better)",
                "jobs/s",
                [(workload, "throughput", workload) for workload in async_workloads],
                ["bare", "lock-map", "ad.run", "ad.submit"],
                [],
            )
        )
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.8))
    for axis, (title, unit, groups, names, lines) in zip(axes, panels, strict=True):
        width = 0.8 / max(1, len(names))
        for index, name in enumerate(names):
            heights: list[float] = []
            positions: list[float] = []
            for group_index, (workload, metric, _label) in enumerate(groups):
                value = values(workload, metric, [name])[0]
                if value is not None:
                    heights.append(value)
                    positions.append(group_index + (index - (len(names) - 1) / 2) * width)
            if heights:
                bars = axis.bar(positions, heights, width, label=name, color=colors.get(name))
                labels = [_short(height, unit) for height in heights]
                axis.bar_label(bars, labels=labels, fontsize=6, padding=1)
        for group_index, value, label in lines:
            axis.hlines(value, group_index - 0.45, group_index + 0.45, linestyles="--", color="#b00020")
            axis.annotate(
                label, (group_index - 0.45, value), fontsize=7, ha="left", va="top", color="#b00020"
            )
        axis.set_xticks(range(len(groups)), [label for _, _, label in groups], fontsize=8)
        axis.set_title(title, fontsize=10)
        axis.set_ylabel(unit)
        axis.legend(fontsize=8)
        axis.grid(axis="y", alpha=0.3)
    machine = results["machine"]
    figure.suptitle(
        f"keyed_dispatch bench ({results['size']} run): {machine['nproc']} x {machine['cpu_model']}, "
        f"Python {machine['python']}, 8 workers",
        fontsize=10,
    )
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return f"wrote {path}"
