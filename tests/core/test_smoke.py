from __future__ import annotations

import keyed_dispatch
from keyed_dispatch import KeyedDispatcher


def test_public_names_match_all() -> None:
    # "@py_builtins" and "@pytest_ar": pytest rewrites the asserts of a
    # plugin's package, and keyed_dispatch ships one (pytest_plugin).
    public = {name for name in dir(keyed_dispatch) if not name.startswith(("_", "@"))}
    public -= {
        "annotations",
        "demo",
        "metrics",
        "postgres",
        "pytest_plugin",
        "testing",
    }  # submodules, loaded on use
    assert public == set(keyed_dispatch.__all__)


def test_same_key_jobs_run_in_submission_order() -> None:
    out: list[int] = []
    with KeyedDispatcher(4) as d:
        futures = [d.submit("k", out.append, i) for i in range(200)]
        for future in futures:
            future.result(timeout=10)
    assert out == list(range(200))
