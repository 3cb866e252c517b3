"""Point 8: job errors go to the future; halt_on_error halts the key until resume."""

from __future__ import annotations

import threading

import pytest

from keyed_dispatch import KeyedDispatchError, KeyHalted
from keyed_dispatch.testing import failing
from tests.contract.conftest import MakeRunner
from tests.helpers import WAIT, settle


class OrderRejectedError(Exception):
    pass


def reject() -> None:
    raise OrderRejectedError("cancel failed")


def test_error_is_set_on_the_future_and_the_key_continues(make_runner: MakeRunner) -> None:
    r = make_runner(2)
    bad = r.submit("k", reject)
    good = r.submit("k", lambda: "next")
    assert isinstance(bad.exception(timeout=WAIT), OrderRejectedError)
    assert good.result(timeout=WAIT) == "next"
    settle(r)
    stats = r.stats()
    assert (stats.failed, stats.completed, stats.halted_keys) == (1, 1, 0)


def test_halt_fails_pending_and_later_jobs_until_resume(make_runner: MakeRunner) -> None:
    r = make_runner(2, halt_on_error=True)
    gate = r.gate()
    ran = threading.Event()
    bad = r.submit("k", r.job(gate, reject))
    pending = r.submit("k", ran.set)
    other = r.submit("other", lambda: "other runs")
    gate.open()
    assert isinstance(bad.exception(timeout=WAIT), OrderRejectedError)
    error = pending.exception(timeout=WAIT)
    assert isinstance(error, KeyHalted)
    assert isinstance(error, KeyedDispatchError)
    assert isinstance(error, RuntimeError)
    assert error.key == "k"
    assert isinstance(error.__cause__, OrderRejectedError)
    later = r.submit("k", ran.set)
    assert isinstance(later.exception(timeout=WAIT), KeyHalted)
    assert other.result(timeout=WAIT) == "other runs"
    assert r.halted_keys() == frozenset({"k"})
    assert r.stats().halted_keys == 1
    assert not ran.is_set()

    assert r.resume("k") is True
    assert r.resume("k") is False
    assert r.halted_keys() == frozenset()
    assert r.submit("k", lambda: "resumed").result(timeout=WAIT) == "resumed"
    settle(r)
    stats = r.stats()
    assert (stats.failed, stats.completed, stats.halted_keys) == (3, 2, 0)


def test_multi_key_failure_halts_every_key_and_multi_key_jobs_see_halts(make_runner: MakeRunner) -> None:
    r = make_runner(2, halt_on_error=True)
    bad = r.submit_multi(["a", "b"], failing("boom"))
    assert isinstance(bad.exception(timeout=WAIT), ValueError)
    for keys in (["a"], ["b"], ["c", "b"]):
        error = r.submit_multi(keys, lambda: None).exception(timeout=WAIT)
        assert isinstance(error, KeyHalted)
        assert str(error.__cause__) == "boom"
    # A job failing with KeyHalted does not halt its other keys.
    assert r.submit("c", lambda: "c fine").result(timeout=WAIT) == "c fine"
    assert r.halted_keys() == frozenset({"a", "b"})


def test_exclusive_block_error_halts_and_halted_block_raises(make_runner: MakeRunner) -> None:
    r = make_runner(1, halt_on_error=True)
    with pytest.raises(OrderRejectedError), r.exclusive(["k"]):
        reject()
    assert r.halted_keys() == frozenset({"k"})
    assert r.stats().failed == 1
    with pytest.raises(KeyHalted) as info, r.exclusive(["k"], timeout=WAIT):
        pytest.fail("a halted key's block must not run")
    assert isinstance(info.value.__cause__, OrderRejectedError)
    assert r.resume("k")
    with r.exclusive(["k"], timeout=WAIT):
        pass
    assert r.halted_keys() == frozenset()


def test_resume_rejects_unhashable_keys(make_runner: MakeRunner) -> None:
    r = make_runner(1)
    with pytest.raises(TypeError, match="unhashable list"):
        r.resume(["k"])  # type: ignore[arg-type]
