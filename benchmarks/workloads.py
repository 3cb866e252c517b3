"""The benchmark workloads, each measured on every system that supports it.

Every function runs one repetition on one system and returns plain numbers;
``suite`` interleaves the systems within each repetition (so that a slow
spell of a noisy machine hits all of them alike) and takes medians.

Timed runs start after every worker thread exists (``System.warm``) and end
when ``shutdown(wait=True)`` returns, so a throughput or a makespan covers
submitting, running and completing every job, and the same ending (joining
the threads) for every system. No futures are kept in timed runs: holding
200,000 of them would make the cyclic GC, not the dispatcher, the cost.
"""

from __future__ import annotations

import functools
import gc
import random
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Hashable, Sequence
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Any

from .systems import Keys, System, make_system

__all__ = [
    "IoRun",
    "IoWork",
    "Rate",
    "io_makespan",
    "latency_samples",
    "memory_churn",
    "memory_costs",
    "multi_keysets",
    "noop",
    "order_violations",
    "serial_sleeps",
    "throughput",
    "zipf_keys",
]


def noop() -> None:
    """The job of the throughput workloads."""


def zipf_keys(rng: random.Random, jobs: int, nkeys: int, s: float, prefix: str) -> list[str]:
    """``jobs`` keys drawn from ``nkeys`` with Zipf weights ``1 / rank**s``."""
    keys = [f"{prefix}-{rank}" for rank in range(nkeys)]
    weights = [1.0 / (rank + 1) ** s for rank in range(nkeys)]
    return rng.choices(keys, weights, k=jobs)


def multi_keysets(rng: random.Random, jobs: int, nkeys: int) -> tuple[list[Keys], list[Keys]]:
    """Key sets of 2 or 3 keys out of ``nkeys``, and single keys drawn alike.

    The single-key jobs use the first key of each set, so both lists load
    the same keys with the same distribution.
    """
    keys = [f"multi-{n}" for n in range(nkeys)]
    keysets: list[Keys] = [tuple(rng.sample(keys, rng.choice((2, 3)))) for _ in range(jobs)]
    singles: list[Keys] = [(keyset[0],) for keyset in keysets]
    return keysets, singles


@dataclass(frozen=True)
class Rate:
    """Jobs per wall-clock second, and per CPU second of the whole process.

    The goals are stated in the first. The second counts the CPU time of all
    threads (user and system, so a contended lock's futex calls count), and
    not the time other processes of a shared machine took: a steadier
    measure of the cost per job.
    """

    wall: float
    cpu: float


def _rate(jobs: int, wall: float, cpu: float) -> Rate:
    return Rate(wall=jobs / wall, cpu=jobs / cpu if cpu > 0 else float("inf"))


def throughput(system: System, keys: Sequence[Hashable], *, keep: bool = False) -> Rate:
    """The rate of one no-op job per key of ``keys`` (system warmed).

    ``keep``: the submitter keeps every future and waits for them all with
    ``concurrent.futures.wait`` before the shutdown, as a server that
    answers each request from its job's result does; otherwise it drops
    them and only the shutdown waits.
    """
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    if keep:
        submit = system.submit
        futures.wait([submit(key, noop) for key in keys])
    else:
        system.submit_many(keys, noop)
    system.shutdown()
    return _rate(len(keys), time.perf_counter() - start, time.process_time() - cpu)


def multi_throughput(system: System, keysets: Sequence[Keys]) -> Rate:
    """The rate of one no-op job per key set (``submit_multi``)."""
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    system.submit_many_multi(keysets, noop)
    system.shutdown()
    return _rate(len(keysets), time.perf_counter() - start, time.process_time() - cpu)


@dataclass(frozen=True)
class IoWork:
    """An I/O-bound workload: ``keys[i]`` is the key of job i, which sleeps ``sleep_s``."""

    keys: list[str]
    sleep_s: float
    workers: int

    @property
    def hot_key(self) -> str:
        """The most frequent key."""
        return Counter(self.keys).most_common(1)[0][0]

    @property
    def hottest(self) -> int:
        """Jobs of the most frequent key."""
        return Counter(self.keys).most_common(1)[0][1]

    @property
    def bound(self) -> float:
        """The makespan's lower bound: max(total work / workers, hottest key's work)."""
        return max(len(self.keys) * self.sleep_s / self.workers, self.hottest * self.sleep_s)

    def job(self) -> None:
        """One job: an I/O wait."""
        time.sleep(self.sleep_s)


@dataclass(frozen=True)
class IoRun:
    """One run of an I/O workload, with what bounds its makespan.

    The makespan is at least ``first_start + sleeps + gaps``: the hottest
    key's jobs run one after another, each taking its sleep as the OS
    delivers it (``sleeps``), with a hand-off between two of them (``gaps``,
    the scheduler's share). It is also at least the total sleep time over
    the workers: ``busy`` is the share of the workers' time spent in jobs,
    ``overshoot`` the mean sleep over the nominal one.
    """

    makespan: float
    first_start: float
    sleeps: float
    gaps: float
    busy: float
    overshoot: float


def io_makespan(system: System, work: IoWork) -> IoRun:
    """Run ``work`` on a warmed ``system``; time it and the hottest key's chain.

    The makespan runs from the first submit to the last job's end. Every job
    also stamps its start and end (about a microsecond, the same on every
    system).
    """
    hot_spans: list[tuple[float, float]] = []
    spans: list[tuple[float, float]] = []
    clock = time.perf_counter
    sleep = time.sleep
    sleep_s = work.sleep_s

    def hot_job() -> None:
        started = clock()
        sleep(sleep_s)
        hot_spans.append((started, clock()))

    def job() -> None:
        started = clock()
        sleep(sleep_s)
        spans.append((started, clock()))

    hot = work.hot_key
    jobs = [hot_job if key == hot else job for key in work.keys]
    submit = system.submit
    gc.collect()
    start = clock()
    for key, fn in zip(work.keys, jobs, strict=True):
        submit(key, fn)
    system.shutdown()
    makespan = clock() - start
    hot_spans.sort()
    total = sum(end - begin for begin, end in hot_spans + spans)
    return IoRun(
        makespan=makespan,
        first_start=hot_spans[0][0] - start,
        sleeps=sum(end - begin for begin, end in hot_spans),
        gaps=sum(max(0.0, hot_spans[n + 1][0] - hot_spans[n][1]) for n in range(len(hot_spans) - 1)),
        busy=total / (work.workers * makespan),
        overshoot=total / (len(work.keys) * sleep_s),
    )


def serial_sleeps(count: int, sleep_s: float) -> float:
    """Seconds one thread takes for ``count`` sleeps of ``sleep_s`` back to back.

    The hottest key's jobs can run no faster than this: divided by their
    nominal total, it is the floor that sleep overshoot puts under
    makespan / bound.
    """
    start = time.perf_counter()
    for _ in range(count):
        time.sleep(sleep_s)
    return time.perf_counter() - start


def _stamp(starts: list[int], index: int) -> None:
    starts[index] = time.perf_counter_ns()


def latency_samples(system: System, samples: int, nkeys: int, gap_s: float) -> list[float]:
    """Submit-to-start delays in microseconds, one job at a time.

    Each job goes to a key with no other work, and is submitted only after
    the previous one finished and ``gap_s`` passed, so that the workers are
    idle (a pool may otherwise still be finishing its bookkeeping).
    """
    keys = [f"lat-{n % nkeys}" for n in range(samples)]
    starts = [0] * samples
    jobs = [functools.partial(_stamp, starts, n) for n in range(samples)]
    delays: list[float] = []
    submit = system.submit
    clock = time.perf_counter_ns
    for n in range(samples):
        time.sleep(gap_s)
        submitted = clock()
        submit(keys[n], jobs[n]).result()
        delays.append((starts[n] - submitted) / 1000)
    return delays


class _OrderRecorder:
    """Counts same-key overlaps and order inversions as jobs start."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._running: dict[Hashable, int] = {}
        self._latest: dict[Hashable, int] = {}
        self.inversions = 0
        self.overlaps = 0

    def job(self, key: Hashable, seq: int) -> None:
        with self._lock:
            running = self._running.get(key, 0)
            if running:
                self.overlaps += 1
            self._running[key] = running + 1
            if seq < self._latest.get(key, -1):
                self.inversions += 1  # a job submitted later on this key started first
            else:
                self._latest[key] = seq
        # The job's work: give up the GIL, so that other workers contend.
        time.sleep(0)
        with self._lock:
            self._running[key] -= 1


def order_violations(system: System, keys: Sequence[Hashable]) -> tuple[int, int]:
    """(inversions, overlaps) among same-key jobs submitted in order.

    An inversion is a job that started after a job submitted later on its
    key; an overlap is a job that started while another job of its key ran.
    """
    recorder = _OrderRecorder()
    jobs = [functools.partial(recorder.job, key, seq) for seq, key in enumerate(keys)]
    submit = system.submit
    for key, job in zip(keys, jobs, strict=True):
        submit(key, job)
    system.shutdown()
    return recorder.inversions, recorder.overlaps


def _traced() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


def _traced_occupied(system: System) -> int:
    # Measured while every worker runs a gate job: each worker having taken
    # a new job proves it finished its bookkeeping for the previous one,
    # and the gates themselves are the same in every such measurement.
    release = threading.Event()
    gates = system.occupy(release)
    try:
        return _traced()
    finally:
        release.set()
        _wait(gates)


def _wait(futures: Sequence[Future[Any] | None]) -> None:
    for future in futures:
        if future is not None:
            future.result()


@dataclass(frozen=True)
class MemoryCosts:
    """Bytes measured with tracemalloc; see :func:`memory_costs`."""

    future: float
    queued_job: float
    active_key: float
    idle_key: float


def memory_costs(name: str, workers: int, count: int) -> MemoryCosts:
    """Per-job and per-key memory of system ``name``, averaged over ``count``.

    With every worker held busy (``occupy``), ``count`` no-op jobs are
    queued on one key: their bytes less those of ``count`` plain Futures
    are the cost of a queued job beyond its Future. Then ``count`` jobs on
    ``count`` distinct keys: what they cost beyond as many queued jobs is
    the cost of an active key (a key with admitted, unfinished work). Once
    they have run and every worker has come back for new work, what is
    still allocated is the cost of an idle key. Keys are created before
    tracing starts, so their own bytes are not counted.
    """
    keys = [f"mem-{n}" for n in range(count)]
    system = make_system(name, workers, live_keys=count)
    system.warm()
    release = threading.Event()
    gates = system.occupy(release)
    slots: list[Future[Any] | None] = [None] * count
    submit = system.submit
    tracemalloc.start()
    try:
        before = _traced()
        for n in range(count):
            slots[n] = Future()
        future = (_traced() - before) / count
        for n in range(count):
            slots[n] = None

        before = _traced()
        for n in range(count):
            slots[n] = submit("mem-queued", noop)
        queued_job = (_traced() - before) / count - future
        release.set()
        _wait(gates)
        _wait(slots)
        for n in range(count):
            slots[n] = None
        release = threading.Event()
        gates = system.occupy(release)

        before = _traced()
        for n in range(count):
            slots[n] = submit(keys[n], noop)
        active_key = (_traced() - before) / count - future - queued_job
        release.set()
        _wait(gates)
        _wait(slots)
        for n in range(count):
            slots[n] = None
        # Every worker taking a new job proves it finished its bookkeeping
        # for the old one.
        release = threading.Event()
        gates = system.occupy(release)
        idle_key = (_traced() - before) / count
    finally:
        tracemalloc.stop()
        release.set()
        system.shutdown()
    return MemoryCosts(future=future, queued_job=queued_job, active_key=active_key, idle_key=idle_key)


@dataclass(frozen=True)
class Churn:
    """Bytes traced before and after a run of distinct keys; see :func:`memory_churn`."""

    keys: int
    start: int
    end: int
    peak: int

    @property
    def retained(self) -> int:
        """Bytes the run left allocated."""
        return self.end - self.start


def memory_churn(name: str, workers: int, count: int, batch: int = 10_000) -> Churn:
    """Run one no-op job on each of ``count`` distinct keys; trace memory.

    Jobs go in batches of ``batch`` keys, each waited for, so that the
    futures in flight stay bounded. KeyedDispatcher keeps its default
    ``max_shards``: the point is that a bounded, reused pool of shards
    leaves nothing behind.
    """
    system = make_system(name, workers)
    system.warm()
    submit = system.submit
    tracemalloc.start()
    try:
        start = _traced_occupied(system)
        for first in range(0, count, batch):
            futures = [submit(f"churn-{n}", noop) for n in range(first, min(first + batch, count))]
            _wait(futures)
            del futures
        end = _traced_occupied(system)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        system.shutdown()
    return Churn(keys=count, start=start, end=end, peak=peak)
