"""The systems under test: KeyedDispatcher and the thread-pool baselines.

Each baseline is the honest best version of its design, written the way a
careful user would write it, with no handicap:

* ``tpe``: a bare ``ThreadPoolExecutor``, keys ignored. No ordering and no
  exclusion at all: the ceiling for dispatch on a thread pool.
* ``locks``: the lock-manager design, a ``ThreadPoolExecutor`` whose jobs
  hold a ``threading.Lock`` per key (looked up, or created, by the job, as
  that design's request threads do; several keys are locked in sorted order,
  its deadlock rule). Locks are kept once created: that design's pool keeps
  them too, and freeing one safely needs a reference count per lock.
* ``hashed``: BookKeeper's ``OrderedExecutor``, N single-thread executors
  with the key hashed to one. The hash is CRC-32 of ``str(key)``, stable
  across processes (``hash()`` of a str is randomized per process, which
  would make the hot workload's key collisions, and so its result, vary
  from run to run). It cannot run a job on several keys.
* ``keyed``: ``KeyedDispatcher(max_workers=N)``, through its public API only.

Every system offers the same operations, each in its fastest form: a bound
``submit(key, fn)``, a ``submit_many`` loop that keeps no futures, and
``occupy`` to hold every worker busy (to measure queued jobs, or to start
every thread before a timed run).
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from keyed_dispatch import KeyedDispatcher

__all__ = ["SYSTEMS", "SYSTEM_CLASSES", "HashedExecutors", "Keyed", "LockMap", "System", "Tpe", "make_system"]

Job = Callable[[], object]
Keys = tuple[Hashable, ...]


class System:
    """The common interface; subclasses set ``submit`` to their fastest callable."""

    name = "?"
    #: same-key jobs are serialized (never overlap)
    exclusive = False
    #: jobs on several keys at once are supported
    multi_key = False

    submit: Callable[[Hashable, Job], Future[Any]]

    def __init__(self, workers: int) -> None:
        self.workers = workers

    def submit_many(self, keys: Sequence[Hashable], fn: Job) -> None:
        """Submit ``fn`` once per key of ``keys``, in order, keeping no futures."""
        submit = self.submit
        for key in keys:
            submit(key, fn)

    def submit_multi(self, keys: Keys, fn: Job) -> Future[Any]:
        """Submit ``fn`` on every key of ``keys`` at once."""
        raise NotImplementedError(f"{self.name} cannot run a job on several keys")

    def submit_many_multi(self, keysets: Sequence[Keys], fn: Job) -> None:
        """Submit ``fn`` once per key set, in order, keeping no futures."""
        submit_multi = self.submit_multi
        for keys in keysets:
            submit_multi(keys, fn)

    def occupy(self, release: threading.Event) -> list[Future[Any]]:
        """Make every worker run a job that waits for ``release``.

        Returns once all of them have started (so every thread exists and is
        busy); the returned futures finish after ``release`` is set.
        """
        started = threading.Barrier(self.workers + 1)

        def gate() -> None:
            started.wait()
            release.wait()

        futures = [self.submit(("gate", n), gate) for n in range(self.workers)]
        started.wait()
        return futures

    def warm(self) -> None:
        """Start every worker thread, then let them go idle."""
        release = threading.Event()
        futures = self.occupy(release)
        release.set()
        for future in futures:
            future.result()

    def shutdown(self) -> None:
        """Wait for every submitted job, then stop the threads."""
        raise NotImplementedError


class Tpe(System):
    """A bare ThreadPoolExecutor; the key is ignored."""

    name = "tpe"

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._pool = ThreadPoolExecutor(workers)
        pool_submit = self._pool.submit

        def submit(key: Hashable, fn: Job) -> Future[Any]:
            return pool_submit(fn)

        self.submit = submit

    def submit_many(self, keys: Sequence[Hashable], fn: Job) -> None:
        submit = self._pool.submit
        for _ in keys:
            submit(fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class LockMap(System):
    """ThreadPoolExecutor plus a threading.Lock per key, held by the job."""

    name = "locks"
    exclusive = True
    multi_key = True

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._pool = ThreadPoolExecutor(workers)
        self.locks: dict[Hashable, threading.Lock] = {}
        pool_submit = self._pool.submit
        run = self._run

        def submit(key: Hashable, fn: Job) -> Future[Any]:
            return pool_submit(run, key, fn)

        self.submit = submit

    def _run(self, key: Hashable, fn: Job) -> object:
        lock = self.locks.get(key)
        if lock is None:
            # setdefault is atomic: two first jobs of a key share one lock.
            lock = self.locks.setdefault(key, threading.Lock())
        with lock:
            return fn()

    def _run_multi(self, keys: Keys, fn: Job) -> object:
        locks = self.locks
        held: list[threading.Lock] = []
        try:
            for key in sorted(keys, key=str):
                lock = locks.get(key)
                if lock is None:
                    lock = locks.setdefault(key, threading.Lock())
                lock.acquire()
                held.append(lock)
            return fn()
        finally:
            for lock in reversed(held):
                lock.release()

    def submit_many(self, keys: Sequence[Hashable], fn: Job) -> None:
        submit = self._pool.submit
        run = self._run
        for key in keys:
            submit(run, key, fn)

    def submit_multi(self, keys: Keys, fn: Job) -> Future[Any]:
        return self._pool.submit(self._run_multi, keys, fn)

    def submit_many_multi(self, keysets: Sequence[Keys], fn: Job) -> None:
        submit = self._pool.submit
        run = self._run_multi
        for keys in keysets:
            submit(run, keys, fn)

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class HashedExecutors(System):
    """BookKeeper's OrderedExecutor: N single-thread executors, key hashed to one."""

    name = "hashed"
    exclusive = True

    def __init__(self, workers: int) -> None:
        super().__init__(workers)
        self._pools = [ThreadPoolExecutor(1) for _ in range(workers)]
        submits = [pool.submit for pool in self._pools]
        self._submits = submits
        count = workers

        def submit(key: Hashable, fn: Job) -> Future[Any]:
            return submits[zlib.crc32(str(key).encode()) % count](fn)

        self.submit = submit

    def submit_many(self, keys: Sequence[Hashable], fn: Job) -> None:
        submits = self._submits
        count = len(submits)
        crc32 = zlib.crc32
        for key in keys:
            submits[crc32(str(key).encode()) % count](fn)

    def occupy(self, release: threading.Event) -> list[Future[Any]]:
        # One gate per executor: gates on distinct keys could hash together.
        started = threading.Barrier(self.workers + 1)

        def gate() -> None:
            started.wait()
            release.wait()

        futures = [submit(gate) for submit in self._submits]
        started.wait()
        return futures

    def shutdown(self) -> None:
        for pool in self._pools:
            pool.shutdown(wait=False)
        for pool in self._pools:
            pool.shutdown(wait=True)


class Keyed(System):
    """KeyedDispatcher through its public API."""

    name = "keyed"
    exclusive = True
    multi_key = True

    def __init__(self, workers: int, *, max_shards: int | None = None) -> None:
        super().__init__(workers)
        self.dispatcher = KeyedDispatcher(max_workers=workers, max_shards=max_shards)
        self.submit = self.dispatcher.submit

    def submit_multi(self, keys: Keys, fn: Job) -> Future[Any]:
        return self.dispatcher.submit_multi(keys, fn)

    def submit_many_multi(self, keysets: Sequence[Keys], fn: Job) -> None:
        submit_multi = self.dispatcher.submit_multi
        for keys in keysets:
            submit_multi(keys, fn)

    def shutdown(self) -> None:
        self.dispatcher.shutdown(wait=True)


#: The thread systems in table order; the first is the throughput reference.
SYSTEMS: tuple[str, ...] = ("tpe", "locks", "hashed", "keyed")

#: Each system's class, by name (for its capabilities).
SYSTEM_CLASSES: dict[str, type[System]] = {
    "tpe": Tpe,
    "locks": LockMap,
    "hashed": HashedExecutors,
    "keyed": Keyed,
}


def make_system(name: str, workers: int, *, live_keys: int = 0) -> System:
    """Build the system called ``name`` with ``workers`` threads.

    ``live_keys`` is how many keys may have work at once in the workload;
    KeyedDispatcher's ``max_shards`` (default 1000) is raised to fit it, so
    that its admission limit, which the baselines lack, is not what is
    measured. Left at 0, every system keeps its defaults.
    """
    if name == "tpe":
        return Tpe(workers)
    if name == "locks":
        return LockMap(workers)
    if name == "hashed":
        return HashedExecutors(workers)
    if name == "keyed":
        # Room for the workload's keys plus the gates of ``occupy``.
        shards = max(1000, live_keys + workers) if live_keys else None
        return Keyed(workers, max_shards=shards)
    raise ValueError(f"unknown system {name!r}; expected one of {', '.join(SYSTEMS)}")
