"""The benchmark suite runs (smallest configuration) and writes its documents.

Nothing here asserts on timings: the machine is shared and noisy. What is
checked is that every workload ran on every system that supports it, the
JSON has the shape the README and the lead's tooling read, and the one
correctness figure of the suite, KeyedDispatcher's same-key order, is clean.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from keyed_dispatch import _bench
from keyed_dispatch.__main__ import main as cli_main

ROW_FIELDS = {"workload", "system", "metric", "value", "unit", "runs"}
THREAD_SYSTEMS = {"tpe", "locks", "hashed", "keyed"}


@pytest.fixture(scope="module")
def suite() -> ModuleType:
    return _bench.load_suite(_bench.find_suite())


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], Path]:
    out = tmp_path_factory.mktemp("bench") / "smoke.json"
    status = _bench.main(["--size", "smoke", "--quiet", "--no-chart", "--out", str(out)])
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
    for workload in ("noop-uniform", "noop-one-key", "hot", "mild", "latency", "memory", "order"):
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
def test_smoke_run_evaluates_the_targets(smoke_run: tuple[dict[str, Any], Path]) -> None:
    document, _ = smoke_run
    names = [target["target"] for target in document["targets"]]
    assert "noop-uniform throughput >= 1.0 x tpe" in names
    assert "hot makespan / bound <= 1.15" in names
    assert "memory per active key <= 200 B" in names
    for target in document["targets"]:
        assert target["met"] == (
            target["value"] >= target["limit"] if target["op"] == ">=" else target["value"] <= target["limit"]
        )


def test_targets_compare_keyed_with_the_baselines(suite: ModuleType) -> None:
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
    ]
    found = {target["target"]: target for target in suite.report.targets(rows)}
    assert found["noop-uniform throughput >= 1.0 x tpe"]["value"] == pytest.approx(1.5)
    assert found["noop-uniform throughput >= 1.0 x tpe"]["met"] is True
    assert found["noop-one-key throughput >= 1.2 x tpe"]["met"] is False
    assert found["hot makespan / bound <= 1.15"]["met"] is False
    # Targets without rows (a partial run) are left out, not failed.
    assert "mild makespan / bound <= 1.12" not in found


def test_async_targets_read_bench_async_rows(suite: ModuleType) -> None:
    rows = [
        {"workload": "async-hot", "system": "ad.run", "metric": "throughput", "value": 90.0},
        {"workload": "async-hot", "system": "lock-map", "metric": "throughput", "value": 100.0},
        {"workload": "async-io", "system": "ad.run", "metric": "throughput", "value": 50.0},
        {"workload": "async-io", "system": "lock-map", "metric": "throughput", "value": 40.0},
        {"workload": "async-io", "system": "ad.run", "metric": "throughput vs lock-map", "value": 1.3},
    ]
    found = {target["target"]: target for target in suite.report.targets(rows)}
    assert found["async-hot: ad.run >= 1.0 x lock-map"]["value"] == pytest.approx(0.9)
    assert found["async-hot: ad.run >= 1.0 x lock-map"]["met"] is False
    # bench_async's own ratio row (of medians) wins over the ratio of rows.
    assert found["async-io: ad.run >= 1.0 x lock-map"]["value"] == pytest.approx(1.3)
    assert found["async-io: ad.run >= 1.0 x lock-map"]["met"] is True


@pytest.mark.slow
def test_table_shows_values_ratios_and_targets(
    suite: ModuleType, smoke_run: tuple[dict[str, Any], Path]
) -> None:
    document, _ = smoke_run
    text = suite.report.table(document)
    assert "noop-uniform" in text
    assert "x tpe" in text
    assert "Targets for KeyedDispatcher" in text


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
    smoke_run: tuple[dict[str, Any], Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _, path = smoke_run
    capsys.readouterr()
    assert _bench.main(["--replot", str(path), "--no-chart"]) == 0
    out = capsys.readouterr().out
    assert "smoke run" in out
    assert "Targets for KeyedDispatcher" in out


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


def test_cli_lists_the_bench_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["--help"]) == 0
    assert "bench" in capsys.readouterr().out


def test_missing_suite_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="source checkout"):
        _bench.find_suite(tmp_path)


def test_a_shadowing_benchmarks_package_is_refused(
    suite: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another checkout's suite cannot be loaded once this one is imported:
    # better an error than measuring with the wrong code.
    other = tmp_path / "benchmarks"
    other.mkdir()
    (other / "suite.py").write_text("", encoding="utf-8")
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(ImportError, match="expected it in"):
        _bench.load_suite(_bench.find_suite(tmp_path))
    assert str(tmp_path) in sys.path


def test_bench_command_without_the_suite_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # As from an installed wheel: no benchmarks/ beside the package.
    real_find = _bench.find_suite
    monkeypatch.setattr(_bench, "find_suite", lambda checkout=None: real_find(tmp_path))
    assert _bench.main(["--quick"]) == 2
    assert "make bench" in capsys.readouterr().err
