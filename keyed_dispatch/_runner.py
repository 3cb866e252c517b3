"""What every in-process runner shares, whatever runs its jobs.

The engine (``_engine.py``) decides which job may start; a runner runs the
jobs: ``_thread.py`` on worker threads, ``_asyncio.py`` as coroutines on one
event loop. Everything that does not depend on *how* a job runs lives here
once: the settings, argument checks, the admission bounds and their errors,
the start log lines, the start-deadline queue, statistics and halts.
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Hashable, Iterable
from contextlib import AbstractContextManager

from ._config import DispatcherConfig, resolve_config
from ._engine import QUEUED, Engine, Job
from ._errors import ShardsExhausted, StartTimeout, SubmitTimeout
from ._keys import KeysText, check_hashable, key_str, normalize_keys
from ._stats import DispatcherStats

__all__ = ["Runner", "StartDeadlines", "check_callable", "job_fields", "log_start", "many_keys", "one_key"]

logger = logging.getLogger("keyed_dispatch")
_DEBUG = logging.DEBUG


def check_callable(fn: object, name: str) -> None:
    """Raise a TypeError naming the argument if ``fn`` is not callable."""
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")


def one_key(key: Hashable, fn: object, name: str) -> tuple[Hashable]:
    """The key set of a single-key call, after checking ``key`` and ``fn``.

    Raises:
        TypeError: ``key`` is unhashable or ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"{name} must be callable, got {type(fn).__name__}")
    try:
        hash(key)
    except TypeError:
        check_hashable(key)
    return (key,)


def many_keys(keys: Iterable[Hashable], fn: object, name: str) -> tuple[Hashable, ...]:
    """The key set of a multi-key call (see ``normalize_keys``), after checking ``fn``."""
    check_callable(fn, name)
    return normalize_keys(keys)


def log_start(keys: tuple[Hashable, ...], waited: float, warn: float | None, seq: float | None = None) -> None:
    """Emit the start lines of a job: DEBUG always, WARNING past ``wait_warning``.

    Both carry the fields of :func:`job_fields` (``extra``), for JSON handlers.
    """
    if logger.isEnabledFor(_DEBUG):
        logger.debug(
            "started job for %s (waited %.2fs)", KeysText(keys), waited, extra=job_fields(keys, waited, seq)
        )
    if warn is not None and waited >= warn:
        logger.warning("job for %s waited %.2fs", KeysText(keys), waited, extra=job_fields(keys, waited, seq))


def job_fields(keys: tuple[Hashable, ...], waited: float | None, seq: float | None) -> dict[str, object]:
    """The ``extra`` fields of a log line about a job: JSON-safe values only.

    ``keys``: the job's keys as strings; ``wait_s``: its wait to start, in
    seconds; ``job_seq``: its place in the dispatcher's start order (the
    admission sequence; a hot key's job that let a waiting job go first has
    the half step behind it, e.g. 41.5).
    """
    fields: dict[str, object] = {"keys": [key_str(key) for key in keys]}
    if waited is not None:
        fields["wait_s"] = waited
    if seq is not None:
        fields["job_seq"] = seq
    return fields


class StartDeadlines:
    """The start deadlines of queued jobs, earliest first.

    Every job of a runner has the same ``start_timeout``, so admission order
    is deadline order and a deque does for a heap. Jobs that started or left
    are dropped lazily, as they surface. Not thread-safe: the runner's lock
    (or loop) guards it with the engine.
    """

    __slots__ = ("_jobs",)

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()

    def add(self, job: Job, deadline: float) -> bool:
        """Queue ``job``'s deadline; True if it is now the earliest one."""
        job.deadline = deadline
        jobs = self._jobs
        # Started jobs at the front are dead weight; trimming them here keeps
        # the deque about as long as the backlog.
        while jobs and jobs[0].state != QUEUED:
            jobs.popleft()
        jobs.append(job)
        return len(jobs) == 1

    def next_due(self) -> float | None:
        """The earliest deadline of a job still queued, or None."""
        jobs = self._jobs
        while jobs and jobs[0].state != QUEUED:
            jobs.popleft()
        return jobs[0].deadline if jobs else None

    def pop_due(self, now: float) -> list[Job]:
        """Remove and return the queued jobs whose deadline is ``now`` or earlier."""
        due: list[Job] = []
        jobs = self._jobs
        while jobs:
            job = jobs[0]
            if job.state == QUEUED:
                if job.deadline > now:  # type: ignore[operator]
                    break
                due.append(job)
            jobs.popleft()
        return due

    def clear(self) -> None:
        self._jobs.clear()


class Runner:
    """The part of a dispatcher that does not depend on how its jobs run.

    Subclasses create ``_engine`` (with ``metrics=self._metrics``), set
    ``_name`` and implement ``_guard`` (what serializes access to the engine)
    and ``_workers`` (their own figures for stats).
    """

    _engine: Engine
    _name: str

    def __init__(  # noqa: PLR0917 - the settings come in their signature's order, from the subclasses only
        self,
        config: DispatcherConfig | None,
        halt_on_error: bool,
        max_workers: int | None,
        max_shards: int | None,
        submit_timeout: float | None,
        start_timeout: float | None,
        max_pending: int | None,
        wait_warning: float | None,
        *,
        metrics: bool = False,
    ) -> None:
        # The constructors' settings, in one place: arguments left as None
        # keep the value of ``config`` (or of the environment).
        self._config = resolve_config(
            config,
            max_workers=max_workers,
            max_shards=max_shards,
            submit_timeout=submit_timeout,
            start_timeout=start_timeout,
            max_pending=max_pending,
            wait_warning=wait_warning,
        )
        if not isinstance(halt_on_error, bool):
            raise TypeError(f"halt_on_error must be a bool, got {type(halt_on_error).__name__}")
        self._halt_on_error = halt_on_error
        if not isinstance(metrics, bool):
            raise TypeError(f"metrics must be a bool, got {type(metrics).__name__}")
        self._metrics = metrics
        self._closed = False

    @property
    def config(self) -> DispatcherConfig:
        """The settings in force: a frozen :class:`DispatcherConfig`, fixed at construction."""
        return self._config

    @property
    def name(self) -> str:
        """The dispatcher's name: the ``dispatcher`` label of its metrics."""
        return self._name

    @property
    def metrics(self) -> bool:
        """Whether the dispatcher records the wait and run histograms of ``stats()``."""
        return self._metrics

    def _guard(self) -> AbstractContextManager[object]:
        # What makes engine access safe from the calling thread.
        raise NotImplementedError

    def _workers(self) -> tuple[int, int]:
        # (workers, idle_workers) for stats(); called under _guard().
        raise NotImplementedError

    # -- admission bounds ----------------------------------------------------

    def _check_can_fit(self, keys: tuple[Hashable, ...]) -> None:
        # Before waiting for room: a job on more keys than max_shards never fits.
        max_shards = self._config.max_shards
        if len(keys) > max_shards:
            raise ShardsExhausted(f"a job on {len(keys)} keys can never fit in max_shards={max_shards}")

    def _no_room(self, keys: tuple[Hashable, ...]) -> SubmitTimeout:
        # The error of a submit whose wait for room timed out.
        config = self._config
        if self._engine.shards_full(keys, config.max_shards):
            logger.error(
                "shard pool exhausted: %d shards",
                config.max_shards,
                extra={**job_fields(keys, None, None), "max_shards": config.max_shards},
            )
            return ShardsExhausted(
                f"shard pool exhausted: {config.max_shards} shards stayed live for {config.submit_timeout}s"
            )
        return SubmitTimeout(f"{config.max_pending} jobs stayed pending for {config.submit_timeout}s")

    def _start_timeout_error(self) -> StartTimeout:
        return StartTimeout(f"job was not started within start_timeout={self._config.start_timeout}s")

    @staticmethod
    def _held_error(held: tuple[Hashable, ...], wanted: tuple[Hashable, ...], who: str) -> RuntimeError:
        return RuntimeError(
            f"this {who} already holds keys {KeysText(held)} of this dispatcher (in a job or an "
            f"exclusive block); waiting for {KeysText(wanted)} here could deadlock. Submit a job "
            f"instead, or hold all the keys in one job or exclusive() call."
        )

    # -- control ---------------------------------------------------------------

    def resume(self, key: Hashable) -> bool:
        """Lift the halt of ``key`` (``halt_on_error=True``).

        Jobs of the key that start afterwards run normally; jobs that failed
        with KeyHalted stay failed.

        Returns:
            True if the key was halted.

        Raises:
            TypeError: ``key`` is unhashable.
            RuntimeError: (asyncio) called from another thread than the loop's.
        """
        check_hashable(key)
        with self._guard():
            return self._engine.resume(key)

    def halted_keys(self) -> frozenset[Hashable]:
        """The keys halted now by a failed job."""
        with self._guard():
            return self._engine.halted_keys()

    def deepest_keys(self, n: int = 10) -> list[tuple[Hashable, int]]:
        """The ``n`` keys with the most unfinished jobs, as ``(key, depth)``, deepest first.

        A key's depth counts its running job (or ``exclusive`` block) and the
        jobs waiting behind it; idle keys have none and do not appear. Ties
        keep the order in which the keys became busy. Computed on demand, in
        O(queued jobs) under the dispatcher's lock: meant for a metrics
        scrape, not for every job.

        Raises:
            TypeError, ValueError: ``n`` is not an int >= 0.
            RuntimeError: (asyncio) called from another thread than the loop's.
        """
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"n must be an int, got {type(n).__name__}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        with self._guard():
            return self._engine.deepest_keys(n)

    def stats(self) -> DispatcherStats:
        """Return a consistent snapshot of the dispatcher's state.

        For the asyncio dispatcher, ``max_workers`` is ``max_concurrency``,
        ``workers`` counts the jobs running now (``idle_workers`` is 0) and
        ``cancelled`` also counts jobs cancelled while running.

        Raises:
            RuntimeError: (asyncio) called from another thread than the loop's.
        """
        with self._guard():
            workers, idle = self._workers()
            return self._engine.stats(self._config, workers=workers, idle_workers=idle, closed=self._closed)
