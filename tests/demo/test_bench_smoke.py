"""The benchmark suite runs (smallest configuration) and writes its documents.

Nothing here asserts on timings: the machine is shared and noisy. What is
checked is that every workload ran on every system that supports it, the
JSON has the shape the README and the replot read, and the one correctness
figure of the suite, KeyedDispatcher's same-key order, is clean. The suite
lives in the checkout (``python -m benchmarks.suite``, ``make bench``), not
in the package.
"""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]

ROW_FIELDS = {"workload", "system", "metric", "value", "unit", "runs"}
THREAD_SYSTEMS = {"tpe", "locks", "hashed", "keyed"}


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    return importlib.import_module("benchmarks.suite")


@pytest.fixture(scope="module")
def smoke_run(suite: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    status = suite.main(["--size", "smoke", "--quiet", "--no-chart", "--out", str(out)])
    assert status == 0
    document: dict[str, Any] = json.loads(out.read_text(encoding="utf-8"))
    return document, out


def rows_of(document: dict[str, Any], workload: str) -> list[dict[str, Any]]:
    return [row for row in document["rows"] if row["workload"] == workload]


@pytest.mark.slow
def test_smoke_run_covers_every_workload_and_system(smoke_run: tuple[dict[str, Any], Path]) -> None:
    document, _ = smoke_run
    assert document["size"] == "smoke"
    assert {"nproc", "cpu_model", "python"} <= set(document["machine"])
    for row in document["rows"]:
        assert set(row) >= ROW_FIELDS, row
        assert isinstance(row["value"], (int, float))
        assert row["runs"], row
    for workload in ("noop-kept", "noop-uniform", "noop-one-key", "hot", "mild", "latency", "memory"):
        assert {row["system"] for row in rows_of(document, workload)} >= THREAD_SYSTEMS, workload
    assert {row["system"] for row in rows_of(document, "hot")} >= {"floor"}
    # Only the systems that can hold several keys run the multi workload.
    assert {row["system"] for row in rows_of(document, "multi")} == {"locks", "keyed"}
    assert {row["system"] for row in rows_of(document, "churn")} == {"locks", "keyed"}
    assert {"bound_s", "hottest_key_jobs", "floor"} <= set(document["info"]["hot"])


@pytest.mark.slow
def test_smoke_run_keyed_order_is_clean(smoke_run: tuple[dict[str, Any], Path]) -> None:
    document, _ = smoke_run
    order = {(row["system"], row["metric"]): row["value"] for row in rows_of(document, "order")}
    assert order["keyed", "inversions"] == 0
    assert order["keyed", "overlaps"] == 0
    assert order["hashed", "overlaps"] == 0


@pytest.mark.slow
def test_smoke_run_evaluates_the_goals(smoke_run: tuple[dict[str, Any], Path]) -> None:
    document, _ = smoke_run
    assert document["suite"] == "keyed_dispatch benchmarks"
    wants = {goal["goal"]: goal["want"] for goal in document["goals"]}
    assert wants["noop-kept throughput"] == ">= 1.0 x ThreadPoolExecutor"
    assert wants["noop-uniform throughput"] == ">= 1.1 x ThreadPoolExecutor"
    assert wants["memory per queued job"] == "<= 200 B beyond its Future"
    assert wants["hot makespan"] == "<= 1.15 x lower bound"
    assert wants["memory per active key"] == "<= 200 B"
    for goal in document["goals"]:
        assert goal["met"] == (
            goal["value"] >= goal["limit"] if goal["op"] == ">=" else goal["value"] <= goal["limit"]
        )


def test_goals_compare_keyed_with_the_baselines(suite: ModuleType) -> None:
    def row(workload: str, system: str, metric: str, value: float) -> dict[str, Any]:
        return {
            "workload": workload,
            "system": system,
            "metric": metric,
            "value": value,
            "unit": "",
            "runs": [],
        }

    rows = [
        row("noop-uniform", "tpe", "throughput", 100.0),
        row("noop-uniform", "keyed", "throughput", 150.0),
        row("noop-one-key", "tpe", "throughput", 100.0),
        row("noop-one-key", "keyed", "throughput", 110.0),
        row("hot", "keyed", "makespan/bound", 1.2),
        row("mild", "tpe", "makespan/bound", 1.10),
        row("mild", "keyed", "makespan/bound", 1.105),
        row("multi", "keyed", "multi/single", 0.75),
    ]
    found = {goal["goal"]: goal for goal in suite.report.goals(rows)}
    assert found["noop-uniform throughput"]["value"] == pytest.approx(1.5)
    assert found["noop-uniform throughput"]["met"] is True
    assert found["noop-one-key throughput"]["want"] == ">= 1.2 x ThreadPoolExecutor"
    assert found["noop-one-key throughput"]["met"] is False
    assert found["hot makespan"]["met"] is False
    # Mild skew is held to the unordered pool's own figure plus 0.01.
    assert found["mild makespan"]["limit"] == pytest.approx(1.11)
    assert found["mild makespan"]["met"] is True
    assert found["multi-key throughput (2-3 keys)"]["met"] is False
    # Goals without rows (a partial run) are left out, not failed.
    assert "noop-kept throughput" not in found
    rows = [row for row in rows if row["workload"] != "mild" or row["system"] != "tpe"]
    assert "mild makespan" not in {goal["goal"] for goal in suite.report.goals(rows)}


def test_async_goals_read_bench_async_rows(suite: ModuleType) -> None:
    rows = [
        {"workload": "async-hot", "system": "ad.run", "metric": "throughput", "value": 90.0},
        {"workload": "async-hot", "system": "lock-map", "metric": "throughput", "value": 100.0},
        {"workload": "async-io", "system": "ad.run", "metric": "throughput", "value": 50.0},
        {"workload": "async-io", "system": "lock-map", "metric": "throughput", "value": 40.0},
        {"workload": "async-io", "system": "ad.run", "metric": "throughput vs lock-map", "value": 1.3},
    ]
    found = {goal["goal"]: goal for goal in suite.report.goals(rows)}
    hot, io = found["async-hot: AsyncKeyedDispatcher.run"], found["async-io: AsyncKeyedDispatcher.run"]
    assert hot["want"] == ">= 1.0 x asyncio.Lock per key"
    assert hot["value"] == pytest.approx(0.9)
    assert hot["met"] is False
    # bench_async's own ratio row (of medians) wins over the ratio of rows.
    assert io["value"] == pytest.approx(1.3)
    assert io["met"] is True


@pytest.mark.slow
def test_table_says_what_was_compared_and_frames_the_goals(
    suite: ModuleType, smoke_run: tuple[dict[str, Any], Path]
) -> None:
    document, _ = smoke_run
    text = suite.report.table(document)
    first, second = text.splitlines()[:2]
    assert first.startswith("keyed_dispatch benchmarks, smoke run")
    assert document["machine"]["python"] in first
    assert "worker threads" in first
    assert second.startswith("KeyedDispatcher against ThreadPoolExecutor, lock per key and hashed executors")
    assert "BookKeeper's OrderedExecutor" in text
    assert "noop-uniform" in text
    assert "x tpe" in text
    assert "Goals for KeyedDispatcher" in text
    assert "goal: >= 1.0 x ThreadPoolExecutor" in text
    assert "goals met" in text
    for word in ("issue", "target", "seed"):
        assert word not in text.lower()


@pytest.mark.slow
def test_chart_is_drawn_when_matplotlib_is_installed(
    suite: ModuleType, smoke_run: tuple[dict[str, Any], Path], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    document, _ = smoke_run
    path = tmp_path / "chart.png"
    assert suite.report.chart(document, path) == f"wrote {path}"
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_replot_prints_the_table_of_a_saved_run(
    suite: ModuleType, smoke_run: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = smoke_run
    capsys.readouterr()
    assert suite.main(["--replot", str(path), "--no-chart"]) == 0
    out = capsys.readouterr().out
    assert "smoke run" in out
    assert "Goals for KeyedDispatcher" in out


@pytest.mark.slow
def test_profile_paths_runs(suite: ModuleType, capsys: pytest.CaptureFixture[str]) -> None:
    import importlib

    profile_paths = importlib.import_module("benchmarks.profile_paths")
    argv = ["--jobs", "200", "--reps", "1", "--top", "3", "--system", "keyed", "--workload", "noop-one-key"]
    assert profile_paths.main(argv) == 0
    out = capsys.readouterr().out
    if profile_paths.PER_THREAD_PROFILES:
        assert "keyed: submitting thread (cProfile)" in out
        assert "keyed: worker threads, merged (cProfile)" in out
    else:  # Python 3.12+: cProfile is process-wide
        assert "keyed: all threads, wall time (cProfile)" in out
        assert "worker threads, merged" not in out


def test_committed_full_run_replots_with_the_current_goals(
    suite: ModuleType, capsys: pytest.CaptureFixture[str]
) -> None:
    # The README's table and docs/bench.png come from this file, redrawn
    # without measuring (--replot).
    assert suite.main(["--replot", str(ROOT / "benchmarks" / "results-full.json"), "--no-chart"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("keyed_dispatch benchmarks, full run")
    document = json.loads((ROOT / "benchmarks" / "results-full.json").read_text(encoding="utf-8"))
    goals = suite.report.goals(document["rows"])
    assert f"{sum(goal['met'] for goal in goals)} of {len(goals)} goals met." in out


@pytest.mark.slow
def test_suite_runs_as_a_module_from_the_checkout() -> None:
    # What `make bench` runs; --help measures nothing.
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks.suite", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: python -m benchmarks.suite")
    assert "OrderedExecutor" in done.stdout  # the help names the baselines


def test_the_metrics_benchmark_prints_a_ratio_per_workload(capsys: pytest.CaptureFixture[str]) -> None:
    bench = importlib.import_module("benchmarks.bench_metrics")
    assert bench.main(["--jobs", "200", "--reps", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["workload", "off", "jobs/s", "on", "jobs/s", "on/off"]
    assert [line.split()[0] for line in lines[1:-1]] == ["thread-noop", "async-run", "async-submit"]
    for line in lines[1:-1]:
        assert float(line.split()[-1]) > 0
    assert lines[-1].startswith("worst on/off ratio ")
    assert "(200 jobs, 1 reps)" in lines[-1]
