"""Helpers for the metrics tests: read what the exporters publish with the real libraries.

A scrape is parsed back with ``prometheus_client.parser``; OpenTelemetry
points are read with the SDK's ``InMemoryMetricReader``. Both come out as
``{(name, labels): value}`` so that a test compares them with ``stats()``.
"""

from __future__ import annotations

import math
from typing import Any

from keyed_dispatch import DispatcherStats, HistogramSnapshot

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]

OUTCOME_FIELDS = ("completed", "failed", "cancelled", "timed_out", "superseded")


def parse_exposition(text: str) -> tuple[Samples, dict[str, str]]:
    """The samples of a Prometheus text exposition, and each family's type."""
    from prometheus_client.parser import text_string_to_metric_families

    samples: Samples = {}
    types: dict[str, str] = {}
    for family in text_string_to_metric_families(text):
        types[family.name] = family.type
        for sample in family.samples:
            key = (sample.name, frozenset(sample.labels.items()))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples, types


def scrape(registry: Any) -> tuple[Samples, dict[str, str]]:
    from prometheus_client import generate_latest

    return parse_exposition(generate_latest(registry).decode())


def otel_points(reader: Any) -> tuple[Samples, dict[str, str]]:
    """The points of one collection of an InMemoryMetricReader, and each instrument's unit."""
    samples: Samples = {}
    units: dict[str, str] = {}
    data = reader.get_metrics_data()
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                units[metric.name] = metric.unit
                for point in metric.data.data_points:
                    samples[(metric.name, frozenset(point.attributes.items()))] = point.value
    return samples, units


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def labelled(samples: Samples, name: str, label: str, **labels: str) -> dict[str, float]:
    """``{label value: sample}`` of the samples of ``name`` that carry ``labels``."""
    found: dict[str, float] = {}
    for (sample_name, sample_labels), sample in samples.items():
        attributes = dict(sample_labels)
        if sample_name == name and label in attributes:
            rest = {k: v for k, v in attributes.items() if k != label}
            if rest == labels:
                found[attributes[label]] = sample
    return found


def le_text(bound: float) -> str:
    return "+Inf" if math.isinf(bound) else repr(bound)


def check_prometheus(samples: Samples, types: dict[str, str], stats: DispatcherStats, name: str) -> None:
    """The scrape says what ``stats`` says (the dispatcher was idle in between)."""
    assert types["keyed_dispatch_jobs"] == "counter"
    assert types["keyed_dispatch_job_wait_seconds"] == "histogram"
    assert types["keyed_dispatch_job_run_seconds"] == "histogram"
    assert types["keyed_dispatch_key_depth"] == "gauge"
    outcomes = labelled(samples, "keyed_dispatch_jobs_total", "outcome", dispatcher=name)
    assert outcomes == {field: getattr(stats, field) for field in OUTCOME_FIELDS}
    failures = labelled(samples, "keyed_dispatch_job_failures_total", "exception", dispatcher=name)
    assert failures == dict(stats.failures)
    assert value(samples, "keyed_dispatch_job_retries_total", dispatcher=name) == stats.retries
    for family, field in [
        ("keyed_dispatch_jobs_pending", "pending"),
        ("keyed_dispatch_jobs_running", "running"),
        ("keyed_dispatch_jobs_in_backoff", "in_backoff"),
        ("keyed_dispatch_keys_active", "active_shards"),
        ("keyed_dispatch_keys_halted", "halted_keys"),
        ("keyed_dispatch_keys_paused", "paused_keys"),
    ]:
        assert value(samples, family, dispatcher=name) == getattr(stats, field), family
    for family, histogram in [
        ("keyed_dispatch_job_wait_seconds", stats.wait),
        ("keyed_dispatch_job_run_seconds", stats.run),
    ]:
        assert histogram is not None
        check_histogram(samples, family, histogram, dispatcher=name)


def check_histogram(samples: Samples, family: str, histogram: HistogramSnapshot, **labels: str) -> None:
    buckets = labelled(samples, f"{family}_bucket", "le", **labels)
    assert buckets == {le_text(bound): count for bound, count in histogram.buckets}
    counts = list(buckets.values())
    assert counts == sorted(counts)  # cumulative
    assert value(samples, f"{family}_count", **labels) == histogram.count == buckets["+Inf"]
    assert value(samples, f"{family}_sum", **labels) == histogram.sum


def check_otel(points: Samples, units: dict[str, str], stats: DispatcherStats, name: str) -> None:
    """What instrument_meter reported says what ``stats`` says."""
    assert labelled(points, "keyed_dispatch.jobs", "outcome", dispatcher=name) == {
        field: getattr(stats, field) for field in OUTCOME_FIELDS
    }
    assert labelled(points, "keyed_dispatch.job.failures", "error.type", dispatcher=name) == dict(
        stats.failures
    )
    assert value(points, "keyed_dispatch.job.retries", dispatcher=name) == stats.retries
    for instrument, field in [
        ("keyed_dispatch.jobs.pending", "pending"),
        ("keyed_dispatch.jobs.running", "running"),
        ("keyed_dispatch.jobs.in_backoff", "in_backoff"),
        ("keyed_dispatch.keys.active", "active_shards"),
        ("keyed_dispatch.keys.halted", "halted_keys"),
        ("keyed_dispatch.keys.paused", "paused_keys"),
    ]:
        assert value(points, instrument, dispatcher=name) == getattr(stats, field), instrument
    for instrument, histogram in [
        ("keyed_dispatch.job.wait", stats.wait),
        ("keyed_dispatch.job.run", stats.run),
    ]:
        assert histogram is not None
        assert value(points, f"{instrument}.count", dispatcher=name) == histogram.count
        assert value(points, f"{instrument}.sum", dispatcher=name) == histogram.sum
        assert labelled(points, f"{instrument}.bucket", "le", dispatcher=name) == {
            le_text(bound): count for bound, count in histogram.buckets
        }
        assert units[f"{instrument}.sum"] == "s"
    assert units["keyed_dispatch.jobs"] == "{job}"
