"""CommitTracker: the safe commit position under out-of-order completion."""

from __future__ import annotations

import threading
from concurrent.futures import CancelledError, Future

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from keyed_dispatch import CommitTracker, KeyedDispatcher


def model_safe(registered: list[int], done: set[int], committed: int | None) -> int | None:
    """The definition: highest registered p with every registered q <= p done."""
    safe = committed
    for position in registered:
        if position not in done:
            break
        safe = position
    return safe


@st.composite
def positions_and_order(draw: st.DrawFn) -> tuple[int | None, list[int], list[int]]:
    committed = draw(st.none() | st.integers(-5, 5))
    start = (committed if committed is not None else -10) + 1
    gaps = draw(st.lists(st.integers(0, 3), max_size=30))
    positions: list[int] = []
    position = start
    for gap in gaps:
        position += gap
        positions.append(position)
        position += 1
    order = draw(st.permutations(positions))
    done_count = draw(st.integers(0, len(positions)))
    return committed, positions, list(order[:done_count])


@pytest.mark.slow
@settings(max_examples=150, deadline=None)
@given(positions_and_order())
def test_safe_position_matches_the_definition_after_every_step(
    case: tuple[int | None, list[int], list[int]],
) -> None:
    committed, positions, done_order = case
    tracker = CommitTracker(committed=committed)
    for position in positions:
        tracker.register(position)
    assert tracker.safe_position() == committed
    done: set[int] = set()
    previous = committed
    for position in done_order:
        tracker.done(position)
        done.add(position)
        safe = tracker.safe_position()
        assert safe == model_safe(positions, done, committed)
        if previous is not None:
            assert safe is not None
            assert safe >= previous
        previous = safe
    assert tracker.in_flight() == len(positions) - len(done_order)


@pytest.mark.slow
@settings(max_examples=100, deadline=None)
@given(positions_and_order(), st.data())
def test_a_held_failure_stops_the_commit_until_settled(
    case: tuple[int | None, list[int], list[int]], data: st.DataObject
) -> None:
    committed, positions, _ = case
    if not positions:
        return
    failed = data.draw(st.sampled_from(positions))
    tracker = CommitTracker(committed=committed)
    for position in positions:
        tracker.register(position)
    error = ValueError("boom")
    for position in positions:
        if position == failed:
            tracker.fail(position, error)
        else:
            tracker.done(position)
    below = [p for p in positions if p < failed]
    assert tracker.safe_position() == (below[-1] if below else committed)
    assert tracker.failures() == {failed: error}
    assert tracker.in_flight() == 0
    tracker.done(failed)  # the caller handled it (dead-lettered, say)
    assert tracker.safe_position() == positions[-1]
    assert tracker.failures() == {}


class TrackerMachine(RuleBasedStateMachine):
    """Random interleavings of register, done, fail, retry and settle."""

    def __init__(self) -> None:
        super().__init__()
        self.tracker = CommitTracker(committed=0)
        self.registered: list[int] = []
        self.pending: set[int] = set()
        self.failed: set[int] = set()
        self.done: set[int] = set()
        self.futures: dict[int, Future[None]] = {}
        self.highest_seen: int | None = 0

    @rule(gap=st.integers(1, 3))
    def register(self, gap: int) -> None:
        position = (self.registered[-1] if self.registered else 0) + gap
        self.tracker.register(position)
        self.registered.append(position)
        self.pending.add(position)

    @rule(gap=st.integers(1, 3))
    def track(self, gap: int) -> None:
        position = (self.registered[-1] if self.registered else 0) + gap
        future: Future[None] = Future()
        self.tracker.track(position, future)
        self.registered.append(position)
        self.pending.add(position)
        self.futures[position] = future

    @precondition(lambda self: self.pending)
    @rule(data=st.data(), outcome=st.sampled_from(["done", "fail", "cancel"]))
    def finish(self, data: st.DataObject, outcome: str) -> None:
        position = data.draw(st.sampled_from(sorted(self.pending)))
        self.pending.discard(position)
        future = self.futures.pop(position, None)
        if outcome == "done":
            if future is not None:
                future.set_result(None)
            else:
                self.tracker.done(position)
            self.done.add(position)
            return
        if future is not None:
            if outcome == "cancel":
                assert future.cancel()
            else:
                future.set_exception(RuntimeError(f"job {position} failed"))
        else:
            self.tracker.fail(position, RuntimeError(f"job {position} failed"))
        self.failed.add(position)

    @precondition(lambda self: self.failed)
    @rule(data=st.data(), retry=st.booleans())
    def settle_failure(self, data: st.DataObject, retry: bool) -> None:
        position = data.draw(st.sampled_from(sorted(self.failed)))
        self.failed.discard(position)
        if retry:
            future: Future[None] = Future()
            self.tracker.retry(position, future)
            self.futures[position] = future
            self.pending.add(position)
        else:
            self.tracker.done(position)
            self.done.add(position)

    @rule()
    def misuse_is_refused(self) -> None:
        if self.registered:
            with pytest.raises(ValueError, match="increasing order"):
                self.tracker.register(self.registered[-1])
        for position in sorted(self.done)[-1:]:
            with pytest.raises(ValueError, match="already done"):
                self.tracker.done(position)
        for position in sorted(self.pending)[:1]:
            with pytest.raises(ValueError, match="not a held failure"):
                self.tracker.retry(position, Future())

    @invariant()
    def matches_the_model(self) -> None:
        safe = self.tracker.safe_position()
        assert safe == model_safe(self.registered, self.done, 0)
        assert self.highest_seen is not None
        assert safe is not None
        assert safe >= self.highest_seen
        self.highest_seen = safe
        assert set(self.tracker.failures()) == self.failed
        assert self.tracker.in_flight() == len(self.pending)


TrackerMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_tracker_state_machine = pytest.mark.slow(TrackerMachine.TestCase)


def test_skip_policy_counts_a_failure_as_done(caplog: pytest.LogCaptureFixture) -> None:
    tracker = CommitTracker(on_failure="skip")
    for position in (3, 4, 7):
        tracker.register(position)
    tracker.done(7)
    with caplog.at_level("WARNING", logger="keyed_dispatch"):
        tracker.fail(3, ValueError("bad message"))
    assert tracker.safe_position() == 3
    assert tracker.failures() == {}
    assert "position 3 failed and is skipped for commit" in caplog.text
    tracker.done(4)
    assert tracker.safe_position() == 7


def test_track_settles_from_the_future_even_if_already_finished() -> None:
    tracker = CommitTracker()
    finished: Future[int] = Future()
    finished.set_result(1)
    tracker.track(10, finished)
    assert tracker.safe_position() == 10
    cancelled: Future[int] = Future()
    tracker.track(11, cancelled)
    assert cancelled.cancel()
    assert tracker.safe_position() == 10
    [(position, error)] = tracker.failures().items()
    assert position == 11
    assert isinstance(error, CancelledError)


def test_misuse_raises() -> None:
    with pytest.raises(ValueError, match="on_failure"):
        CommitTracker(on_failure="ignore")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="int"):
        CommitTracker(committed=1.5)  # type: ignore[arg-type]
    tracker = CommitTracker(committed=5)
    with pytest.raises(TypeError, match="int"):
        tracker.register(True)
    with pytest.raises(ValueError, match="increasing order"):
        tracker.register(5)
    with pytest.raises(ValueError, match="not registered"):
        tracker.done(6)
    with pytest.raises(ValueError, match="not registered"):
        tracker.fail(6, ValueError())
    tracker.register(6)
    tracker.fail(6, ValueError())
    with pytest.raises(ValueError, match="already settled"):
        tracker.fail(6, ValueError())
    assert repr(tracker) == "<CommitTracker safe=5 in_flight=0 held_failures=1>"


def test_wait_returns_when_nothing_is_in_flight() -> None:
    tracker = CommitTracker()
    assert tracker.wait(timeout=0)
    tracker.register(1)
    assert not tracker.wait(timeout=0)
    release = threading.Thread(target=tracker.done, args=(1,))
    release.start()
    assert tracker.wait(timeout=30)
    release.join()


@pytest.mark.slow
def test_with_a_dispatcher_the_safe_position_never_runs_ahead_of_the_work() -> None:
    # Keys finish out of log order; at every sample, every position up to the
    # safe one must have run to completion.
    finished: set[int] = set()
    lock = threading.Lock()
    gates = {key: threading.Event() for key in "abcd"}
    tracker = CommitTracker()

    def job(position: int, key: str) -> None:
        gates[key].wait(30)
        with lock:
            finished.add(position)

    samples: list[int] = []
    with KeyedDispatcher(4) as dispatcher:
        for position in range(400):
            key = "abcd"[(position * 7) % 11 % 4]
            tracker.track(position, dispatcher.submit(key, job, position, key))
        for key in "dcba":  # release the keys in reverse: completion out of log order
            gates[key].set()
            for _ in range(20):
                safe = tracker.safe_position()
                with lock:
                    done_now = set(finished)
                if safe is not None:
                    samples.append(safe)
                    assert set(range(safe + 1)) <= done_now
        assert tracker.wait(timeout=30)
    assert tracker.safe_position() == 399
    assert samples == sorted(samples)
