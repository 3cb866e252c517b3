"""DispatcherStats: a frozen snapshot of a dispatcher's state."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ._histogram import HistogramSnapshot

__all__ = ["DispatcherStats", "KeyInfo"]


@dataclass(frozen=True)
class DispatcherStats:
    """A consistent snapshot, taken under the dispatcher's lock.

    Attributes:
        max_workers: the bound on workers (threads, or coroutines running at
            once for the asyncio dispatcher).
        workers: worker threads alive now (asyncio: jobs running now).
        idle_workers: of those, waiting for work.
        active_shards: keys with pending or running work.
        max_shards: the bound on active shards.
        pending: admitted jobs not started yet.
        running: jobs started and not finished, ``exclusive`` blocks included.
        submitted: jobs admitted since creation.
        completed: jobs that returned.
        failed: jobs that raised, or failed with KeyHalted (by type:
            ``failures``).
        cancelled: jobs cancelled before they started.
        timed_out: jobs that failed with StartTimeout.
        halted_keys: keys halted now (``halt_on_error``).
        max_wait_s: the longest admission-to-start wait seen, in seconds.
        closed: shutdown has begun; no more admissions.
        superseded: jobs retired unstarted because a later job superseded them.
        retries: retries scheduled (attempts after a failed one).
        in_backoff: jobs waiting now for a retry (they hold their keys).
        paused_keys: keys paused now.
        failures: the failed jobs by exception type name (``__name__``), as
            ``(name, count)`` pairs, most frequent first. Bounded: the first
            32 distinct names get a count each; later new names count
            together under ``"<other>"``.
        wait: the histogram of admission-to-start waits, in seconds, of the
            jobs and ``exclusive`` blocks that started (one value per job:
            its first attempt; not those that failed or timed out before
            starting); None unless the dispatcher was created with
            ``metrics=True``.
        run: the histogram of run times, in seconds, one value per attempt:
            from the call of a job (the entry of a block) to its retirement,
            which for the thread dispatcher includes its future's
            done-callbacks (they run in the worker while the job still holds
            its keys); None unless ``metrics=True``.
    """

    max_workers: int
    workers: int
    idle_workers: int
    active_shards: int
    max_shards: int
    pending: int
    running: int
    submitted: int
    completed: int
    failed: int
    cancelled: int
    timed_out: int
    halted_keys: int
    max_wait_s: float
    closed: bool
    superseded: int = 0
    retries: int = 0
    in_backoff: int = 0
    paused_keys: int = 0
    failures: tuple[tuple[str, int], ...] = ()
    wait: HistogramSnapshot | None = None
    run: HistogramSnapshot | None = None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a plain dict (for JSON endpoints and logs).

        The histograms become dicts of their fields (``count``, ``sum``,
        ``bounds``, ``counts``) and ``failures`` a list of pairs: JSON-safe.
        """
        return asdict(self)


@dataclass(frozen=True)
class KeyInfo:
    """A snapshot of one key (``key_info``, ``keys``).

    Attributes:
        key: the key.
        pending: its jobs not started yet (a job waiting for a retry excluded).
        running: one of its jobs is running now.
        oldest_wait_s: how long its oldest pending job has waited, in seconds.
        halted: halted by a failed job (``halt_on_error``) until ``resume``.
        paused: paused by ``pause`` until ``resume``.
        in_backoff: its head job failed an attempt and waits for a retry.
    """

    key: Any
    pending: int
    running: bool
    oldest_wait_s: float
    halted: bool
    paused: bool
    in_backoff: bool
