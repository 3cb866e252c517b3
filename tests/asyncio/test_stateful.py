"""A RuleBasedStateMachine against AsyncKeyedDispatcher.

The model is the specification itself: live jobs in admission order, and a
job may run exactly when it is the oldest live job on each of its keys
(``max_concurrency`` is large enough not to bound anything here). Every job
holds until a rule releases it, so after each rule the set of jobs running
must be exactly the model's runnable set, and the counters must agree.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyed_dispatch import AsyncKeyedDispatcher
from keyed_dispatch.testing import OrderRecorder
from tests.asyncio_support import WAIT

KEYS = ("a", "b", "c", "d")
key_sets = st.one_of(
    st.sampled_from(KEYS).map(lambda key: (key,)),
    st.lists(st.sampled_from(KEYS), min_size=2, max_size=3, unique=True).map(tuple),
)


@dataclass(eq=False)
class Entry:
    keys: tuple[Hashable, ...]
    kind: str  # "submit" (a task per job) or "run" (inline in a caller task)
    fail: bool = False
    started: asyncio.Event = field(default_factory=asyncio.Event)
    finished: asyncio.Event = field(default_factory=asyncio.Event)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    handle: Any = None  # the job's future (submit) or the caller task (run)
    wrapped: Any = None  # the recorder's wrapper of the job


class AsyncDispatcherMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = asyncio.new_event_loop()
        self.reported: list[dict[str, Any]] = []
        self.loop.set_exception_handler(lambda loop, context: self.reported.append(context))
        self.ad = AsyncKeyedDispatcher(1000)
        self.rec = OrderRecorder()
        self.live: list[Entry] = []  # admitted, not retired, oldest first
        self.retired = 0

    def _run(self, awaitable: Any) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(awaitable, WAIT))

    def _job(self, entry: Entry) -> None:
        async def job() -> None:
            entry.started.set()
            try:
                await entry.gate.wait()
                if entry.fail:
                    raise ValueError("failed on purpose")
            finally:
                entry.finished.set()

        entry.wrapped = self.rec.wrap(entry.keys, job)

    def runnable(self) -> list[Entry]:
        seen: set[Hashable] = set()
        heads = []
        for entry in self.live:
            if not seen.intersection(entry.keys):
                heads.append(entry)
            seen.update(entry.keys)
        return heads

    # -- rules -----------------------------------------------------------------

    @rule(keys=key_sets, kind=st.sampled_from(["submit", "run"]))
    def submit(self, keys: tuple[Hashable, ...], kind: str) -> None:
        entry = Entry(keys, kind)
        self._job(entry)
        wrapped = entry.wrapped
        if kind == "submit":
            entry.handle = self._run(self.rec.asubmit(self.ad, keys, wrapped))
        else:
            admitted = asyncio.Event()

            async def caller() -> None:
                self.rec.admitted(wrapped)
                admitted.set()
                await self.ad.run_multi(keys, wrapped)  # admitted in this step

            entry.handle = self.loop.create_task(caller())
            self._run(admitted.wait())
        self.live.append(entry)

    @precondition(lambda self: self.runnable())
    @rule(data=st.data(), fail=st.booleans())
    def finish_a_running_job(self, data: st.DataObject, fail: bool) -> None:
        entry = data.draw(st.sampled_from(self.runnable()))
        entry.fail = fail
        entry.gate.set()
        self._settle_finished(entry)

    @precondition(lambda self: self.runnable())
    @rule(data=st.data())
    def cancel_a_running_job(self, data: st.DataObject) -> None:
        entry = data.draw(st.sampled_from(self.runnable()))
        assert entry.handle.cancel()
        self._settle_finished(entry)

    @precondition(lambda self: len(self.runnable()) < len(self.live))
    @rule(data=st.data())
    def cancel_a_queued_job(self, data: st.DataObject) -> None:
        queued = [entry for entry in self.live if entry not in self.runnable()]
        entry = data.draw(st.sampled_from(queued))
        assert entry.handle.cancel()
        if entry.kind == "run":
            # The caller task is cancelled; the job leaves when it unwinds.
            self._run(asyncio.wait([entry.handle]))
        self.rec.expect(entry.wrapped, ran=False)
        self.live.remove(entry)
        self.retired += 1
        assert not entry.started.is_set()

    def _settle_finished(self, entry: Entry) -> None:
        self._run(entry.finished.wait())
        self._run(asyncio.wait([entry.handle]))
        if not entry.handle.cancelled():
            # Retrieve it, as an application would: asyncio logs a failure
            # that nobody looked at.
            assert isinstance(entry.handle.exception(), ValueError) == entry.fail
        self.live.remove(entry)
        self.retired += 1

    # -- invariants ----------------------------------------------------------------

    @invariant()
    def exactly_the_runnable_jobs_run(self) -> None:
        runnable = self.runnable()
        for entry in runnable:
            self._run(entry.started.wait())
        started = [entry for entry in self.live if entry.started.is_set()]
        assert started == runnable
        stats = self.ad.stats()
        assert stats.running == len(runnable)
        assert stats.pending == len(self.live) - len(runnable)
        assert stats.active_shards == len({key for entry in self.live for key in entry.keys})
        assert stats.submitted == len(self.live) + self.retired

    def teardown(self) -> None:
        try:
            for entry in self.live:
                entry.gate.set()
            self._run(self.ad.aclose())
            tasks = [entry.handle for entry in self.live if entry.kind == "run"]
            if tasks:
                self._run(asyncio.wait(tasks))
            self.rec.check()
            gc.collect()
            self._run(asyncio.sleep(0))
            assert not self.reported, self.reported
        finally:
            self.loop.run_until_complete(self.loop.shutdown_asyncgens())
            self.loop.close()


AsyncDispatcherMachine.TestCase.settings = settings(
    max_examples=25,
    stateful_step_count=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestAsyncDispatcherMachine = pytest.mark.slow(AsyncDispatcherMachine.TestCase)
