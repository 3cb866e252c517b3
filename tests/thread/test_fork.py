"""Point 12: a dispatcher created before fork() is usable in the child, which starts empty."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")

# Run in a fresh interpreter: forking pytest itself (with its threads and
# warnings-as-errors) would test pytest more than the dispatcher.
_FORK_SCRIPT = textwrap.dedent(
    """
    import json, os, threading
    from keyed_dispatch import DispatcherConfig, KeyedDispatcher

    d = KeyedDispatcher(2, config=DispatcherConfig())
    d.submit("warm", lambda: None).result(timeout=30)  # the parent has a worker
    runs_r, runs_w = os.pipe()

    def job(tag):
        os.write(runs_w, f"{tag}:{os.getpid()}\\n".encode())

    gate = threading.Event()
    blocker = d.submit("k", gate.wait, 30)
    queued = d.submit("k", job, "parent-job")  # admitted in the parent, pending at the fork
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            s = d.stats()
            assert (s.pending, s.running, s.workers, s.active_shards) == (0, 0, 0, 0), s
            # The parent's blocker does not exist here: "k" is free.
            d.submit("k", job, "child-job").result(timeout=30)
            with d.exclusive(["k"], timeout=30):
                pass
            futures = [d.submit(f"c{i}", lambda i=i: i) for i in range(20)]
            assert [f.result(timeout=30) for f in futures] == list(range(20))
            d.shutdown()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    gate.set()
    queued.result(timeout=30)
    d.shutdown()
    os.close(runs_w)
    data = b""
    while chunk := os.read(runs_r, 4096):
        data += chunk
    runs = sorted(line.split(":") for line in data.decode().split())
    print(json.dumps({"status": status, "parent": os.getpid(), "child": pid, "runs": runs}))
    """
)


@pytest.mark.slow
def test_child_starts_empty_and_nothing_runs_twice() -> None:
    proc = subprocess.run(  # noqa: S603 - our own interpreter on a fixed script
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _FORK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["status"] == 0, proc.stderr
    # The parent's queued job ran once, in the parent; the child's job in the child.
    assert report["runs"] == [["child-job", str(report["child"])], ["parent-job", str(report["parent"])]]


_FORK_IN_BLOCK_SCRIPT = textwrap.dedent(
    """
    import json, os, traceback
    from keyed_dispatch import DispatcherConfig, KeyedDispatcher

    d = KeyedDispatcher(2, config=DispatcherConfig())
    parent = os.getpid()
    try:
        with d.exclusive(["k"]):
            pid = os.fork()
    except BaseException:
        if os.getpid() != parent:
            traceback.print_exc()
            os._exit(2)
        raise
    # Both processes leave the block here; the child's dispatcher started
    # empty and must not try to release the parent's block.
    if pid == 0:
        code = 1
        try:
            s = d.stats()
            assert (s.pending, s.running, s.active_shards, s.submitted) == (0, 0, 0, 0), s
            assert d.submit("k", lambda: 5).result(timeout=30) == 5
            d.shutdown()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    s = d.stats()
    d.shutdown()
    print(json.dumps({"status": status, "completed": s.completed, "shards": s.active_shards}))
    """
)


@pytest.mark.slow
def test_fork_inside_an_exclusive_block() -> None:
    proc = subprocess.run(  # noqa: S603 - our own interpreter on a fixed script
        [sys.executable, "-W", "ignore::DeprecationWarning", "-c", _FORK_IN_BLOCK_SCRIPT],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"status": 0, "completed": 1, "shards": 0}, proc.stderr
