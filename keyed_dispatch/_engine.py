"""The ordering engine: per-key queues, readiness and retirement of jobs.

This module decides *which* job may start; it runs nothing and owns no
thread. Two runners drive it: the thread pool of ``_dispatcher.py`` and the
event loop of ``_asyncio.py``. Every method must be called with the runner's
lock held (the thread runner's ``_lock``; the asyncio runner is confined to
its loop's thread, which serializes it the same way).

The model
---------
Each live key has a shard: a FIFO of the jobs admitted on it, oldest first.
A job with keys ``K`` is appended to the shard of every key in ``K`` in one
step under the lock, and it may start once it is at the head of all of them.
``blockers`` counts the shards in which it is not yet at the head.

* Order and exclusion: a job reaches the head of a shard only when every
  earlier job of that shard has been retired, so jobs sharing a key never
  overlap and start in admission order.
* No deadlock: the "waits for" relation points only from later to earlier
  admissions (admission is a total order), so it has no cycle, whatever the
  order of keys in a call or the mix of overlapping multi-key jobs.
* Bounded memory: a shard exists only while it is non-empty, and its head is
  always a live job, so an idle key holds nothing.

Runnable jobs wait in ``ready``, a heap ordered by admission sequence: a free
worker always takes the oldest runnable job. A hot key whose next job is the
oldest runnable one keeps its worker without a hand-off; once older work of
other keys is waiting, it goes behind it. That is FIFO fairness across keys,
and it also serves the critical path: a hot key that falls behind holds the
oldest jobs, so it is served first.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from ._errors import KeyHalted, StartTimeout

__all__ = ["CANCELLED", "COMPLETED", "FAILED", "TIMED_OUT", "Engine", "Job"]

# Job states (ints: compared on the hot path).
QUEUED = 0  # admitted, not started; in its shards, maybe in ``ready``
RUNNING = 1  # taken by a runner; at the head of all its shards
DONE = 2  # retired: out of every shard
DEAD = 3  # cancelled or expired before start; left in shards lazily

# Outcomes passed to Engine.release, indexes into Engine.outcomes.
COMPLETED = 0
FAILED = 1
CANCELLED = 2
TIMED_OUT = 3


class Job:
    """One admitted unit of work (or an ``exclusive`` block, ``fn is None``).

    The runner's future lives in ``future``; the engine never touches it.
    """

    __slots__ = (
        "admitted",
        "args",
        "blockers",
        "deadline",
        "error",
        "fn",
        "future",
        "keys",
        "kwargs",
        "seq",
        "state",
        "waited",
    )

    def __init__(
        self,
        keys: tuple[Hashable, ...],
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Any,
    ) -> None:
        self.keys = keys
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future
        self.state = QUEUED
        self.seq = 0
        self.blockers = 0
        self.admitted = 0.0
        self.deadline: float | None = None
        self.waited = 0.0
        # Set by Engine.take when the job must fail instead of running.
        self.error: BaseException | None = None

    def __lt__(self, other: Job) -> bool:
        # Lets heap entries be the jobs themselves (no tuple per push).
        return self.seq < other.seq


class Engine:
    """Per-key FIFO bookkeeping shared by the thread and asyncio runners.

    All methods: caller holds the runner's lock.
    """

    __slots__ = (
        "halt_on_error",
        "halted",
        "max_wait",
        "next_seq",
        "outcomes",
        "pending",
        "ready",
        "running",
        "shards",
        "submitted",
    )

    def __init__(self, *, halt_on_error: bool) -> None:
        self.shards: dict[Hashable, deque[Job]] = {}
        self.ready: list[Job] = []
        self.next_seq = 0
        self.pending = 0  # live jobs not started
        self.running = 0  # jobs taken and not yet released
        self.submitted = 0
        # completed, failed, cancelled, timed_out; indexed by outcome.
        self.outcomes = [0, 0, 0, 0]
        self.max_wait = 0.0
        self.halt_on_error = halt_on_error
        self.halted: dict[Hashable, BaseException] = {}

    # -- admission ---------------------------------------------------------

    def new_shards(self, keys: tuple[Hashable, ...]) -> int:
        """How many of ``keys`` have no live shard (would need a new one)."""
        shards = self.shards
        return sum(1 for key in keys if key not in shards)

    def admit(self, job: Job, now: float) -> None:
        """Append ``job`` to the shard of each of its keys, atomically.

        The job becomes runnable (pushed on ``ready``) if it heads every
        shard. Keys must be hashable and free of duplicates.
        """
        job.seq = seq = self.next_seq
        self.next_seq = seq + 1
        job.admitted = now
        blockers = 0
        shards = self.shards
        for key in job.keys:
            shard = shards.get(key)
            if shard is None:
                shards[key] = deque((job,))
            else:
                shard.append(job)
                blockers += 1
        job.blockers = blockers
        self.pending += 1
        self.submitted += 1
        if not blockers:
            heapq.heappush(self.ready, job)

    def admit_started(self, job: Job, now: float) -> bool:
        """Admit ``job`` and take it at once if it can start now.

        The same as ``admit(job, now)`` followed by ``take(now)`` when that
        take would return ``job``: it heads every shard and no older job is
        runnable (``ready`` is empty). Then the job is marked running, with
        ``error`` set if a key is halted, and True is returned. Otherwise
        the job is admitted as by ``admit`` and False is returned. The
        asyncio runner's fast path: an uncontended job skips the heap.
        """
        if self.ready:
            self.admit(job, now)
            return False
        job.seq = seq = self.next_seq
        self.next_seq = seq + 1
        job.admitted = now
        blockers = 0
        shards = self.shards
        for key in job.keys:
            shard = shards.get(key)
            if shard is None:
                shards[key] = deque((job,))
            else:
                shard.append(job)
                blockers += 1
        self.submitted += 1
        if blockers:
            job.blockers = blockers
            self.pending += 1
            return False
        job.state = RUNNING
        self.running += 1
        if self.halted:
            self._check_halted(job)
        return True

    # -- start -------------------------------------------------------------

    def take(self, now: float) -> Job | None:
        """Pop the oldest runnable job and mark it running, or return None.

        A job past its start deadline, or on a halted key, is still returned
        (so that its runner retires it through ``release``), with ``error``
        set to the exception its future must fail with; it must not run.
        """
        ready = self.ready
        while ready:
            job = heapq.heappop(ready)
            if job.state != QUEUED:
                continue  # killed while runnable: already out of its shards
            job.state = RUNNING
            self.pending -= 1
            self.running += 1
            job.waited = waited = now - job.admitted
            self.max_wait = max(self.max_wait, waited)
            if job.deadline is not None and now > job.deadline:
                job.error = StartTimeout(
                    f"job was not started within its start timeout (waited {waited:.3f}s)"
                )
            elif self.halted:
                self._check_halted(job)
            return job
        return None

    def _check_halted(self, job: Job) -> None:
        for key in job.keys:
            cause = self.halted.get(key)
            if cause is not None:
                error = KeyHalted(key)
                error.__cause__ = cause
                job.error = error
                return

    # -- retirement --------------------------------------------------------

    def release(self, job: Job, outcome: int, error: BaseException | None = None) -> None:
        """Retire a job that was taken: its keys move on to their next jobs.

        ``error`` is the job's own exception when ``outcome`` is FAILED; with
        ``halt_on_error`` it halts the job's keys.
        """
        self.running -= 1
        job.state = DONE
        self.outcomes[outcome] += 1
        if outcome == FAILED and self.halt_on_error and error is not None:
            for key in job.keys:
                self.halted[key] = error
        shards = self.shards
        for key in job.keys:
            shard = shards[key]
            shard.popleft()
            if shard:
                self._advance(key, shard)
            else:
                del shards[key]

    def kill(self, job: Job, outcome: int) -> bool:
        """Retire a job that has not started (cancelled or expired).

        Returns False, changing nothing, if the job was already taken or
        retired. The job leaves at once the shards it heads, so those keys
        move on; it stays in the others until it reaches their head (lazy
        removal keeps a cancel O(keys) instead of O(queue length)).
        """
        if job.state != QUEUED:
            return False
        job.state = DEAD
        self.pending -= 1
        self.outcomes[outcome] += 1
        shards = self.shards
        for key in job.keys:
            shard = shards[key]
            if shard[0] is job:
                shard.popleft()
                if shard:
                    self._advance(key, shard)
                else:
                    del shards[key]
        return True

    def _advance(self, key: Hashable, shard: deque[Job]) -> None:
        # The head of ``shard`` was just removed and ``shard`` is not empty.
        # Drop dead jobs that surface, then the new head is one step closer
        # to runnable.
        while shard:
            head = shard[0]
            if head.state == DEAD:
                shard.popleft()
                continue
            head.blockers -= 1
            if not head.blockers:
                heapq.heappush(self.ready, head)
            return
        del self.shards[key]

    # -- introspection -----------------------------------------------------

    def queued_jobs(self) -> list[Job]:
        """Every live job not started yet, oldest first."""
        seen: dict[int, Job] = {}
        for shard in self.shards.values():
            for job in shard:
                if job.state == QUEUED:
                    seen[job.seq] = job
        return [seen[seq] for seq in sorted(seen)]

    def resume(self, key: Hashable) -> bool:
        """Lift a halt; True if ``key`` was halted."""
        return self.halted.pop(key, None) is not None
