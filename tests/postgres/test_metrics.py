"""The exporters over a PostgresDispatcher: figures computed from the database.

Finished jobs, failures and the two histograms count the jobs retained in
the database (pruned after the workers' retention), so they are exported
as gauges and gauge histograms; the backlog gauges mean what they mean
in-process.
"""

from __future__ import annotations

import json

import pytest

pytest.importorskip("psycopg")
pytest.importorskip("prometheus_client")

from keyed_dispatch._histogram import BOUNDS
from keyed_dispatch.postgres import PostgresDispatcher, run_worker
from tests.metrics_support import labelled, le_text, otel_points, scrape, value

pytestmark = pytest.mark.slow


def finished_and_backlog(d: PostgresDispatcher, dsn: str, schema: str) -> None:
    """3 jobs completed, 2 failed (ValueError), then 4 queued on "hot" (one also on "cold")."""
    futures = [d.submit("a", "tests.postgres.tasks:echo", n) for n in range(3)]
    futures += [d.submit("b", "tests.postgres.tasks:boom", "no") for _ in range(2)]
    assert run_worker(dsn, schema=schema, burst=True, wait_warning=None) == 5  # jobs it ran
    for future in futures:
        future.exception(timeout=20)
    for _ in range(3):
        d.submit("hot", "tests.postgres.tasks:echo")
    d.submit_multi(["hot", "cold"], "tests.postgres.tasks:echo")


def test_prometheus_reads_the_queue_from_the_database(pg_dsn: str, pg_schema: str) -> None:
    from prometheus_client import CollectorRegistry

    from keyed_dispatch.metrics import PrometheusCollector

    with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
        registry = CollectorRegistry()
        registry.register(PrometheusCollector(d, top_keys=1))
        finished_and_backlog(d, pg_dsn, pg_schema)
        samples, types = scrape(registry)
    name = pg_schema  # a queue is named after its schema
    assert types["keyed_dispatch_retained_jobs"] == "gauge"
    assert types["keyed_dispatch_retained_job_wait_seconds"] == "histogram"  # a gauge histogram
    assert "keyed_dispatch_jobs" not in types  # no in-process dispatcher: no counters
    assert labelled(samples, "keyed_dispatch_retained_jobs", "outcome", dispatcher=name) == {
        "completed": 3,
        "failed": 2,
        "cancelled": 0,
        "timed_out": 0,
    }
    assert labelled(samples, "keyed_dispatch_retained_job_failures", "exception", dispatcher=name) == {
        "ValueError": 2
    }
    for family in ("keyed_dispatch_retained_job_wait_seconds", "keyed_dispatch_retained_job_run_seconds"):
        buckets = labelled(samples, f"{family}_bucket", "le", dispatcher=name)
        assert list(buckets) == [le_text(bound) for bound in (*BOUNDS, float("inf"))]
        assert list(buckets.values()) == sorted(buckets.values())
        assert buckets["+Inf"] == 5 == value(samples, f"{family}_gcount", dispatcher=name)
        assert value(samples, f"{family}_gsum", dispatcher=name) > 0
    assert value(samples, "keyed_dispatch_jobs_pending", dispatcher=name) == 4
    assert value(samples, "keyed_dispatch_jobs_running", dispatcher=name) == 0
    assert value(samples, "keyed_dispatch_keys_active", dispatcher=name) == 2
    # Keys as stored: their canonical JSON text.
    assert labelled(samples, "keyed_dispatch_key_depth", "key", dispatcher=name) == {json.dumps("hot"): 4}


def test_opentelemetry_reads_the_queue_from_the_database(pg_dsn: str, pg_schema: str) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from keyed_dispatch.metrics import instrument_meter

    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        with PostgresDispatcher(pg_dsn, schema=pg_schema) as d:
            instrument_meter(d, provider.get_meter("test"))
            finished_and_backlog(d, pg_dsn, pg_schema)
            points, units = otel_points(reader)
    finally:
        provider.shutdown()
    name = pg_schema
    assert labelled(points, "keyed_dispatch.retained.jobs", "outcome", dispatcher=name) == {
        "completed": 3,
        "failed": 2,
        "cancelled": 0,
        "timed_out": 0,
    }
    assert value(points, "keyed_dispatch.retained.job.run.count", dispatcher=name) == 5
    assert units["keyed_dispatch.retained.job.wait.sum"] == "s"
    assert value(points, "keyed_dispatch.jobs.pending", dispatcher=name) == 4
    assert labelled(points, "keyed_dispatch.key.depth", "key", dispatcher=name) == {
        json.dumps("hot"): 4,
        json.dumps("cold"): 1,
    }
    assert not labelled(points, "keyed_dispatch.jobs", "outcome", dispatcher=name)  # in-process only
