"""What every in-process runner shares, whatever runs its jobs.

The engine (``_engine.py``) decides which job may start; a runner runs the
jobs: ``_thread.py`` on worker threads, ``_asyncio.py`` as coroutines on one
event loop. Everything that does not depend on *how* a job runs lives here
once: the settings, argument checks, the admission bounds and their errors,
the start log lines, the start-deadline queue, statistics and halts.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Hashable, Iterable
from contextlib import AbstractContextManager
from typing import Any

from ._config import DispatcherConfig, resolve_config
from ._engine import QUEUED, Engine, Job
from ._errors import ShardsExhausted, StartTimeout, SubmitTimeout, Superseded
from ._keys import KeysText, check_hashable, key_str, normalize_keys
from ._policies import DeadLetter, JobOptions, Retry
from ._stats import DispatcherStats, KeyInfo

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


def log_start(
    keys: tuple[Hashable, ...], waited: float, warn: float | None, seq: float | None = None
) -> None:
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
    """The ``extra`` fields of a log line about a job; JSON-safe values only.

    ``keys``: the job's keys, as strings; ``wait_s``: its wait to start, in
    seconds; ``job_seq``: its sequence number in the dispatcher, the one
    that ends its ``current_job().job_id``.
    """
    fields: dict[str, object] = {"keys": [key_str(key) for key in keys]}
    if waited is not None:
        fields["wait_s"] = waited
    if seq is not None:
        fields["job_seq"] = int(seq)
    return fields


class StartDeadlines:
    """The start deadlines of queued jobs, earliest first.

    Jobs that share the dispatcher's ``start_timeout`` come in deadline
    order and go in a deque; jobs with a timeout of their own (``options``)
    go in a heap. A deadline applies to a job's first start only: entries
    of jobs that started or left are dropped lazily, as they surface. Not
    thread-safe: the runner's lock (or loop) guards it with the engine.
    """

    __slots__ = ("_heap", "_jobs")

    def __init__(self) -> None:
        self._jobs: deque[Job] = deque()
        self._heap: list[tuple[float, float, Job]] = []

    def add(self, job: Job, deadline: float, *, own: bool = False) -> bool:
        """Queue ``job``'s deadline; True if it may be the earliest one now.

        ``own``: the job's timeout is not the dispatcher's (it may come out
        of order).
        """
        job.deadline = deadline
        if own:
            heapq.heappush(self._heap, (deadline, job.seq, job))
            return self._heap[0][2] is job
        jobs = self._jobs
        # Started jobs at the front are dead weight; trimming them here keeps
        # the deque about as long as the backlog.
        while jobs and not _unstarted(jobs[0]):
            jobs.popleft()
        jobs.append(job)
        return len(jobs) == 1

    def next_due(self) -> float | None:
        """The earliest deadline of a job still queued, or None."""
        jobs = self._jobs
        while jobs and not _unstarted(jobs[0]):
            jobs.popleft()
        heap = self._heap
        while heap and not _unstarted(heap[0][2]):
            heapq.heappop(heap)
        first = jobs[0].deadline if jobs else None
        if heap and (first is None or heap[0][0] < first):
            return heap[0][0]
        return first

    def pop_due(self, now: float) -> list[Job]:
        """Remove and return the queued jobs whose deadline is ``now`` or earlier."""
        due: list[Job] = []
        jobs = self._jobs
        while jobs:
            job = jobs[0]
            if _unstarted(job):
                if job.deadline > now:  # type: ignore[operator]
                    break
                due.append(job)
            jobs.popleft()
        heap = self._heap
        while heap and (heap[0][0] <= now or not _unstarted(heap[0][2])):
            job = heapq.heappop(heap)[2]
            if _unstarted(job):
                due.append(job)
        return due

    def clear(self) -> None:
        self._jobs.clear()
        self._heap.clear()


def _unstarted(job: Job) -> bool:
    # Queued and never started: a retry waiting for its turn is queued too,
    # but its start deadline no longer applies.
    return job.state == QUEUED and not job.attempt


class Runner:
    """The part of a dispatcher that does not depend on how its jobs run.

    Subclasses create ``_engine`` (with ``metrics=self._metrics``), set
    ``_name`` and implement ``_guard`` (what serializes access to the
    engine) and ``_workers`` (their own figures for stats).
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
        retry: Retry | None = None,
        dead_letter: Callable[[DeadLetter], object] | None = None,
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
        if retry is not None and not isinstance(retry, Retry):
            raise TypeError(f"retry must be a Retry or None, got {type(retry).__name__}")
        if dead_letter is not None and not callable(dead_letter):
            raise TypeError(f"dead_letter must be callable or None, got {type(dead_letter).__name__}")
        self._halt_on_error = halt_on_error
        self._retry = retry
        self._dead_letter = dead_letter
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

    def _now(self) -> float:
        # The runner's clock (monotonic seconds), as the engine was given.
        raise NotImplementedError

    def _poke(self) -> None:
        # Jobs may have become runnable outside a job's end (a resume):
        # start what can start.
        raise NotImplementedError

    def _cancel_jobs(self, jobs: list[Job]) -> int:
        # Cancel these not-running jobs (outside _guard()); how many were.
        raise NotImplementedError

    # -- retries ---------------------------------------------------------------

    def _retry_delay(self, job: Job, error: BaseException, now: float) -> float | None:
        # Seconds until the retry of ``job``'s failed attempt, or None when
        # the job fails for good. Called outside the lock: ``on`` may be a
        # user's predicate.
        options = job.options
        policy = options.retry if options is not None and options.retry is not None else self._retry
        if policy is None or job.fn is None or job.attempt >= policy.attempts or self._closed:
            return None
        try:
            if not policy.retries(error):
                return None
        except Exception:
            logger.exception("the retry predicate raised; job for %s fails", KeysText(job.keys))
            return None
        delay = policy.delay(job.attempt)
        if policy.deadline is not None and now + delay > job.first_start + policy.deadline:
            return None
        return delay

    def _final_failure(
        self,
        job: Job,
        error: BaseException,
        fn: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> None:
        # ``job`` failed for good after retries: chain the earlier failure
        # (whose own earlier ones are chained already) and tell the hook.
        earlier = job.failure
        job.failure = None
        if earlier is not None and earlier is not error and error.__context__ is None:
            error.__context__ = earlier
        hook = self._dead_letter
        if hook is not None and self._has_retry(job):
            letter = DeadLetter(job.keys, fn, args, kwargs, job.attempt, error)
            try:
                hook(letter)
            except Exception:
                logger.exception("the dead_letter hook raised for the job on %s", KeysText(job.keys))

    def _has_retry(self, job: Job) -> bool:
        options = job.options
        return self._retry is not None or (options is not None and options.retry is not None)

    def _superseded(self, jobs: list[Job], by: tuple[Hashable, ...]) -> list[tuple[Any, BaseException]]:
        # The futures of jobs just superseded (retired), with their errors.
        failed: list[tuple[Any, BaseException]] = []
        for job, error in zip(jobs, self._superseded_errors(jobs, by), strict=True):
            failed.append((job.future, error))
            job.future = None
            job.fn = job.args = job.kwargs = None  # type: ignore[assignment]
        return failed

    @staticmethod
    def _superseded_errors(jobs: list[Job], by: tuple[Hashable, ...]) -> list[Superseded]:
        errors = []
        for job in jobs:
            logger.debug("job for %s superseded by a job for %s", KeysText(job.keys), KeysText(by))
            errors.append(Superseded(job.keys))
        return errors

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

    def _start_timeout_error(self, job: Job) -> StartTimeout:
        options = job.options
        timeout = self._config.start_timeout if options is None else options.start_timeout_or(None)
        return StartTimeout(f"job was not started within its start timeout ({timeout}s)")

    @staticmethod
    def _held_error(held: tuple[Hashable, ...], wanted: tuple[Hashable, ...], who: str) -> RuntimeError:
        return RuntimeError(
            f"this {who} already holds keys {KeysText(held)} of this dispatcher (in a job or an "
            f"exclusive block); waiting for {KeysText(wanted)} here could deadlock. Submit a job "
            f"instead, or hold all the keys in one job or exclusive() call."
        )

    # -- control ---------------------------------------------------------------

    @staticmethod
    def _options(retry: Retry | None, supersede: bool, start_timeout: Any) -> JobOptions:
        return JobOptions(retry=retry, supersede=supersede, start_timeout=start_timeout)

    def pause(self, key: Hashable) -> bool:
        """Hold ``key``: none of its jobs starts until :meth:`resume`.

        Its pending jobs and the ones submitted later wait; they do not fail
        (unlike a halt), and their start deadlines still apply. A job of the
        key running now finishes. Pausing a key with no work holds it
        paused for the jobs to come.

        Returns:
            True if the key was not paused already.
        """
        check_hashable(key)
        with self._guard():
            return self._engine.pause(key)

    def cancel_pending(self, key: Hashable) -> int:
        """Cancel every job of ``key`` that is not running; return how many.

        Their futures are cancelled (a job waiting for a retry too); the job
        running now, if any, is not touched. Other keys of a multi-key job
        move on as well.
        """
        check_hashable(key)
        with self._guard():
            jobs = self._engine.jobs_on(key)
        return self._cancel_jobs(jobs)

    def key_info(self, key: Hashable) -> KeyInfo:
        """A snapshot of ``key``: pending jobs, running, oldest wait, halted, paused, in backoff.

        A key with no work is not an error: it reads as empty.
        """
        check_hashable(key)
        with self._guard():
            return KeyInfo(key, *self._engine.key_info(key, self._now()))

    def keys(self, limit: int | None = None) -> list[KeyInfo]:
        """Snapshots of the live keys (with work, halted or paused), deepest first.

        Args:
            limit: at most this many (the deepest).

        O(live keys + their queued jobs): for an operator, not a hot path.
        """
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
            raise ValueError(f"limit must be an int >= 0 or None, got {limit!r}")
        with self._guard():
            engine = self._engine
            now = self._now()
            infos = [KeyInfo(key, *engine.key_info(key, now)) for key in engine.known_keys()]
        infos.sort(key=lambda info: (-info.pending, -info.oldest_wait_s))
        return infos if limit is None else infos[:limit]

    def resume(self, key: Hashable) -> bool:
        """Lift the halt (``halt_on_error=True``) or the pause of ``key``.

        Jobs of the key that start afterwards run normally; jobs that failed
        with KeyHalted stay failed; jobs held by a pause may start.

        Returns:
            True if the key was halted or paused.

        Raises:
            TypeError: ``key`` is unhashable.
            RuntimeError: (asyncio) called from another thread than the loop's.
        """
        check_hashable(key)
        with self._guard():
            lifted = self._engine.resume(key)
        if lifted:
            self._poke()
        return lifted

    def halted_keys(self) -> frozenset[Hashable]:
        """The keys halted now by a failed job."""
        with self._guard():
            return self._engine.halted_keys()

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
