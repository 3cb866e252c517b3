"""The ``runner`` fixtures: every contract test runs once per in-process runner."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.contract.runners import RUNNERS, Runner, open_runner

MakeRunner = Callable[..., Runner]


@pytest.fixture(params=RUNNERS)
def runner_kind(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def make_runner(runner_kind: str) -> Iterator[MakeRunner]:
    """A factory of runners of this test's kind: ``make_runner(max_workers, **settings)``.

    At teardown each runner opens its gates, shuts down and checks that
    nothing of it is left (threads, tasks, unretrieved exceptions).
    """
    created: list[Runner] = []

    def make(max_workers: int = 4, **settings: Any) -> Runner:
        runner = open_runner(runner_kind, max_workers, **settings)
        created.append(runner)
        return runner

    yield make
    for runner in created:
        runner.close()


@pytest.fixture
def runner(make_runner: MakeRunner) -> Runner:
    """A runner with 4 workers and default settings."""
    return make_runner()
