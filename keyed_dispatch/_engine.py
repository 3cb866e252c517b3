"""The ordering engine: per-key queues, readiness and retirement of jobs.

This module decides *which* job may start; it runs nothing and owns no
thread. Two runners drive it: the thread pool of ``_thread.py`` and the
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

Fairness
--------
Runnable jobs wait in ``ready``, a heap ordered by ``seq`` (the admission
sequence): a free worker always takes the oldest runnable job. A key whose
next job is the oldest runnable one keeps its worker without a hand-off; a
key whose next job is younger than a waiting job goes behind it. That also
serves the critical path: a hot key that falls behind holds the oldest jobs,
so it is served first and its chain is not delayed.

One bound on top, so that a long backlog admitted *before* other keys' jobs
does not make them wait for all of it: a key that has run ``HOT_BATCH`` jobs
in a row, each older than every waiting job, lets the oldest waiting job go
first (its next job takes a ``seq`` just behind that one). So a waiting job
gets a worker after at most ``HOT_BATCH`` jobs of each key ahead of it, and
a hot key gives up one turn per ``HOT_BATCH`` jobs, not its place in line.
While nothing waits (a worker is free), a key's chain is never delayed.

Runnable ``exclusive`` blocks wait in ``ready_blocks`` instead: they run in
their caller's thread, so they are granted at once and never wait for a
worker behind jobs.
"""

from __future__ import annotations

import heapq
import logging
from collections import deque
from collections.abc import Callable, Hashable
from typing import Any

from ._config import DispatcherConfig
from ._errors import KeyHalted, StartTimeout
from ._histogram import Timings
from ._keys import KeysText
from ._stats import DispatcherStats

__all__ = [
    "CANCELLED",
    "COMPLETED",
    "FAILED",
    "HOT_BATCH",
    "MAX_FAILURE_TYPES",
    "QUEUED",
    "RUNNING",
    "SUPERSEDED",
    "TIMED_OUT",
    "Engine",
    "Job",
    "outcome_of",
]

logger = logging.getLogger("keyed_dispatch")

# Job states (ints: compared on the hot path).
QUEUED = 0  # admitted, not started; in its shards, maybe in ``ready``
RUNNING = 1  # taken by a runner; at the head of all its shards
DONE = 2  # retired: out of every shard
DEAD = 3  # cancelled or expired before start; left in shards lazily
BACKOFF = 4  # an attempt failed and a retry is due later; heads all its shards

# Jobs a key may run in a row ahead of waiting jobs of other keys before it
# lets the oldest of them go first (see "Fairness" above).
HOT_BATCH = 16

# Outcomes passed to Engine.release, indexes into Engine.outcomes.
COMPLETED = 0
FAILED = 1
CANCELLED = 2
TIMED_OUT = 3
SUPERSEDED = 4

# Failures are counted by exception type name, for the first this many
# names seen; later new names count under OTHER_FAILURES, so that the
# counts stay bounded whatever the jobs raise.
MAX_FAILURE_TYPES = 32
OTHER_FAILURES = "<other>"


def outcome_of(error: BaseException) -> int:
    """The outcome of a job taken with ``error`` set (see Engine.take)."""
    return TIMED_OUT if isinstance(error, StartTimeout) else FAILED


def _key_in(key: Hashable, keys: set[Hashable] | dict[Hashable, Any]) -> bool:
    # ``key in keys`` for the halted and paused tables, which outlive shards:
    # there a key whose __eq__ raises can meet any later key, inside a take
    # or a release, where an exception would leave a job half-started. A key
    # that cannot be compared is not that key.
    try:
        return key in keys
    except Exception:  # noqa: BLE001 - a user's __eq__; see above
        return False


def _same_key(a: object, b: object) -> bool:
    # Whether two keys are one for a dict, without raising.
    if a is b:
        return True
    try:
        return hash(a) == hash(b) and bool(a == b)
    except Exception:  # noqa: BLE001 - a user's __eq__ or __hash__; see _key_in
        return False


class _Orphan:
    """Stands for a key that a mutation made equal to another live key.

    Hashed and compared by identity: the shard filed under it stays apart
    from the other key's, reachable by its jobs (see Engine._refile).
    """

    __slots__ = ()


def _refiled(shards: dict[Hashable, Any]) -> dict[Hashable, Any]:
    # The shard table re-hashed under the keys' current hashes (a key whose
    # hash changed is found again). A key that now equals another, or
    # cannot be compared with it, keeps its shard under an _Orphan.
    refiled: dict[Hashable, Any] = {}
    for stored, shard in shards.items():
        try:
            clash = stored in refiled
        except Exception:  # noqa: BLE001 - a user's __eq__ or __hash__; its shard is kept apart
            clash = True
        refiled[_Orphan() if clash else stored] = shard
    return refiled


class Job:
    """One admitted unit of work (or an ``exclusive`` block, ``fn is None``).

    The runner's future lives in ``future``; the engine never touches it.
    """

    __slots__ = (
        "admitted",
        "args",
        "attempt",
        "blockers",
        "deadline",
        "error",
        "failure",
        "first_start",
        "fn",
        "future",
        "keys",
        "kwargs",
        "options",
        "seq",
        "started",
        "state",
        "streak",
        "waited",
    )

    def __init__(
        self,
        keys: tuple[Hashable, ...],
        fn: Callable[..., Any] | None,
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
        future: Any,
        *,
        options: Any = None,
    ) -> None:
        self.keys = keys
        # The runner's per-job policies (retry, supersede), or None; the
        # engine reads only ``options.supersede``.
        self.options = options
        # Attempts started so far (retries count); 1 once it first starts.
        self.attempt = 0
        self.first_start = 0.0
        # The exception of the last failed attempt, while a retry is due.
        self.failure: BaseException | None = None
        self.fn = fn
        self.args = args
        self.kwargs = kwargs
        self.future = future
        self.state = QUEUED
        # Admission sequence, unique per engine: the job's place in
        # ``ready`` (a job that yields its turn, a hot key's, see HOT_BATCH,
        # is pushed with a later place) and its number in job ids.
        self.seq = 0
        self.blockers = 0
        # Jobs of this job's key that ran in a row ahead of waiting jobs,
        # this one excluded (single-key chains only; see HOT_BATCH).
        self.streak = 0
        self.admitted = 0.0
        self.deadline: float | None = None
        self.waited = 0.0
        # When the runner called the job's current attempt (metrics only:
        # see Engine.timings).
        self.started: float | None = None
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
        "_backoff",
        "_failures",
        "_halt_on_error",
        "_halted",
        "_max_wait",
        "_next_seq",
        "_outcomes",
        "_parked",
        "_paused",
        "_pending",
        "_ready",
        "_ready_blocks",
        "_retries",
        "_running",
        "_shards",
        "_submitted",
        "timings",
    )

    def __init__(self, *, halt_on_error: bool, metrics: bool = False) -> None:
        # A key's shard: the job itself while it is the key's only one (no
        # deque for the common case: a deque costs ~600 bytes), else a deque.
        self._shards: dict[Hashable, Job | deque[Job]] = {}
        # (place, job) entries, place = the seq but for a yielded turn (see
        # _advance): tuples compare in C, cheaper than Job.__lt__.
        self._ready: list[tuple[float, Job]] = []
        # Runnable exclusive blocks (fn is None) wait here instead of in
        # ``ready``: they run in their caller's thread, so they must not
        # queue for a worker behind jobs (take_block).
        self._ready_blocks: list[Job] = []
        self._next_seq = 0
        self._pending = 0  # live jobs not started
        self._running = 0  # jobs taken and not yet released
        self._submitted = 0
        # completed, failed, cancelled, timed_out, superseded; by outcome.
        self._outcomes = [0, 0, 0, 0, 0]
        self._max_wait = 0.0
        self._halt_on_error = halt_on_error
        self._halted: dict[Hashable, BaseException] = {}
        # Paused keys start nothing; their runnable jobs wait in ``_parked``
        # (still queued: cancel and start deadlines apply) until resume().
        self._paused: set[Hashable] = set()
        self._parked: list[Job] = []
        self._backoff = 0  # jobs waiting for a retry (state BACKOFF)
        self._retries = 0  # retries scheduled since creation
        # Failed jobs by exception type name (bounded: MAX_FAILURE_TYPES).
        self._failures: dict[str, int] = {}
        # The wait and run histograms (metrics=True), or None. The engine
        # records a job's wait when it first starts; runners record the run
        # time of each attempt.
        self.timings = Timings() if metrics else None

    # -- admission ---------------------------------------------------------

    def new_shards(self, keys: tuple[Hashable, ...]) -> int:
        """How many of ``keys`` have no live shard (would need a new one)."""
        shards = self._shards
        return sum(1 for key in keys if key not in shards)

    def admit(self, job: Job, now: float) -> None:
        """Append ``job`` to the shard of each of its keys, atomically.

        The job becomes runnable (pushed on ``ready``) if it heads every
        shard. Keys must be hashable and free of duplicates.
        """
        blockers = self._place(job, now)
        self._pending += 1
        if not blockers:
            if job.fn is None:
                self._ready_blocks.append(job)
            else:
                heapq.heappush(self._ready, (job.seq, job))

    def _place(self, job: Job, now: float) -> int:
        # Number the job and append it to each of its keys' shards; returns
        # (and records) the shards it does not head. All or nothing: a key
        # lookup can raise (a key whose __eq__ raises on a hash collision),
        # and a job left in some of its shards would block those keys for
        # ever; so what was placed is taken back, and nothing is counted
        # before every key has its place.
        blockers = 0
        shards = self._shards
        # (key, what its shard was before): how to take the job back out.
        undo: list[tuple[Hashable, Job | deque[Job] | None]] = []
        try:
            for key in job.keys:
                shard = shards.get(key)
                if shard is None:
                    shards[key] = job
                else:
                    if isinstance(shard, deque):
                        shard.append(job)
                    else:
                        shards[key] = deque((shard, job))
                    blockers += 1
                undo.append((key, shard))
        except BaseException:
            self._unplace(job, undo)
            raise
        job.seq = seq = self._next_seq
        self._next_seq = seq + 1
        job.admitted = now
        job.blockers = blockers
        self._submitted += 1
        return blockers

    def _unplace(self, job: Job, undo: list[tuple[Hashable, Job | deque[Job] | None]]) -> None:
        # Take ``job`` back out of the shards _place put it in, after a key
        # lookup raised. It is the last job of each of them.
        shards = self._shards
        lost = False
        for key, before in reversed(undo):
            if isinstance(before, deque):
                before.pop()
                continue
            try:
                if before is None:
                    del shards[key]
                else:
                    shards[key] = before
            except Exception:  # noqa: BLE001 - a key whose hash or __eq__ misbehaves: see below
                lost = True
        if lost:
            # Some key is not found by its hash any more: re-file the table
            # and drop the job from it by identity (see _refile).
            repaired: dict[Hashable, Any] = {}
            for stored, shard in _refiled(shards).items():
                if shard is job:
                    continue
                kept: Job | deque[Job] = shard
                if isinstance(shard, deque) and shard[-1] is job:
                    shard.pop()
                    if len(shard) == 1 and any(before is shard[0] for _, before in undo):
                        kept = shard[0]  # the lone job it was before
                repaired[stored] = kept
            self._shards = repaired

    def _pop_head(self, key: Hashable, job: Job) -> deque[Job] | None:
        # Remove ``job``, the head of ``key``'s shard; return the rest, or
        # None (and drop the shard) if nothing is left.
        shard = self._shards.get(key)
        if shard is not job and not (isinstance(shard, deque) and shard[0] is job):
            # Not found, or another shard: the key's hash changed (_refile).
            key = self._refile(key, job)
            shard = self._shards[key]
        shards = self._shards
        if isinstance(shard, deque):
            shard.popleft()
            if shard:
                return shard
        del shards[key]
        if not shards:
            # A dict never shrinks: let a drained table go, so that idle
            # keys cost nothing after a burst of many keys.
            self._shards = {}
        return None

    def admit_started(self, job: Job, now: float) -> bool:
        """Admit ``job`` and take it at once if it can start now.

        The same as ``admit(job, now)`` followed by ``take(now)`` when that
        take would return ``job``: it heads every shard and no older job is
        runnable (``ready`` is empty). Then the job is marked running, with
        ``error`` set if a key is halted, and True is returned. Otherwise
        the job is admitted as by ``admit`` and False is returned. The
        asyncio runner's fast path: an uncontended job skips the heap.
        """
        if self._ready or self._paused:
            self.admit(job, now)
            return False
        if self._place(job, now):
            self._pending += 1
            return False
        job.state = RUNNING
        job.attempt = 1
        job.first_start = now
        self._running += 1
        if self._halted:
            self._check_halted(job)
        if self.timings is not None and job.error is None:
            self.timings.wait.add(0.0)
        return True

    def admit_one(
        self, job: Job, keys: tuple[Hashable, ...], now: float, max_shards: int, max_pending: int | None
    ) -> bool | None:
        """Admit ``job`` on ``keys`` (one key) the short way; True if it started at once.

        The asyncio runner's fast path for inline jobs (``run``, no
        options). If the key is idle, no job is runnable (waiting for a
        worker), no key is paused or halted and the bounds leave room (as
        ``fits``), ``job`` is admitted and started, as by ``admit_started``,
        and True is returned. If the key has jobs and ``max_pending`` leaves
        room, ``job`` is admitted behind them, as by ``admit``, and False is
        returned. Otherwise nothing changes and None is returned: the runner
        admits the job its usual way.

        ``job`` is new, or a job that this method admitted and that ran and
        was released since: every field that admission, start and
        retirement change is set again, so that a runner may reuse it.
        """
        if max_pending is not None and self._pending >= max_pending:
            return None
        shards = self._shards
        key = keys[0]
        # The lookup and the store may raise (a key whose __eq__ raises on a
        # hash collision): nothing is changed before they succeeded.
        shard = shards.get(key)
        if shard is None:
            if self._ready or self._paused or self._halted or len(shards) >= max_shards:
                return None
            shards[key] = job
            started = True
        else:
            if isinstance(shard, deque):
                shard.append(job)
            else:
                shards[key] = deque((shard, job))
            started = False
        job.keys = keys
        job.seq = seq = self._next_seq
        self._next_seq = seq + 1
        job.admitted = now
        self._submitted += 1
        if not started:
            # streak and waited are set when it becomes runnable and starts.
            job.state = QUEUED
            job.attempt = 0
            job.blockers = 1
            self._pending += 1
            return False
        job.state = RUNNING
        job.attempt = 1
        job.blockers = job.streak = 0
        job.waited = 0.0
        job.first_start = now
        self._running += 1
        timings = self.timings
        if timings is not None:
            # wait.add(0.0), at a third of the cost: a wait of 0 s goes to the
            # first bucket and adds nothing to the total.
            timings.wait.counts[0] += 1
        return True

    def release_alone(self, job: Job) -> bool:
        """``release(job, COMPLETED)`` for a running job on one key, if nothing follows from it.

        That is when no job is queued behind it on its key and none is
        runnable (waiting for a worker): then it is retired and True is
        returned. Otherwise (or for a job on several keys) nothing changes
        and False is returned: the runner retires it with ``finish`` or
        ``release``, which start what can start.
        """
        keys = job.keys
        if self._ready or len(keys) != 1:
            return False
        shards = self._shards
        key = keys[0]
        if shards.get(key) is not job:
            return False  # jobs queued behind it, or its key's hash changed
        del shards[key]
        if not shards:
            self._shards = {}  # see _pop_head
        self._running -= 1
        job.state = DONE
        self._outcomes[COMPLETED] += 1
        return True

    # -- start -------------------------------------------------------------

    def take(self, now: float) -> Job | None:
        """Pop the oldest runnable job and mark it running, or return None.

        A job past its start deadline, or on a halted key, is still returned
        (so that its runner retires it through ``release``), with ``error``
        set to the exception its future must fail with; it must not run.
        """
        ready = self._ready
        while ready:
            job = heapq.heappop(ready)[1]
            if job.state == QUEUED:
                if self._paused and self._park(job):
                    continue
                return self._start(job, now)
            # Killed while runnable: already out of its shards.
        return None

    def _park(self, job: Job) -> bool:
        # A runnable job on a paused key waits in ``_parked`` instead.
        paused = self._paused
        for key in job.keys:
            if _key_in(key, paused):
                self._parked.append(job)
                return True
        return False

    def runnable_jobs(self) -> list[Job]:
        """The jobs ``take`` may start now, in the order it would take them (O(n log n)).

        For a runner that chooses which runnable job goes next (the
        simulator of ``keyed_dispatch.testing``); see ``take_job``.
        """
        return [job for _, job in sorted(self._ready) if job.state == QUEUED]

    def take_job(self, job: Job, now: float) -> Job:
        """Mark ``job``, one of ``runnable_jobs()``, running: ``take`` for a chosen job (O(n)).

        As with ``take``, ``error`` is set when the job must fail instead
        of running.

        Raises:
            ValueError: ``job`` is not runnable now.
        """
        ready = self._ready
        entry = next((entry for entry in ready if entry[1] is job), None) if job.state == QUEUED else None
        if entry is None:
            raise ValueError("the job is not runnable")
        ready.remove(entry)
        heapq.heapify(ready)
        return self._start(job, now)

    def _start(self, job: Job, now: float) -> Job:
        job.state = RUNNING
        attempt = job.attempt = job.attempt + 1
        self._pending -= 1
        self._running += 1
        job.waited = waited = now - job.admitted
        if attempt == 1:
            job.first_start = now
            if waited > self._max_wait:
                self._max_wait = waited
        if job.deadline is not None:
            if now > job.deadline:
                job.error = StartTimeout(
                    f"job was not started within its start timeout (waited {waited:.3f}s)"
                )
            # A start deadline bounds the first start only, not retries.
            job.deadline = None
        if self._halted and job.error is None:
            self._check_halted(job)
        timings = self.timings
        if timings is not None and attempt == 1 and job.error is None:
            timings.wait.add(waited)
        return job

    def finish(
        self, job: Job, outcome: int, error: BaseException | None, now: float, covered: int = 0
    ) -> Job | None:
        """``release(job, ...)`` then ``take(now)``, for a runner that is free.

        The fast path of a key's chain: when the job's successor on its one
        key becomes runnable and is older than every other runnable job, it
        is started directly, without a trip through the heap. The choice is
        the one ``take`` would make. ``covered``: runnable jobs that another
        runner is already on its way to take; while no more are waiting,
        nothing waits for this runner, and the chain goes on without a
        hand-off.
        """
        keys = job.keys
        if len(keys) != 1 or (outcome == FAILED and self._halt_on_error) or self._paused:
            self.release(job, outcome, error)
            return self.take(now)
        self._running -= 1
        job.state = DONE
        self._outcomes[outcome] += 1
        if outcome == FAILED:
            self._count_failure(job, error)
        key = keys[0]
        shards = self._shards
        shard = shards.get(key)
        if shard is not job and not (isinstance(shard, deque) and shard[0] is job):
            # Not found, or another shard: the key's hash changed (_refile).
            key = self._refile(key, job)
            shards = self._shards
            shard = shards[key]
        if isinstance(shard, deque):
            shard.popleft()
        if shard is job or not shard:
            # _pop_head(key), inlined on the hot path: the key is idle now.
            del shards[key]
            if not shards:
                self._shards = {}
            return self.take(now) if self._ready else None
        if isinstance(shard, deque):
            head = shard[0]
            if head.state == QUEUED and head.blockers == 1 and head.fn is not None:
                # The successor needs only this key (blocks go to
                # ready_blocks). Run it here if take() would pick it: nothing
                # waits, or it is the oldest runnable job and its key has
                # not used up its batch ahead of the waiting ones.
                ready = self._ready
                if len(ready) <= covered:
                    head.blockers = 0
                    head.streak = 0
                    return self._start(head, now)
                streak = job.streak + 1
                if streak < HOT_BATCH and head.seq < ready[0][0]:
                    head.blockers = 0
                    head.streak = streak
                    return self._start(head, now)
                # _advance then take, fused: the successor joins ``ready``
                # as _advance would place it, and the oldest runnable job
                # comes off it in the same heap operation (the successor
                # itself if ``ready`` held only killed jobs).
                head.blockers = 0
                place = self._ready_place(head, streak)
                return self._start(heapq.heappushpop(ready, (place, head))[1], now)
            self._advance(key, shard, job.streak + 1)
        return self.take(now)

    def take_block(self, now: float) -> Job | None:
        """Pop a runnable exclusive block and mark it running, or return None.

        Blocks need no worker, so a runner grants them as soon as they are
        runnable, ahead of the jobs in ``ready``. ``error`` is set (KeyHalted)
        when the block must fail instead of running.
        """
        blocks = self._ready_blocks
        while blocks:
            job = blocks.pop()
            if job.state == QUEUED:
                if self._paused and self._park(job):
                    continue
                return self._start(job, now)
            # Killed while runnable: already out of its shards.
        return None

    def _check_halted(self, job: Job) -> None:
        halted = self._halted
        for key in job.keys:
            cause = halted.get(key) if _key_in(key, halted) else None
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
        self._running -= 1
        job.state = DONE
        self._outcomes[outcome] += 1
        if outcome == FAILED:
            self._count_failure(job, error)
            if self._halt_on_error and error is not None:
                for key in job.keys:
                    try:
                        self._halted[key] = error
                    except Exception:
                        logger.exception(
                            "cannot halt %s: comparing it with a halted key failed", KeysText((key,))
                        )
        # A chain's streak counts single-key jobs only: a multi-key job
        # already waited for several keys.
        streak = job.streak + 1 if len(job.keys) == 1 else 0
        for key in job.keys:
            shard = self._pop_head(key, job)
            if shard is not None:
                self._advance(key, shard, streak)

    def _count_failure(self, job: Job, error: BaseException | None) -> None:
        # ``error``: the job's own exception, else the one it was failed
        # with (KeyHalted...).
        cause = error if error is not None else job.error
        name = type(cause).__name__ if cause is not None else OTHER_FAILURES
        failures = self._failures
        if name in failures:
            failures[name] += 1
        elif len(failures) < MAX_FAILURE_TYPES:
            failures[name] = 1
        else:
            failures[OTHER_FAILURES] = failures.get(OTHER_FAILURES, 0) + 1

    def kill(self, job: Job, outcome: int) -> bool:
        """Retire a job that has not started (cancelled or expired).

        Returns False, changing nothing, if the job was already taken or
        retired. The job leaves at once the shards it heads, so those keys
        move on; it stays in the others until it reaches their head (lazy
        removal keeps a cancel O(keys) instead of O(queue length)).
        """
        state = job.state
        if state == BACKOFF:
            # Waiting for a retry: it heads all its shards, like a running job.
            self._backoff -= 1
            self._running += 1  # release() counts it down again
            self.release(job, outcome)
            return True
        if state != QUEUED:
            return False
        job.state = DEAD
        self._pending -= 1
        self._outcomes[outcome] += 1
        for wanted in job.keys:
            key = wanted
            try:
                shard = self._shards[key]
            except KeyError:
                key = self._refile(key, job)
                shard = self._shards[key]
            if shard is job or (isinstance(shard, deque) and shard[0] is job):
                rest = self._pop_head(key, job)
                if rest is not None:
                    self._advance(key, rest)
        return True

    def _refile(self, key: Hashable, job: Job) -> Hashable:
        # ``key`` of ``job`` is not found: its hash changed after admission
        # (a mutated key: a user error, which must still not wedge the
        # dispatcher). Re-file the table under the keys' current hashes and
        # return the key under which ``job``'s shard is filed now.
        self._shards = refiled = _refiled(self._shards)
        # The job is in the shards of its other keys too: skip those.
        others = [other for other in job.keys if other is not key]
        for stored, shard in refiled.items():
            if (shard is job or (isinstance(shard, deque) and job in shard)) and not any(
                _same_key(stored, other) for other in others
            ):
                return stored
        raise KeyError(key)

    def _advance(self, key: Hashable, shard: deque[Job], streak: int = 0) -> None:
        # The head of ``shard`` was just removed and ``shard`` is not empty.
        # Drop dead jobs that surface, then the new head is one step closer
        # to runnable. ``streak``: jobs of this key that ran in a row, the
        # removed one included (0 if it was not a run of this chain).
        while shard:
            head = shard[0]
            if head.state == DEAD:
                shard.popleft()
                continue
            head.blockers -= 1
            if not head.blockers:
                if head.fn is None:
                    self._ready_blocks.append(head)
                    return
                heapq.heappush(self._ready, (self._ready_place(head, streak), head))
            return
        # Only dead jobs were left: the key is idle.
        try:
            found = self._shards.get(key)
        except Exception:  # noqa: BLE001 - a user's __eq__ or __hash__; handled as not found
            found = None
        if found is shard:
            del self._shards[key]
        else:
            # Its hash changed (see _refile): drop the shard by identity.
            refiled = _refiled(self._shards)
            self._shards = {stored: other for stored, other in refiled.items() if other is not shard}
        if not self._shards:
            self._shards = {}

    def _ready_place(self, head: Job, streak: int) -> float:
        # Where ``head``, a key's new runnable head, joins ``ready``, whose
        # killed entries on top are dropped first; sets its streak. ``streak``:
        # as for _advance.
        ready = self._ready
        while ready and ready[0][1].state != QUEUED:
            heapq.heappop(ready)  # killed while runnable
        if not ready or head.seq > ready[0][0]:
            head.streak = 0  # nothing waits, or it queues behind
            return head.seq
        if streak >= HOT_BATCH:
            # Its batch is used up: the oldest waiting job goes first (its
            # place in ``ready`` changes, not its seq).
            head.streak = 0
            return ready[0][0] + 0.5
        head.streak = streak
        return head.seq

    # -- key policies ------------------------------------------------------

    def backoff(self, job: Job) -> None:
        """Hold a running job that failed an attempt until its retry is due.

        It stays at the head of every shard, so later jobs of its keys wait;
        it holds no worker. ``ready_again`` makes it runnable; ``kill``
        retires it (a cancel during the backoff).
        """
        job.state = BACKOFF
        self._running -= 1
        self._backoff += 1
        self._retries += 1

    def ready_again(self, job: Job, now: float) -> bool:
        """The backoff of ``job`` is over: it is runnable (first in line, by its seq).

        Returns False if the job left its backoff otherwise (cancelled).
        """
        if job.state != BACKOFF:
            return False
        job.state = QUEUED
        job.admitted = now
        self._backoff -= 1
        self._pending += 1
        if job.fn is None:
            self._ready_blocks.append(job)
        else:
            heapq.heappush(self._ready, (job.seq, job))
        return True

    def superseded_by(self, keys: tuple[Hashable, ...]) -> list[Job]:
        """The jobs a new job on ``keys`` supersedes, oldest first (still queued).

        Those are the jobs that opted in (``options.supersede``), have never
        started, and whose keys are all among ``keys``: a job on {A, B} also
        carries B's update, so a job on {A} does not supersede it. The
        runner retires each with ``kill(job, SUPERSEDED)``. O(queued jobs of
        ``keys``).
        """
        wanted = set(keys)
        doomed: dict[int, Job] = {}
        shards = self._shards
        for key in keys:
            shard = shards.get(key)
            if shard is None:
                continue
            for job in shard if isinstance(shard, deque) else (shard,):
                options = job.options
                if (
                    job.state == QUEUED
                    and not job.attempt
                    and options is not None
                    and options.supersede
                    and wanted.issuperset(job.keys)
                ):
                    doomed[id(job)] = job
        return sorted(doomed.values(), key=lambda job: job.seq)

    def pause(self, key: Hashable) -> bool:
        """Hold ``key``: none of its jobs starts until ``resume``; True if it was not paused."""
        if key in self._paused:
            return False
        self._paused.add(key)
        return True

    def jobs_on(self, key: Hashable) -> list[Job]:
        """The jobs of ``key`` that are not running: queued or waiting for a retry."""
        shard = self._shards.get(key)
        if shard is None:
            return []
        return [
            job for job in (shard if isinstance(shard, deque) else (shard,)) if job.state in (QUEUED, BACKOFF)
        ]

    def key_info(self, key: Hashable, now: float) -> tuple[int, bool, float, bool, bool, bool]:
        """(pending, running, oldest wait, halted, paused, in backoff) of ``key``."""
        pending = 0
        running = backoff = False
        oldest: float | None = None
        shard = self._shards.get(key)
        if shard is not None:
            for job in shard if isinstance(shard, deque) else (shard,):
                state = job.state
                if state == QUEUED:
                    pending += 1
                    if oldest is None or job.admitted < oldest:
                        oldest = job.admitted
                elif state == RUNNING:
                    running = True
                elif state == BACKOFF:
                    backoff = True
        wait = 0.0 if oldest is None else max(0.0, now - oldest)
        return pending, running, wait, key in self._halted, key in self._paused, backoff

    def known_keys(self) -> list[Hashable]:
        """Every key with work, a halt or a pause (O(keys))."""
        return list(dict.fromkeys([*self._shards, *self._halted, *self._paused]))

    # -- introspection -----------------------------------------------------
    # Runners read the engine's state only through these: its fields are its
    # own. Each is O(1) unless it says otherwise.

    def fits(self, keys: tuple[Hashable, ...], max_shards: int, max_pending: int | None) -> bool:
        """Whether a job on ``keys`` can be admitted under these bounds now."""
        if max_pending is not None and self._pending >= max_pending:
            return False
        nshards = len(self._shards)
        # The first test is a cheap bound that spares counting new keys
        # while the pool is far from full.
        return nshards + len(keys) <= max_shards or nshards + self.new_shards(keys) <= max_shards

    def shards_full(self, keys: tuple[Hashable, ...], max_shards: int) -> bool:
        """Whether ``keys`` need more new shards than ``max_shards`` leaves (O(keys))."""
        return len(self._shards) + self.new_shards(keys) > max_shards

    def has_ready(self) -> bool:
        """Whether a job is runnable and waits for a worker."""
        return bool(self._ready)

    def ready_count(self) -> int:
        """How many jobs may be runnable and waiting for a worker, at most.

        An upper bound: a job killed while runnable is counted until a take
        meets it.
        """
        return len(self._ready)

    def has_blocks(self) -> bool:
        """Whether an ``exclusive`` block is runnable and waits for its grant."""
        return bool(self._ready_blocks)

    def has_runnable(self) -> bool:
        """Whether a job or a block is runnable."""
        return bool(self._ready or self._ready_blocks)

    def idle(self) -> bool:
        """Whether no admitted job is left (none pending, running or in backoff)."""
        return not (self._pending or self._running or self._backoff)

    def live_keys(self) -> int:
        """How many keys have pending or running work (live shards)."""
        return len(self._shards)

    def halted_keys(self) -> frozenset[Hashable]:
        """The keys halted now."""
        return frozenset(self._halted)

    def stats(
        self, config: DispatcherConfig, *, workers: int, idle_workers: int, closed: bool
    ) -> DispatcherStats:
        """A snapshot of the engine's counters, with the runner's own figures."""
        completed, failed, cancelled, timed_out, superseded = self._outcomes
        return DispatcherStats(
            max_workers=config.max_workers,
            workers=workers,
            idle_workers=idle_workers,
            active_shards=len(self._shards),
            max_shards=config.max_shards,
            pending=self._pending,
            running=self._running,
            submitted=self._submitted,
            completed=completed,
            failed=failed,
            cancelled=cancelled,
            timed_out=timed_out,
            halted_keys=len(self._halted),
            max_wait_s=self._max_wait,
            closed=closed,
            superseded=superseded,
            retries=self._retries,
            in_backoff=self._backoff,
            paused_keys=len(self._paused),
            failures=tuple(sorted(self._failures.items(), key=lambda item: (-item[1], item[0]))),
            wait=None if self.timings is None else self.timings.wait.snapshot(),
            run=None if self.timings is None else self.timings.run.snapshot(),
        )

    def queued_jobs(self) -> list[Job]:
        """Every live job not running: not started yet or waiting for a retry; oldest first."""
        seen: dict[int, Job] = {}
        for shard in self._shards.values():
            for job in shard if isinstance(shard, deque) else (shard,):
                if job.state in (QUEUED, BACKOFF):
                    seen[id(job)] = job
        return sorted(seen.values(), key=lambda job: job.seq)

    def resume(self, key: Hashable) -> bool:
        """Lift a halt or a pause of ``key``; True if it had either.

        The jobs parked by the pause become runnable again unless another
        of their keys is still paused.
        """
        halted = _key_in(key, self._halted) and self._halted.pop(key, None) is not None
        if not _key_in(key, self._paused):
            return halted
        self._paused.discard(key)
        parked = self._parked
        self._parked = []
        for job in parked:
            if job.state != QUEUED:
                continue  # cancelled or expired while parked
            if self._paused and self._park(job):
                continue
            if job.fn is None:
                self._ready_blocks.append(job)
            else:
                heapq.heappush(self._ready, (job.seq, job))
        return True
