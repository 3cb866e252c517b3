"""Bad input to the thread runner's own arguments (the shared checks are in
tests/contract/test_bad_input.py)."""

from __future__ import annotations

from typing import Any

import pytest

from keyed_dispatch import DispatcherConfig, KeyedDispatcher


def test_name_must_be_a_string() -> None:
    bad_name: Any = 3
    with pytest.raises(TypeError, match="name must be a str, got int"):
        KeyedDispatcher(config=DispatcherConfig(), name=bad_name)
