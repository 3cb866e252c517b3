"""The harness of the PostgreSQL comparison (benchmarks/bench_procrastinate.py), without the peer.

Nothing here asserts on timings. Checked: the order checker finds each kind
of violation, the jobs' records cross a pipe whole, the table says which
goals were met, runs merge, CPU times are read from /proc, and one small
drain on our side runs end to end (procrastinate is not needed).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any

import pytest

from benchmarks import bench_procrastinate as bench
from benchmarks import pg_runner

Record = pg_runner.Record


def records(order: list[tuple[int, int]], *, gap: int = 10) -> list[Record]:
    """Records of jobs run back to back in ``order``, each 5 ns long, ``gap`` ns apart."""
    return [(key, seq, n * gap, n * gap + 5, 1) for n, (key, seq) in enumerate(order)]


def test_plan_goes_round_robin_and_numbers_each_keys_jobs() -> None:
    assert pg_runner.plan(5, 2) == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2)]
    assert pg_runner.plan(3, 1) == [(0, 0), (0, 1), (0, 2)]


def test_check_order_accepts_runs_in_order_interleaved_across_keys() -> None:
    expected = pg_runner.plan(6, 2)
    assert bench.check_order(records(expected), expected) == []
    # Other keys may run in any order relative to each other, and at once.
    parallel = [(0, 0, 0, 50, 1), (1, 0, 10, 20, 2), (1, 1, 20, 30, 2), (0, 1, 50, 60, 1)]
    assert bench.check_order(parallel, pg_runner.plan(4, 2)) == []


def test_check_order_finds_a_job_that_overtook_its_key() -> None:
    expected = pg_runner.plan(3, 1)
    found = bench.check_order(records([(0, 0), (0, 2), (0, 1)]), expected)
    assert found == ["key 0: seq 1 started after seq 2"]


def test_check_order_finds_overlapping_jobs_of_one_key() -> None:
    overlapping: list[Record] = [(0, 0, 0, 2_000_000, 1), (0, 1, 1_000_000, 3_000_000, 2)]
    found = bench.check_order(overlapping, pg_runner.plan(2, 1))
    assert found == ["key 0: seq 1 started 1.000 ms before seq 0 ended"]


def test_check_order_finds_lost_repeated_and_unknown_jobs() -> None:
    expected = pg_runner.plan(4, 2)
    ran = records([(0, 0), (1, 0), (1, 0), (0, 1), (2, 0)])
    found = bench.check_order(ran, expected)
    assert "key 1 seq 1: never ran" in found
    assert "key 1 seq 0: ran 2 times" in found
    assert "key 2 seq 0: was not submitted" in found


def test_a_job_record_crosses_the_pipe_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    try:
        monkeypatch.setenv("KD_BENCH_RECORD_FD", str(write_end))
        monkeypatch.setattr(pg_runner, "_fd", None)
        pg_runner.noop(3, 7)
        data = os.read(read_end, 1024)
    finally:
        os.close(read_end)
        os.close(write_end)
    key, seq, start, end, pid = pg_runner.RECORD.unpack(data)
    assert (key, seq, pid) == (3, 7, os.getpid())
    assert 0 < start <= end


def test_cpu_times_are_read_from_proc() -> None:
    if not Path("/proc/self/stat").exists():
        pytest.skip("no /proc on this system")
    own = bench.process_cpu(os.getpid())
    assert own >= 0
    # Read later, and with the children: never less.
    assert bench.tree_cpu(os.getpid()) >= own


def row(workload: str, system: str, metric: str, value: float, unit: str, **extra: Any) -> dict[str, Any]:
    return {
        "workload": workload,
        "system": system,
        "metric": metric,
        "unit": unit,
        "value": value,
        "runs": [value],
        **extra,
    }


def results(rows: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "size": "quick",
        "date": "2026-01-01T00:00:00+00:00",
        "duration_s": 10.0,
        "machine": {"nproc": 2, "cpu_model": "a CPU", "python": "3.13.0"},
        "versions": {
            "keyed_dispatch": "0.2.0",
            "commit": "abc1234",
            "procrastinate": "3.10.0",
            "peer_psycopg": "3.3.9",
            "postgres": "18.0",
            "server": "embedded",
        },
        "params": {
            "reps": 1,
            "concurrency": 8,
            "peer_poll": 0.01,
            "peer_poll_one_key": 0.001,
            "workloads": [],
        },
        "rows": rows,
        "notes": [],
    }


FULL_ROWS = [
    row("noop-keys", "ours", "throughput", 3000.0, "jobs/s", workers=1),
    row("noop-keys", "peer", "throughput", 500.0, "jobs/s", workers=1),
    row("noop-keys", "ours", "throughput", 2900.0, "jobs/s", workers=2),
    row("noop-keys", "peer", "throughput", 1000.0, "jobs/s", workers=2),
    row("noop-one-key", "ours", "throughput", 900.0, "jobs/s", workers=2),
    row("noop-one-key", "peer", "throughput", 100.0, "jobs/s", workers=2),
    row("io", "ours", "throughput", 700.0, "jobs/s", workers=2),
    row("io", "peer", "throughput", 600.0, "jobs/s", workers=2),
    row("io", "ours", "server CPU/job", 0.5, "ms", workers=2),
    row("io", "peer", "server CPU/job", 0.4, "ms", workers=2),
    row("io", "ours", "process CPU/job", 0.2, "ms", workers=2),
    row("io", "peer", "process CPU/job", 1.0, "ms", workers=2),
    row("submit", "ours", "per job", 2000.0, "jobs/s"),
    row("submit", "peer", "per job", 1000.0, "jobs/s"),
    row("submit", "ours", "batch", 20000.0, "jobs/s"),
    row("submit", "peer", "batch", 8000.0, "jobs/s"),
    row("order", "ours", "violations", 0, "jobs"),
    row("order", "peer", "violations", 0, "jobs"),
]


def test_goals_say_which_comparisons_met_their_goal() -> None:
    lines = {line.label: line for line in bench.goals(FULL_ROWS)}
    assert lines["no-op, 64 keys, 1 worker"].ratio == "6.00 x"
    assert lines["no-op, 64 keys, 1 worker"].met is True
    assert lines["no-op, 64 keys, 2 workers"].met is False  # 2.9 x < 3.0 x
    assert lines["no-op, 64 keys, ours from 1 worker to 2"].met is False  # 3000 -> 2900
    assert lines["no-op, one key, 2 workers"].met is True
    assert lines["20 ms jobs, 64 keys, 2 workers"].met is True
    assert lines["20 ms jobs: server CPU per job"].met is False
    assert lines["20 ms jobs: submitter + worker CPU per job"].met is True
    assert lines["submit from one process, one call per job"].met is None  # reported, no goal
    assert lines["submit from one process, one batch"].met is True
    assert lines["order or exclusion violations, all drain runs"].met is True


def test_table_prints_each_goal_and_the_count_met() -> None:
    text = bench.table(results(FULL_ROWS))
    assert "PostgreSQL 18.0 (embedded); procrastinate 3.10.0" in text
    line = next(line for line in text.splitlines() if line.startswith("no-op, 64 keys, 1 worker "))
    assert re.search(r"6\.00 x +goal: >= 3\.0 x +met$", line), line
    assert re.search(r"goal: >= 10,000 jobs/s +met$", text, re.MULTILINE)
    assert "6 of 9 goals met." in text


def test_a_missing_submit_many_is_named_in_its_row() -> None:
    rows = [r for r in FULL_ROWS if not (r["system"] == "ours" and r["metric"] == "batch")]
    text = bench.table(results(rows))
    line = next(line for line in text.splitlines() if line.startswith("submit from one process, one batch"))
    assert "submit_many: not available" in line
    assert line.endswith("goal: >= 10,000 jobs/s")  # neither met nor not met


def test_runs_merge_each_workload_once_and_add_up_violations() -> None:
    first = results([*FULL_ROWS[:4], row("order", "ours", "violations", 0, "jobs")])
    third = results([row("noop-keys", "ours", "throughput", 1.0, "jobs/s", workers=4), FULL_ROWS[0]])
    second = results([*FULL_ROWS[4:6], row("order", "ours", "violations", 2, "jobs"), FULL_ROWS[0]])
    merged = bench.merge([first, second, third])
    noop = [r for r in merged["rows"] if r["workload"] == "noop-keys"]
    assert noop == [*FULL_ROWS[:4], third["rows"][0]]
    assert [r for r in merged["rows"] if r["workload"] == "noop-one-key"] == FULL_ROWS[4:6]
    (order,) = (r for r in merged["rows"] if r["workload"] == "order")
    assert (order["value"], order["runs"]) == (2, [0, 2])
    assert merged["duration_s"] == 30.0


def test_runs_of_different_sizes_are_not_merged() -> None:
    with pytest.raises(ValueError, match="full, quick"):
        bench.merge([results(FULL_ROWS), {**results(FULL_ROWS), "size": "full"}])


@pytest.mark.slow
def test_chart_is_drawn(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    path = tmp_path / "chart.png"
    assert bench.chart(results(FULL_ROWS), path) == f"wrote {path}"
    assert path.read_bytes().startswith(b"\x89PNG")


@pytest.mark.slow
def test_a_small_drain_on_our_side_runs_in_order(pg_dsn: str) -> None:
    side = bench.Side(bench.OURS, sys.executable)
    drained = bench.drain(side, pg_dsn, bench.server_pid(pg_dsn), jobs=30, keys=3, workers=2, concurrency=2)
    assert drained.violations == ()
    assert drained.jobs == 30
    assert drained.worker_cpu >= 0
    assert drained.server_ms_per_job is not None
