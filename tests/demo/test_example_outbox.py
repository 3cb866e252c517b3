"""examples/outbox_worker.py: killed mid-stream with SIGKILL, restarted, nothing lost."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).resolve().parents[2] / "examples" / "outbox_worker.py"
DEADLINE = 60.0
MESSAGES = 600
KEYS = 6


def query(db: Path, sql: str) -> list[tuple[int | str, ...]]:
    connection = sqlite3.connect(db, timeout=30, isolation_level=None)  # autocommit
    try:
        return connection.execute(sql).fetchall()
    finally:
        connection.close()


def worker(db: Path, run_id: str, *more: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(  # noqa: S603 - our interpreter and our example, no user input
        [sys.executable, str(WORKER), "run", str(db), "--run-id", run_id, "--work-ms", "5", *more],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
@pytest.mark.slow
def test_killed_worker_resumes_without_losing_or_reordering(tmp_path: Path) -> None:
    db = tmp_path / "outbox.db"
    subprocess.run(  # noqa: S603 - idem
        [sys.executable, str(WORKER), "fill", str(db), "--messages", str(MESSAGES), "--keys", str(KEYS)],
        check=True,
    )
    # One message fails every time: it must end up dead-lettered, not lost.
    query(db, "INSERT INTO outbox (key, payload) VALUES ('key-0', 'poison')")
    outbox = query(db, "SELECT id, key FROM outbox ORDER BY id")
    poison = outbox[-1][0]

    first = worker(db, "1")
    try:
        # Wait (polling the database, with a deadline) until the worker has
        # processed a fair part and committed a position, then kill it.
        deadline = time.monotonic() + DEADLINE
        while True:
            [(processed,)] = query(db, "SELECT COUNT(*) FROM processed")
            committed_rows = query(db, "SELECT position FROM consumer_offsets")
            if int(processed) >= 80 and committed_rows and int(committed_rows[0][0]) >= 20:
                break
            assert first.poll() is None, first.stderr.read() if first.stderr else ""
            assert time.monotonic() < deadline, "the worker made no progress"
            time.sleep(0.005)  # a polling interval, not a synchronization
        first.send_signal(signal.SIGKILL)
    finally:
        first.wait(DEADLINE)
        if first.stderr is not None:
            first.stderr.close()
    assert first.returncode == -signal.SIGKILL

    [(committed_at_kill,)] = query(db, "SELECT position FROM consumer_offsets")
    run1 = query(db, "SELECT message_id, key FROM processed WHERE run = '1' ORDER BY n")
    assert len(run1) < MESSAGES, "the worker finished before the kill; the test proves nothing"
    # The tracker never let the commit run ahead of the work.
    assert {mid for mid, _ in outbox if int(mid) <= int(committed_at_kill) and mid != poison} <= {
        mid for mid, _ in run1
    }

    second = worker(db, "2", "--exit-when-idle")
    _, err = second.communicate(timeout=DEADLINE)
    assert second.returncode == 0, err.decode()

    run2 = query(db, "SELECT message_id, key FROM processed WHERE run = '2' ORDER BY n")
    ids_by_key: dict[str, list[int]] = {}
    for mid, key in outbox:
        if mid != poison:
            ids_by_key.setdefault(str(key), []).append(int(mid))
    for key, ids in ids_by_key.items():
        first_run = [int(mid) for mid, k in run1 if k == key]
        second_run = [int(mid) for mid, k in run2 if k == key]
        # Run 1 processed a prefix of the key's messages, in order...
        assert first_run == ids[: len(first_run)], key
        # ...and run 2 exactly the key's messages after the committed
        # position, in order: replayed from the commit, nothing skipped.
        assert second_run == [mid for mid in ids if mid > int(committed_at_kill)], key
    # Every message processed at least once; the poison one dead-lettered.
    processed_ids = {int(mid) for mid, _ in run1 + run2}
    assert processed_ids == {int(mid) for mid, _ in outbox} - {int(poison)}
    assert [int(mid) for (mid,) in query(db, "SELECT message_id FROM dead_letters")][-1] == poison
    assert query(db, "SELECT position FROM consumer_offsets") == [(poison,)]
