"""No key, job or accepted setting can wedge a key of the thread dispatcher.

Each test here reproduces a way a job's future once stayed unresolved, a
key stayed blocked or a worker died while counted; each must now hold the
invariant: every admitted job resolves once and its keys move on; a call
that raises leaves no trace.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import threading
from typing import Any

import pytest

from keyed_dispatch import DispatcherConfig, KeyedDispatcher, KeyHalted
from tests.helpers import WAIT, Gates, MakeDispatcher, settle


def test_exclusive_with_an_infinite_timeout_waits_for_its_turn(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    busy = d.submit("k", gate.wait)
    held = threading.Event()
    errors: list[BaseException] = []

    def hold() -> None:
        try:
            with d.exclusive(["k"], timeout=math.inf):
                held.set()
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    thread = threading.Thread(target=hold)
    thread.start()
    gate.set()
    thread.join(WAIT)
    assert not errors
    assert held.is_set()
    busy.result(WAIT)


@pytest.mark.parametrize("huge", [1e10, math.inf])
def test_huge_idle_and_start_timeouts_mean_no_limit(huge: float) -> None:
    # threading cannot wait longer than TIMEOUT_MAX: such a wait used to
    # raise OverflowError inside the worker (idle wait) or the deadline thread.
    config = DispatcherConfig(idle_timeout=1e10, start_timeout=1e10)
    d = KeyedDispatcher(1, config=config, submit_timeout=huge)
    try:
        assert d.submit("a", lambda: 1).result(WAIT) == 1
        settle(d)  # the worker is idle now, in its long idle wait
        assert d.submit("b", lambda: 2).result(WAIT) == 2
    finally:
        d.shutdown(wait=True)
    assert d.stats().workers == 0


def test_a_submit_waiting_for_room_with_a_huge_timeout_is_admitted(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(1, max_pending=1, submit_timeout=1e10)
    gate = gates.new()
    d.submit("k", gate.wait)
    d.submit("k", lambda: None)  # pending: the bound is reached
    admitted: list[Any] = []
    waiter = threading.Thread(target=lambda: admitted.append(d.submit("k", lambda: "late")))
    waiter.start()
    gate.set()
    waiter.join(WAIT)
    assert admitted
    assert admitted[0].result(WAIT) == "late"


class _Colliding:
    """A key that hashes like every other _Colliding key; compares by identity."""

    def __hash__(self) -> int:
        return 1


class _RaisingEq(_Colliding):
    """Same hash; comparing it with another key raises."""

    def __eq__(self, other: object) -> bool:
        if other is self:
            return True
        raise ArithmeticError("no comparison today")

    __hash__ = _Colliding.__hash__


def test_a_key_whose_eq_raises_leaves_no_trace_in_a_multi_key_submit(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(2)
    gate = gates.new()
    live = _Colliding()
    d.submit(live, gate.wait)
    before = d.stats()
    with pytest.raises(ArithmeticError):
        d.submit_multi(["free", _RaisingEq()], lambda: None)
    after = d.stats()
    assert (after.pending, after.active_shards, after.submitted) == (
        before.pending,
        before.active_shards,
        before.submitted,
    )
    # "free" was placed before the bad key: it must be free again.
    assert d.submit("free", lambda: "ran").result(WAIT) == "ran"
    gate.set()
    settle(d)


class _Mutable:
    def __init__(self, value: int) -> None:
        self.value = value

    def __hash__(self) -> int:
        return hash(self.value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Mutable) and other.value == self.value


def test_a_key_mutated_after_submit_does_not_kill_the_only_worker(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(1)
    gate = gates.new()
    key = _Mutable(1)
    first = d.submit(key, gate.wait)
    second = d.submit(key, lambda: "second")
    cancelled = d.submit(key, lambda: "never")
    key.value = 2  # the user's error: the key's hash changes while it is live
    assert cancelled.cancel()
    gate.set()
    first.result(WAIT)
    assert second.result(WAIT) == "second"
    assert d.submit("other", lambda: "alive").result(WAIT) == "alive"
    settle(d)
    stats = d.stats()
    assert (stats.pending, stats.running, stats.active_shards) == (0, 0, 0)


class _Unprintable:
    def __str__(self) -> str:
        raise LookupError("no text")


def test_halting_a_key_that_cannot_be_printed(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1, halt_on_error=True)
    key = _Unprintable()

    def fail() -> None:
        raise ValueError("first")

    first = d.submit(key, fail)
    second = d.submit(key, lambda: None)
    with pytest.raises(ValueError, match="first"):
        first.result(WAIT)
    with pytest.raises(KeyHalted, match=r"str\(\) failed") as halted:
        second.result(WAIT)
    assert halted.value.key is key
    settle(d)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_cancelling_an_inherited_future_in_a_forked_child() -> None:
    script = textwrap.dedent(
        """
        import json, os, threading
        from keyed_dispatch import KeyedDispatcher

        d = KeyedDispatcher(1)
        gate = threading.Event()
        d.submit("k", gate.wait, 30)
        queued = d.submit("k", lambda: "parent")
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                assert queued.cancel()
                assert queued.cancelled()
                assert d.stats().pending == 0, d.stats()
                assert d.submit("k", lambda: "child").result(timeout=30) == "child"
                d.shutdown()
                code = 0
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        gate.set()
        print(json.dumps({"status": status, "parent": queued.result(timeout=30)}))
        d.shutdown()
        """
    )
    out = subprocess.run(  # noqa: S603 - our own interpreter and script
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert json.loads(out.stdout) == {"status": 0, "parent": "parent"}


def test_a_job_waiting_for_a_later_job_of_its_own_key_is_refused(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    seen: list[BaseException] = []

    def outer() -> str:
        inner = d.submit("k", lambda: "inner")
        other = d.submit("other", lambda: "other")
        try:
            inner.result(WAIT)
        except RuntimeError as exc:
            seen.append(exc)
        assert other.result(WAIT) == "other"  # another key: a wait that can end
        return "outer"

    assert d.submit("k", outer).result(WAIT) == "outer"
    assert len(seen) == 1
    assert "would deadlock" in str(seen[0])
    settle(d)
