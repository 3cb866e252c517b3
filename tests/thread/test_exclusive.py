"""exclusive() on the thread runner: the calling thread holds the keys, so a
job or block asking for keys again is refused instead of deadlocking."""

from __future__ import annotations

import pytest

from tests.helpers import WAIT, MakeDispatcher


def test_reentry_from_a_job_raises_runtime_error(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)

    def job() -> None:
        with d.exclusive(["k"]):
            pass

    def other_key_job() -> None:
        with d.exclusive(["elsewhere"]):
            pass

    for fn in (job, other_key_job):
        error = d.submit("k", fn).exception(timeout=WAIT)
        assert isinstance(error, RuntimeError)
        assert "already holds keys k" in str(error)
    # The refused job released its key.
    assert d.submit("k", lambda: "ok").result(timeout=WAIT) == "ok"


def test_reentry_from_a_block_raises_runtime_error(make_dispatcher: MakeDispatcher) -> None:
    d = make_dispatcher(2)
    with d.exclusive(["a", "b"]):
        with pytest.raises(RuntimeError, match="already holds keys a\\+b"), d.exclusive(["b"]):
            pytest.fail("nested block must not run")
        with pytest.raises(RuntimeError, match="would wait for itself"):
            d.shutdown(wait=True)
    # After the block the thread holds nothing and may enter again.
    with d.exclusive(["b"]):
        pass
