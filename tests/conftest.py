"""Shared fixtures: dispatchers that are shut down and checked after each test."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from keyed_dispatch import KeyedDispatcher
from tests.helpers import Gates, MakeDispatcher, close_and_check, new_dispatcher


@pytest.fixture
def gates() -> Iterator[Gates]:
    g = Gates()
    yield g
    g.open_all()


@pytest.fixture
def make_dispatcher(gates: Gates) -> Iterator[MakeDispatcher]:
    """A factory of dispatchers (see :func:`new_dispatcher`).

    At teardown every gate opens, each dispatcher is shut down with
    ``wait=True``, and no thread it started may be left alive.
    """
    created: list[KeyedDispatcher] = []

    def make(max_workers: int | None = 4, **kwargs: Any) -> KeyedDispatcher:
        dispatcher = new_dispatcher(max_workers, **kwargs)
        created.append(dispatcher)
        return dispatcher

    yield make
    gates.open_all()
    for dispatcher in created:
        close_and_check(dispatcher)


@pytest.fixture
def dispatcher(make_dispatcher: MakeDispatcher) -> KeyedDispatcher:
    """A dispatcher with 4 workers and default settings."""
    return make_dispatcher()
