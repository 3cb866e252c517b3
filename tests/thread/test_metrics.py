"""KeyedDispatcher(metrics=True): the histograms of stats(), and the two exporters over it.

Waits and run times are only asserted where they are bounded below by
construction (a job that sleeps 30 ms runs at least that long; the job
queued behind it waits at least that long); counts are exact.
"""

from __future__ import annotations

import json
import logging
import threading
import time

import pytest

from keyed_dispatch import KeyedDispatcher, Retry, StartTimeout
from tests.helpers import WAIT, Gates, MakeDispatcher, settle, wait_until
from tests.metrics_support import check_otel, check_prometheus, otel_points, scrape, value

WORK = 0.03  # seconds a slow job sleeps: its run time, and its successor's wait, are at least this


def noop() -> None:
    return None


def fail(kind: type[Exception]) -> None:
    raise kind("boom")


def workload(d: KeyedDispatcher, gates: Gates) -> None:
    """7 jobs start (a block included), 3 fail, 1 is cancelled, 1 times out."""
    gate = gates.new()

    def slow() -> None:
        gate.wait(WAIT)
        time.sleep(WORK)

    first = d.submit("k", slow)
    second = d.submit("k", noop)  # admitted before the gate opens: waits >= WORK
    cancelled = d.submit("k", noop)
    assert cancelled.cancel()
    expired = d.options(start_timeout=0.001).submit("k", noop)
    assert isinstance(expired.exception(timeout=WAIT), StartTimeout)
    gate.set()
    first.result(timeout=WAIT)
    second.result(timeout=WAIT)
    d.submit("other", noop).result(timeout=WAIT)
    for kind in (ValueError, KeyError, KeyError):
        assert isinstance(d.submit("x", fail, kind).exception(timeout=WAIT), kind)
    with d.exclusive(["k"]):
        pass
    settle(d)


def test_stats_have_the_histograms_and_the_outcomes(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    d = make_dispatcher(4, metrics=True)
    assert d.metrics
    workload(d, gates)
    stats = d.stats()
    assert stats.wait is not None
    assert stats.run is not None
    assert (stats.completed, stats.failed, stats.cancelled, stats.timed_out) == (4, 3, 1, 1)
    assert stats.failures == (("KeyError", 2), ("ValueError", 1))
    assert stats.wait.count == stats.run.count == 7  # the jobs that started, the block included
    assert sum(stats.wait.counts) == 7
    # At least one run (the slow job) and one wait (its successor) above 20 ms.
    assert stats.run.count - dict(stats.run.buckets)[0.02] >= 1
    assert stats.wait.count - dict(stats.wait.buckets)[0.02] >= 1
    assert stats.run.sum >= WORK
    assert stats.wait.sum >= WORK
    assert stats.run.quantile(1.0) >= 0.02
    assert stats.max_wait_s >= WORK
    encoded = json.loads(json.dumps(stats.as_dict()))
    assert encoded["wait"]["count"] == 7
    assert encoded["failures"] == [["KeyError", 2], ["ValueError", 1]]


def test_every_attempt_of_a_retried_job_is_a_run_and_its_wait_counts_once(
    make_dispatcher: MakeDispatcher,
) -> None:
    d = make_dispatcher(2, metrics=True)
    attempts: list[int] = []

    def flaky() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionError("again")
        return "ok"

    assert d.options(retry=Retry(attempts=3, backoff=0.0, jitter=0.0)).submit("r", flaky).result(WAIT) == "ok"
    settle(d)
    stats = d.stats()
    assert stats.wait is not None
    assert stats.run is not None
    assert (stats.wait.count, stats.run.count, stats.retries, stats.completed, stats.failed) == (
        1,
        3,
        2,
        1,
        0,
    )
    assert stats.failures == ()  # retried attempts are not failed jobs


def test_without_metrics_there_are_no_histograms(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    d.submit("k", noop).result(timeout=WAIT)
    d.submit("k", fail, ValueError).exception(timeout=WAIT)
    settle(d)
    stats = d.stats()
    assert (d.metrics, stats.wait, stats.run) == (False, None, None)
    assert stats.failures == (("ValueError", 1),)  # failures by type are always counted
    with pytest.raises(TypeError, match="metrics must be a bool"):
        KeyedDispatcher(2, metrics="yes")  # type: ignore[arg-type]


def test_the_start_log_lines_carry_fields_for_json_handlers(
    make_dispatcher: MakeDispatcher, caplog: pytest.LogCaptureFixture
) -> None:
    d = make_dispatcher(2, wait_warning=0)  # every start is "late"
    with caplog.at_level(logging.DEBUG, logger="keyed_dispatch"):
        d.submit(("a", 1), noop).result(timeout=WAIT)
        with d.exclusive(["b", "c"]):
            pass
    records = [r for r in caplog.records if r.name == "keyed_dispatch"]
    assert [r.levelno for r in records] == [logging.DEBUG, logging.WARNING] * 2
    for record, keys in zip(records, [["('a', 1)"]] * 2 + [["b", "c"]] * 2, strict=True):
        assert record.keys == keys  # type: ignore[attr-defined]
        assert isinstance(record.wait_s, float)  # type: ignore[attr-defined]
        assert isinstance(record.job_seq, int)  # type: ignore[attr-defined]
        json.dumps({"keys": record.keys, "wait_s": record.wait_s, "seq": record.job_seq})  # type: ignore[attr-defined]
    assert records[0].job_seq == records[1].job_seq == 0  # type: ignore[attr-defined]
    assert records[2].job_seq == 1  # type: ignore[attr-defined]
    assert records[0].getMessage().startswith("started job for ('a', 1) (waited ")


def backlog(d: KeyedDispatcher, gates: Gates) -> threading.Event:
    """hot: a running job and 3 queued; warm: a running job and 1 queued. Returns the gate."""
    gate = gates.new()
    for key, queued in (("hot", 3), ("warm", 1)):
        d.submit(key, gate.wait, WAIT)
        for _ in range(queued):
            d.submit(key, noop)
    return gate


def test_prometheus_scrape_matches_stats(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from keyed_dispatch.metrics import PrometheusCollector

    d = make_dispatcher(4, metrics=True, name="orders")
    other = make_dispatcher(2, metrics=True, name="audit")
    registry = CollectorRegistry()
    registry.register(PrometheusCollector([d, other], top_keys=1))
    gate = backlog(d, gates)
    wait_until(lambda: d.stats().running == 2, what="the gated jobs to start")
    samples, types = scrape(registry)
    assert value(samples, "keyed_dispatch_jobs_pending", dispatcher="orders") == 4
    assert value(samples, "keyed_dispatch_jobs_running", dispatcher="orders") == 2
    assert value(samples, "keyed_dispatch_keys_active", dispatcher="orders") == 2
    depth = {
        dict(labels)["key"]: v for (name, labels), v in samples.items() if name == "keyed_dispatch_key_depth"
    }
    assert depth == {"hot": 4}  # top_keys=1: the deepest key only
    gate.set()
    workload(d, gates)
    settle(d)
    samples, types = scrape(registry)
    check_prometheus(samples, types, d.stats(), "orders")
    check_prometheus(samples, types, other.stats(), "audit")
    assert value(samples, "keyed_dispatch_jobs_total", dispatcher="orders", outcome="completed") == 10


def test_prometheus_collector_refuses_what_it_cannot_export(make_dispatcher: MakeDispatcher) -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry

    from keyed_dispatch.metrics import PrometheusCollector

    with pytest.raises(ValueError, match="create it with metrics=True"):
        PrometheusCollector(make_dispatcher(1))
    twins = [make_dispatcher(1, metrics=True, name="same") for _ in range(2)]
    with pytest.raises(ValueError, match="share the name 'same'"):
        PrometheusCollector(twins)
    with pytest.raises(ValueError, match="no dispatcher"):
        PrometheusCollector([])
    with pytest.raises(TypeError, match="expected a KeyedDispatcher"):
        PrometheusCollector(["not a dispatcher"])
    with pytest.raises(ValueError, match="top_keys must be >= 0"):
        PrometheusCollector(twins[0], top_keys=-1)
    # describe() names the families: a second collector of the same names is refused.
    registry = CollectorRegistry()
    registry.register(PrometheusCollector(twins[0]))
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        registry.register(PrometheusCollector(twins[1]))


def test_opentelemetry_instruments_match_stats(make_dispatcher: MakeDispatcher, gates: Gates) -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from keyed_dispatch.metrics import instrument_meter

    d = make_dispatcher(4, metrics=True, name="orders")
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    try:
        instrument_meter(d, provider.get_meter("test"), top_keys=2)
        gate = backlog(d, gates)
        wait_until(lambda: d.stats().running == 2, what="the gated jobs to start")
        points, _ = otel_points(reader)
        depth = {
            dict(labels)["key"]: v
            for (name, labels), v in points.items()
            if name == "keyed_dispatch.key.depth"
        }
        assert depth == {"hot": 4, "warm": 2}
        gate.set()
        workload(d, gates)
        settle(d)
        points, units = otel_points(reader)
        check_otel(points, units, d.stats(), "orders")
    finally:
        provider.shutdown()
