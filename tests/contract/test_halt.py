"""Point 8: job errors go to the future; halt_on_error halts the key until resume."""

from __future__ import annotations

import threading

import pytest

from keyed_dispatch import KeyedDispatchError, KeyHalted
from keyed_dispatch.testing import failing
from tests.helpers import WAIT, Gates, MakeDispatcher, settle


class OrderRejectedError(Exception):
    pass


def reject() -> None:
    raise OrderRejectedError("cancel failed")


def test_error_is_set_on_the_future_and_the_key_continues(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    bad = d.submit("k", reject)
    good = d.submit("k", lambda: "next")
    assert isinstance(bad.exception(timeout=WAIT), OrderRejectedError)
    assert good.result(timeout=WAIT) == "next"
    settle(d)
    stats = d.stats()
    assert (stats.failed, stats.completed, stats.halted_keys) == (1, 1, 0)


def test_base_exception_is_set_on_the_future_and_the_worker_survives(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)

    def interrupt() -> None:
        raise KeyboardInterrupt

    bad = d.submit("k", interrupt)
    assert isinstance(bad.exception(timeout=WAIT), KeyboardInterrupt)
    assert d.submit("k", lambda: 1).result(timeout=WAIT) == 1


def test_halt_fails_pending_and_later_jobs_until_resume(
    make_dispatcher: MakeDispatcher, gates: Gates
) -> None:
    d = make_dispatcher(2, halt_on_error=True)
    gate = gates.new()
    ran = threading.Event()

    def fail_after_gate() -> None:
        gate.wait(WAIT)
        reject()

    bad = d.submit("k", fail_after_gate)
    pending = d.submit("k", ran.set)
    other = d.submit("other", lambda: "other runs")
    gate.set()
    assert isinstance(bad.exception(timeout=WAIT), OrderRejectedError)
    error = pending.exception(timeout=WAIT)
    assert isinstance(error, KeyHalted)
    assert isinstance(error, KeyedDispatchError)
    assert isinstance(error, RuntimeError)
    assert error.key == "k"
    assert isinstance(error.__cause__, OrderRejectedError)
    later = d.submit("k", ran.set)
    assert isinstance(later.exception(timeout=WAIT), KeyHalted)
    assert other.result(timeout=WAIT) == "other runs"
    assert d.halted_keys() == frozenset({"k"})
    assert d.stats().halted_keys == 1
    assert not ran.is_set()

    assert d.resume("k") is True
    assert d.resume("k") is False
    assert d.halted_keys() == frozenset()
    assert d.submit("k", lambda: "resumed").result(timeout=WAIT) == "resumed"
    settle(d)
    stats = d.stats()
    assert (stats.failed, stats.completed) == (3, 2)


def test_multi_key_failure_halts_every_key_and_multi_key_jobs_see_halts(
    make_dispatcher: MakeDispatcher,
) -> None:
    d = make_dispatcher(2, halt_on_error=True)
    bad = d.submit_multi(["a", "b"], failing("boom"))
    assert isinstance(bad.exception(timeout=WAIT), ValueError)
    for keys in (["a"], ["b"], ["c", "b"]):
        error = d.submit_multi(keys, lambda: None).exception(timeout=WAIT)
        assert isinstance(error, KeyHalted)
        assert str(error.__cause__) == "boom"
    # A job failing with KeyHalted does not halt its other keys.
    assert d.submit("c", lambda: "c fine").result(timeout=WAIT) == "c fine"
    assert d.halted_keys() == frozenset({"a", "b"})


def test_exclusive_block_error_halts_and_halted_block_raises(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1, halt_on_error=True)
    with pytest.raises(OrderRejectedError), d.exclusive(["k"]):
        reject()
    with pytest.raises(KeyHalted) as info, d.exclusive(["k"], timeout=WAIT):
        pytest.fail("a halted key's block must not run")
    assert isinstance(info.value.__cause__, OrderRejectedError)
    d.resume("k")
    with d.exclusive(["k"], timeout=WAIT):
        pass


def test_resume_rejects_unhashable_keys(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(1)
    with pytest.raises(TypeError, match="unhashable list"):
        d.resume(["k"])  # type: ignore[arg-type]
