"""Errors on the thread runner: a BaseException of a job goes to its future."""

from __future__ import annotations

from tests.helpers import WAIT, MakeDispatcher


def test_base_exception_is_set_on_the_future_and_the_worker_survives(make_dispatcher: MakeDispatcher) -> None:
    # Unlike an asyncio task, which lets KeyboardInterrupt through to the loop.
    d = make_dispatcher(1)

    def interrupt() -> None:
        raise KeyboardInterrupt

    bad = d.submit("k", interrupt)
    assert isinstance(bad.exception(timeout=WAIT), KeyboardInterrupt)
    assert d.submit("k", lambda: 1).result(timeout=WAIT) == 1
