"""pytest fixtures for code that runs on keyed_dispatch: dispatchers checked at teardown.

Installed with the package as the pytest plugin ``keyed_dispatch`` (disable
it with ``-p no:keyed_dispatch``). Fixtures:

``keyed_dispatcher``
    A :class:`~keyed_dispatch.KeyedDispatcher`.
``async_keyed_dispatcher``
    An :class:`~keyed_dispatch.AsyncKeyedDispatcher`, not yet bound to a
    loop: use it inside the test's ``asyncio.run(...)`` (or an async test)
    and close it there (``async with``), since its loop is gone by teardown.
``simulated_dispatcher``
    A :class:`~keyed_dispatch.testing.SimulatedDispatcher`.

Each one's ``recorder`` attribute is an
:class:`~keyed_dispatch.testing.OrderRecorder` that sees every job of
``submit`` and ``submit_multi``. At teardown the dispatcher is closed, and
the test fails if it left jobs behind (still running ``keyed_dispatch_drain_timeout``
seconds after the test ended, queued in the simulator, or in an asyncio
dispatcher that was not closed) or if the recorder's check finds a broken
guarantee. The marker ``@pytest.mark.keyed_dispatch(**settings)`` passes
constructor arguments (``max_workers=2``, ``seed=7``, ...) to the fixtures
of its test.

This module is imported by pytest at start-up; the dispatchers' own modules
are imported when a fixture is first used.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from ._checked import CheckedAsyncDispatcher, CheckedDispatcher, CheckedSimulatedDispatcher
    from .testing import OrderRecorder

__all__ = ["async_keyed_dispatcher", "keyed_dispatcher", "simulated_dispatcher"]

_DRAIN_TIMEOUT = "keyed_dispatch_drain_timeout"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addini(
        _DRAIN_TIMEOUT,
        "seconds the keyed_dispatcher fixture waits at teardown for the test's jobs to end (default 10)",
        default="10",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "keyed_dispatch(**settings): constructor arguments of the keyed_dispatcher, "
        "async_keyed_dispatcher and simulated_dispatcher fixtures",
    )


def _settings(request: pytest.FixtureRequest) -> dict[str, Any]:
    from keyed_dispatch import DispatcherConfig

    marker = request.node.get_closest_marker("keyed_dispatch")
    settings = dict(marker.kwargs) if marker is not None else {}
    if marker is not None and marker.args:
        pytest.fail("@pytest.mark.keyed_dispatch takes keyword arguments only", pytrace=False)
    # Environment-free defaults: a test must not depend on KEYED_DISPATCH_*.
    settings.setdefault("config", DispatcherConfig())
    return settings


def _check(fixture: str, recorder: OrderRecorder) -> None:
    try:
        recorder.check()
    except AssertionError as exc:
        broken = str(exc)
    else:
        return
    pytest.fail(f"{fixture}: a per-key guarantee was broken: {broken}", pytrace=False)


@pytest.fixture
def keyed_dispatcher(request: pytest.FixtureRequest) -> Iterator[CheckedDispatcher]:
    """A KeyedDispatcher, drained and checked after the test (see the module)."""
    from ._checked import CheckedDispatcher, left_behind, not_drained

    timeout = float(request.config.getini(_DRAIN_TIMEOUT))
    dispatcher = CheckedDispatcher(**_settings(request))
    yield dispatcher
    left = not_drained(dispatcher, timeout)
    if left is not None:
        jobs = left_behind(dispatcher.recorder)
        pytest.fail(
            f"keyed_dispatcher: the test left jobs behind: {left} {timeout:g}s after it ended"
            f"{' (' + jobs + ')' if jobs else ''}; wait for every job (its future) before the test returns",
            pytrace=False,
        )
    _check("keyed_dispatcher", dispatcher.recorder)


@pytest.fixture
def async_keyed_dispatcher(request: pytest.FixtureRequest) -> Iterator[CheckedAsyncDispatcher]:
    """An AsyncKeyedDispatcher to use and close inside the test's loop (see the module)."""
    from ._checked import CheckedAsyncDispatcher, left_behind

    dispatcher = CheckedAsyncDispatcher(**_settings(request))
    yield dispatcher
    stats = dispatcher.stats()
    used = stats.submitted > 0
    if (used and not stats.closed) or stats.pending or stats.running:
        jobs = left_behind(dispatcher.recorder)
        pytest.fail(
            "async_keyed_dispatcher: the test's loop ended with the dispatcher open "
            f"({stats.running} running, {stats.pending} queued{'; ' + jobs if jobs else ''}): close it "
            "inside the loop (`async with async_keyed_dispatcher:` or `await "
            "async_keyed_dispatcher.aclose()`), or asyncio cancels the jobs still running",
            pytrace=False,
        )
    _check("async_keyed_dispatcher", dispatcher.recorder)


@pytest.fixture
def simulated_dispatcher(request: pytest.FixtureRequest) -> Iterator[CheckedSimulatedDispatcher]:
    """A SimulatedDispatcher whose jobs must all have run by teardown (see the module)."""
    from ._checked import CheckedSimulatedDispatcher

    dispatcher = CheckedSimulatedDispatcher(**_settings(request))
    yield dispatcher
    stats = dispatcher.stats()
    dispatcher.shutdown(wait=False, cancel_pending=True)
    if stats.pending or stats.running:
        pytest.fail(
            "simulated_dispatcher: the test ended with jobs left (queued: "
            f"{stats.pending}, started and not finished: {stats.running}); call run_until_idle() "
            "before it returns",
            pytrace=False,
        )
    _check("simulated_dispatcher", dispatcher.recorder)
