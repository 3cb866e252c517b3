"""AsyncKeyedDispatcher(metrics=True): the histograms of stats(), and the two exporters over it.

As for the thread dispatcher, waits and run times are only asserted where a
sleep bounds them below; counts are exact. The exporters also read the
dispatcher from another thread (a scrape server's), through its loop.
"""

from __future__ import annotations

import asyncio
import json
import threading

import pytest

from keyed_dispatch import AsyncKeyedDispatcher, Retry, StartTimeout
from tests.asyncio_support import WAIT, run, within
from tests.metrics_support import check_otel, check_prometheus, otel_points, parse_exposition, value

WORK = 0.03  # seconds a slow job sleeps


async def noop() -> None:
    return None


async def fail(kind: type[Exception]) -> None:
    raise kind("boom")


async def idle(ad: AsyncKeyedDispatcher) -> None:
    async def drained() -> None:
        while ad.stats().pending or ad.stats().running:
            await asyncio.sleep(0.001)  # a polling interval, not a synchronization

    await within(drained())


async def workload(ad: AsyncKeyedDispatcher) -> None:
    """7 jobs start (a block included), 3 fail, 1 is cancelled, 1 times out."""
    gate = asyncio.Event()

    async def slow() -> None:
        await gate.wait()
        await asyncio.sleep(WORK)

    first = await ad.submit("k", slow)
    second = await ad.submit("k", noop)  # admitted before the gate opens: waits >= WORK
    cancelled = await ad.submit("k", noop)
    assert cancelled.cancel()
    with pytest.raises(StartTimeout):
        await within(ad.options(start_timeout=0.001).run("k", noop))
    gate.set()
    await within(first)
    await within(second)
    await within(ad.run("other", noop))
    for kind in (ValueError, KeyError, KeyError):
        with pytest.raises(kind):
            await ad.run("x", fail, kind)
    async with ad.exclusive(["k"]):
        pass
    await idle(ad)


def test_stats_have_the_histograms_and_the_outcomes() -> None:
    async def body() -> None:
        async with AsyncKeyedDispatcher(4, metrics=True, name="orders") as ad:
            assert (ad.metrics, ad.name) == (True, "orders")
            assert "'orders'" in repr(ad)
            await workload(ad)
            stats = ad.stats()
        assert stats.wait is not None
        assert stats.run is not None
        assert (stats.completed, stats.failed, stats.cancelled, stats.timed_out) == (4, 3, 1, 1)
        assert stats.failures == (("KeyError", 2), ("ValueError", 1))
        assert stats.wait.count == stats.run.count == 7
        assert stats.run.count - dict(stats.run.buckets)[0.02] >= 1
        assert stats.wait.count - dict(stats.wait.buckets)[0.02] >= 1
        assert stats.run.sum >= WORK
        assert stats.wait.sum >= WORK
        assert json.loads(json.dumps(stats.as_dict()))["run"]["count"] == 7

    run(body)


def test_every_attempt_is_a_run_inline_and_in_a_task() -> None:
    async def body() -> None:
        failures = {"inline": 0, "task": 0}

        async def flaky(which: str) -> str:
            failures[which] += 1
            if failures[which] < 2:
                raise ConnectionError("again")
            return which

        async with AsyncKeyedDispatcher(2, metrics=True) as ad:
            retrying = ad.options(retry=Retry(attempts=2, backoff=0.0, jitter=0.0))
            assert await within(retrying.run("a", flaky, "inline")) == "inline"
            assert await within(await retrying.submit("b", flaky, "task")) == "task"
            await idle(ad)
            stats = ad.stats()
        assert stats.wait is not None
        assert stats.run is not None
        assert (stats.wait.count, stats.run.count, stats.retries, stats.failed) == (2, 4, 2, 0)

    run(body)


def test_without_metrics_there_are_no_histograms() -> None:
    async def body() -> None:
        async with AsyncKeyedDispatcher(2) as ad:
            await ad.run("k", noop)
            stats = ad.stats()
        assert (ad.metrics, ad.name, stats.wait, stats.run) == (False, "keyed-dispatch", None, None)
        with pytest.raises(TypeError, match="name must be a str"):
            AsyncKeyedDispatcher(name=3)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="metrics must be a bool"):
            AsyncKeyedDispatcher(metrics=1)  # type: ignore[arg-type]

    run(body)


async def backlog(ad: AsyncKeyedDispatcher, gate: asyncio.Event) -> None:
    """hot: a running job and 3 queued; warm: a running job and 1 queued."""

    async def held() -> None:
        await gate.wait()

    for key, queued in (("hot", 3), ("warm", 1)):
        await ad.submit(key, held)
        for _ in range(queued):
            await ad.submit(key, noop)
    await asyncio.sleep(0)  # the two tasks take their first step
    assert ad.stats().running == 2


def test_prometheus_scrape_matches_stats_from_the_loop_and_from_another_thread() -> None:
    pytest.importorskip("prometheus_client")
    from prometheus_client import CollectorRegistry, generate_latest

    from keyed_dispatch.metrics import PrometheusCollector

    async def body() -> None:
        async with AsyncKeyedDispatcher(4, metrics=True, name="orders") as ad:
            registry = CollectorRegistry()
            registry.register(PrometheusCollector(ad, top_keys=1))
            gate = asyncio.Event()
            await backlog(ad, gate)
            samples, _ = parse_exposition(generate_latest(registry).decode())
            assert value(samples, "keyed_dispatch_jobs_pending", dispatcher="orders") == 4
            depth = {
                dict(labels)["key"]: v
                for (name, labels), v in samples.items()
                if name == "keyed_dispatch_key_depth"
            }
            assert depth == {"hot": 4}
            gate.set()
            await workload(ad)
            # A scrape server's thread: the collector reads the dispatcher on its loop.
            loop = asyncio.get_running_loop()
            text = await within(loop.run_in_executor(None, generate_latest, registry))
            samples, types = parse_exposition(text.decode())
            check_prometheus(samples, types, ad.stats(), "orders")

    run(body)


def test_opentelemetry_instruments_match_stats_from_another_thread() -> None:
    pytest.importorskip("opentelemetry.sdk")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    from keyed_dispatch.metrics import instrument_meter

    async def body() -> None:
        reader = InMemoryMetricReader()
        provider = MeterProvider(metric_readers=[reader])
        try:
            async with AsyncKeyedDispatcher(4, metrics=True, name="orders") as ad:
                instrument_meter([ad], provider.get_meter("test"))
                await workload(ad)
                loop = asyncio.get_running_loop()
                points, units = await within(loop.run_in_executor(None, otel_points, reader))
                check_otel(points, units, ad.stats(), "orders")
        finally:
            provider.shutdown()

    run(body)


def test_a_scrape_that_the_loop_does_not_answer_in_time_fails() -> None:
    pytest.importorskip("prometheus_client")
    from keyed_dispatch.metrics import PrometheusCollector

    async def body() -> None:
        async with AsyncKeyedDispatcher(2, metrics=True, name="stuck") as ad:
            collector = PrometheusCollector(ad, timeout=0.01)
            errors: list[BaseException] = []

            def scrape() -> None:
                try:
                    list(collector.collect())
                except TimeoutError as exc:
                    errors.append(exc)

            thread = threading.Thread(target=scrape)
            thread.start()
            thread.join(WAIT)  # blocks the loop, which cannot answer the scrape
            assert [str(error) for error in errors] == [
                "the event loop of dispatcher 'stuck' did not answer within 0.01s"
            ]
            await asyncio.sleep(0)  # the late call finds the scrape given up

    run(body)
