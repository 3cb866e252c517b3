"""PrometheusCollector: a dispatcher's figures as Prometheus metric families."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

try:
    from prometheus_client.core import (
        CounterMetricFamily,
        GaugeHistogramMetricFamily,
        GaugeMetricFamily,
        HistogramMetricFamily,
        Metric,
    )
except ImportError:
    raise ImportError(
        "keyed_dispatch.metrics.PrometheusCollector needs prometheus_client: pip install "
        "'keyed_dispatch[prometheus]' (from a checkout: pip install -e '.[prometheus]')"
    ) from None

from keyed_dispatch._histogram import HistogramSnapshot

from ._source import OUTCOMES, Reading, le_text, sources

__all__ = ["PrometheusCollector"]

_LABEL = "dispatcher"


class PrometheusCollector:
    """A ``prometheus_client`` collector of one or more dispatchers.

    Register it on a registry: ``registry.register(PrometheusCollector(d))``.
    Each scrape (``collect``) takes one snapshot per dispatcher; nothing is
    recorded per job beyond the dispatcher's own histograms. Every sample
    has the label ``dispatcher`` (the dispatcher's ``name``):

    * ``keyed_dispatch_jobs_total{outcome}``: finished jobs, by outcome
      (``completed``, ``failed``, ``cancelled``, ``timed_out``,
      ``superseded``); ``keyed_dispatch_job_failures_total{exception}``:
      failed jobs by exception type name (bounded, see
      :attr:`DispatcherStats.failures`); ``keyed_dispatch_job_retries_total``.
    * ``keyed_dispatch_job_wait_seconds`` and ``keyed_dispatch_job_run_seconds``:
      histograms of the admission-to-start wait and of the run time, with
      the dispatcher's fixed buckets (1 us to 100 s, three per decade).
    * gauges: ``keyed_dispatch_jobs_pending``, ``keyed_dispatch_jobs_running``,
      ``keyed_dispatch_jobs_in_backoff``, ``keyed_dispatch_keys_active``,
      ``keyed_dispatch_keys_halted``, ``keyed_dispatch_keys_paused``, and
      ``keyed_dispatch_key_depth{key}``: the unfinished jobs (running,
      waiting, in backoff) of the ``top_keys`` deepest keys only, so that
      the ``key`` label stays bounded.

    A :class:`~keyed_dispatch.postgres.PostgresDispatcher` is read from the
    database (one query per scrape, over the retained jobs; the label is its
    schema name): the backlog gauges and the depth gauge as above, and,
    since pruned rows make them go down, gauges where an in-process
    dispatcher has counters: ``keyed_dispatch_retained_jobs{outcome}``,
    ``keyed_dispatch_retained_job_failures{exception}`` and the gauge
    histograms ``keyed_dispatch_retained_job_wait_seconds`` and
    ``keyed_dispatch_retained_job_run_seconds``.

    Several dispatchers go in one collector (a metric family may appear
    only once per scrape); their names must differ.

    Args:
        dispatchers: a dispatcher (a KeyedDispatcher or an
            AsyncKeyedDispatcher created with ``metrics=True``, or a
            PostgresDispatcher), or an iterable of them.
        top_keys: how many of the deepest keys get a depth sample.
        timeout: seconds to wait for an AsyncKeyedDispatcher's event loop
            when scraped from another thread; past it the scrape fails.

    Raises:
        ValueError: a dispatcher has ``metrics=False``, two share a name, or
            none is given.
        TypeError: not a dispatcher, or a bad ``top_keys`` or ``timeout``.
    """

    def __init__(self, dispatchers: Any, *, top_keys: int = 10, timeout: float = 5.0) -> None:
        self._sources = sources(dispatchers, top_keys, timeout)
        self._live = any(not source.retained for source in self._sources)
        self._retained = any(source.retained for source in self._sources)

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (lets a registry check names)."""
        return _families([], self._live, self._retained)

    def collect(self) -> Iterator[Metric]:
        """The metric families with one snapshot of every dispatcher."""
        return _families([source.read() for source in self._sources], self._live, self._retained)


def _families(readings: list[Reading], live: bool, retained: bool) -> Iterator[Metric]:
    # ``live``: families of in-process dispatchers; ``retained``: those of
    # PostgreSQL queues, whose figures count the retained jobs (they go
    # down when rows are pruned: gauges, and gauge histograms).
    shared = [
        _gauge("keyed_dispatch_jobs_pending", "Jobs admitted, not started.", "pending"),
        _gauge("keyed_dispatch_jobs_running", "Jobs running now.", "running"),
        _gauge("keyed_dispatch_keys_active", "Keys with unfinished jobs.", "keys_active"),
    ]
    depth = GaugeMetricFamily(
        "keyed_dispatch_key_depth", "Unfinished jobs of the deepest keys.", labels=[_LABEL, "key"]
    )
    jobs = CounterMetricFamily(
        "keyed_dispatch_jobs", "Jobs finished, by outcome.", labels=[_LABEL, "outcome"]
    )
    failures = CounterMetricFamily(
        "keyed_dispatch_job_failures", "Failed jobs, by exception type name.", labels=[_LABEL, "exception"]
    )
    retries = CounterMetricFamily("keyed_dispatch_job_retries", "Retries scheduled.", labels=[_LABEL])
    wait = HistogramMetricFamily(
        "keyed_dispatch_job_wait_seconds", "Wait of a job from admission to its start.", labels=[_LABEL]
    )
    run = HistogramMetricFamily(
        "keyed_dispatch_job_run_seconds", "Run time of a job attempt (or exclusive block).", labels=[_LABEL]
    )
    live_only = [
        _gauge("keyed_dispatch_jobs_in_backoff", "Jobs waiting for a retry.", "in_backoff"),
        _gauge("keyed_dispatch_keys_halted", "Keys halted by a failure.", "keys_halted"),
        _gauge("keyed_dispatch_keys_paused", "Keys paused.", "keys_paused"),
    ]
    kept = GaugeMetricFamily(
        "keyed_dispatch_retained_jobs",
        "Finished jobs retained in the database, by outcome.",
        labels=[_LABEL, "outcome"],
    )
    kept_failures = GaugeMetricFamily(
        "keyed_dispatch_retained_job_failures",
        "Failed jobs retained in the database, by exception type name.",
        labels=[_LABEL, "exception"],
    )
    kept_wait = GaugeHistogramMetricFamily(
        "keyed_dispatch_retained_job_wait_seconds",
        "Wait from submission to start of the retained jobs that started.",
        labels=[_LABEL],
    )
    kept_run = GaugeHistogramMetricFamily(
        "keyed_dispatch_retained_job_run_seconds", "Run time of the retained finished jobs.", labels=[_LABEL]
    )
    for reading in readings:
        name = reading.dispatcher
        for family, field in shared:
            family.add_metric([name], getattr(reading, field))
        for key, count in reading.depths:
            depth.add_metric([name, key], count)
        if reading.retained:
            for outcome, count in zip(OUTCOMES, reading.outcomes, strict=True):
                if outcome != "superseded":  # not a PostgreSQL outcome
                    kept.add_metric([name, outcome], count)
            for exception, count in reading.failures:
                kept_failures.add_metric([name, exception], count)
            kept_wait.add_metric([name], _buckets(reading.wait), reading.wait.sum)
            kept_run.add_metric([name], _buckets(reading.run), reading.run.sum)
            continue
        for outcome, count in zip(OUTCOMES, reading.outcomes, strict=True):
            jobs.add_metric([name, outcome], count)
        for exception, count in reading.failures:
            failures.add_metric([name, exception], count)
        retries.add_metric([name], reading.retries)
        wait.add_metric([name], _buckets(reading.wait), reading.wait.sum)
        run.add_metric([name], _buckets(reading.run), reading.run.sum)
        for family, field in live_only:
            family.add_metric([name], getattr(reading, field))
    if live:
        yield from (jobs, failures, retries, wait, run)
    if retained:
        yield from (kept, kept_failures, kept_wait, kept_run)
    for family, _ in shared:
        yield family
    if live:
        for family, _ in live_only:
            yield family
    yield depth


def _gauge(name: str, documentation: str, field: str) -> tuple[GaugeMetricFamily, str]:
    return GaugeMetricFamily(name, documentation, labels=[_LABEL]), field


def _buckets(histogram: HistogramSnapshot) -> list[tuple[str, float]]:
    # Cumulative counts by upper bound, ending with "+Inf" (the count).
    return [(le_text(bound), count) for bound, count in histogram.buckets]
