"""keyed_dispatch.pytest_plugin: its fixtures, run in test sessions of their own (pytester).

The inner sessions load the plugin the way users get it, through its
``pytest11`` entry point.
"""

from __future__ import annotations

import re
from importlib.metadata import entry_points
from pathlib import Path

import pytest


@pytest.fixture
def tester(pytester: pytest.Pytester) -> pytest.Pytester:
    """A pytester whose sessions wait 0.1 s (not 10) for jobs left running."""
    pytester.makeini("[pytest]\nkeyed_dispatch_drain_timeout = 0.1\nfilterwarnings = error\n")
    return pytester


GATE = """
import threading

import pytest


@pytest.fixture
def gate():
    # Set up before the dispatcher fixture, so torn down after it: a job
    # waiting on the gate holds the dispatcher's teardown, then ends here.
    event = threading.Event()
    yield event
    event.set()
"""


def test_the_plugin_is_registered_as_an_entry_point() -> None:
    plugins = {ep.name: ep.value for ep in entry_points(group="pytest11")}
    assert plugins["keyed_dispatch"] == "keyed_dispatch.pytest_plugin"


@pytest.mark.slow  # a pytest session of its own
def test_the_fixtures_pass_a_test_that_waits_for_its_jobs(tester: pytest.Pytester) -> None:
    tester.makepyfile(
        """
        import asyncio

        import pytest

        from keyed_dispatch import AsyncKeyedDispatcher, KeyedDispatcher, ShardsExhausted
        from keyed_dispatch.testing import SimulatedDispatcher


        def test_threads(keyed_dispatcher):
            assert isinstance(keyed_dispatcher, KeyedDispatcher)
            futures = [keyed_dispatcher.submit(k, str.upper, k) for k in "abab"]
            futures.append(keyed_dispatcher.submit_multi(["a", "b"], str.lower, "AB"))
            assert [f.result(10) for f in futures] == ["A", "B", "A", "B", "ab"]
            assert len(keyed_dispatcher.recorder.jobs) == 5


        def test_asyncio(async_keyed_dispatcher):
            async def double(x):
                await asyncio.sleep(0)
                return 2 * x

            async def main():
                async with async_keyed_dispatcher as d:
                    first = await d.submit("k", double, 1)
                    second = await d.submit_multi(["k", "j"], double, 2)
                    return [await first, await second]

            assert isinstance(async_keyed_dispatcher, AsyncKeyedDispatcher)
            assert asyncio.run(main()) == [2, 4]


        def test_simulated(simulated_dispatcher):
            assert isinstance(simulated_dispatcher, SimulatedDispatcher)
            future = simulated_dispatcher.submit("k", sum, [1, 2])
            simulated_dispatcher.run_until_idle()
            assert future.result(0) == 3


        def test_unused(keyed_dispatcher, async_keyed_dispatcher, simulated_dispatcher):
            pass


        @pytest.mark.keyed_dispatch(max_workers=1, halt_on_error=True)
        def test_marker_settings(keyed_dispatcher):
            assert keyed_dispatcher.config.max_workers == 1
            failed = keyed_dispatcher.submit("k", int, "not a number")
            halted = keyed_dispatcher.submit("k", int, "1")
            assert isinstance(failed.exception(10), ValueError)
            assert type(halted.exception(10)).__name__ == "KeyHalted"


        @pytest.mark.keyed_dispatch(max_shards=1)
        def test_refused_submits_are_recorded_as_not_run(
            keyed_dispatcher, async_keyed_dispatcher, simulated_dispatcher
        ):
            for dispatcher in (keyed_dispatcher, simulated_dispatcher):
                with pytest.raises(ShardsExhausted):
                    dispatcher.submit_multi(["a", "b"], print)
                assert dispatcher.recorder.jobs[0].expect_run is False

            async def main():
                async with async_keyed_dispatcher as d:
                    with pytest.raises(ShardsExhausted):
                        await d.submit_multi(["a", "b"], asyncio.sleep, 0)

            asyncio.run(main())
            assert async_keyed_dispatcher.recorder.jobs[0].expect_run is False


        @pytest.mark.keyed_dispatch(seed=3)
        def test_marker_seed(simulated_dispatcher):
            ran = []
            for key in "abcdef":
                simulated_dispatcher.submit(key, ran.append, key)
            simulated_dispatcher.run_until_idle()
            assert sorted(ran) == list("abcdef") and ran != sorted(ran)
        """
    )
    # The example of the testing page, as written.
    page = (Path(__file__).resolve().parents[2] / "docs" / "testing.md").read_text()
    fixtures = page.split("## pytest fixtures", 1)[1]
    (example,) = re.findall(r"^```python\n(.*?)^```", fixtures, flags=re.MULTILINE | re.DOTALL)
    tester.makepyfile(test_page_example=example)
    result = tester.runpytest()
    result.assert_outcomes(passed=9)


FAILING = """
import asyncio

import pytest

from keyed_dispatch.testing import RecordedJob


def test_forgets_its_job(gate, keyed_dispatcher):
    keyed_dispatcher.submit("orders", gate.wait)


def test_overlap(keyed_dispatcher):
    # The dispatcher keeps its guarantees, so the recorder is given a
    # history that breaks one: what it would see if two jobs overlapped.
    keyed_dispatcher.recorder.jobs += [
        RecordedJob(0, ("k",), admitted=0, starts=[0], ends=[3]),
        RecordedJob(1, ("k",), admitted=1, starts=[1], ends=[2]),
    ]


async def suspended():
    await asyncio.sleep(0)


def test_no_run(simulated_dispatcher):
    simulated_dispatcher.submit("k", print)
    simulated_dispatcher.submit("j", suspended)
    simulated_dispatcher.submit("j", print)
    simulated_dispatcher.step()  # the first job
    simulated_dispatcher.step()  # the second starts and waits at its await


def test_open(async_keyed_dispatcher):
    async def main():
        future = await async_keyed_dispatcher.submit("k", asyncio.sleep, 0, "done")
        return await future

    assert asyncio.run(main()) == "done"


@pytest.mark.keyed_dispatch(4)
def test_positional(keyed_dispatcher):
    pass
"""


@pytest.mark.slow  # a pytest session of its own
def test_tests_that_leave_jobs_behind_or_break_a_guarantee_fail_with_a_clear_message(
    tester: pytest.Pytester,
) -> None:
    tester.makeconftest(GATE)
    tester.makepyfile(FAILING)
    result = tester.runpytest()
    result.assert_outcomes(passed=4, errors=5)
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_forgets_its_job*",
            "*keyed_dispatcher: the test left jobs behind: 1 running and 0 queued 0.1s after it ended "
            "(job 0 on keys ('orders',)); wait for every job (its future) before the test returns",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_overlap*",
            "*keyed_dispatcher: a per-key guarantee was broken: overlap on key 'k': "
            "job 1 started before job 0 ended",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_no_run*",
            "*simulated_dispatcher: the test ended with jobs left (queued: 1, started and not "
            "finished: 1); call run_until_idle() before it returns",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            "*ERROR at teardown of test_open*",
            "*async_keyed_dispatcher: the test's loop ended with the dispatcher open (0 running, "
            "0 queued): close it inside the loop (`async with async_keyed_dispatcher:` or "
            "`await async_keyed_dispatcher.aclose()`), or asyncio cancels the jobs still running",
        ]
    )
    result.stdout.fnmatch_lines(
        ["*ERROR at setup of test_positional*", "*keyed_dispatch takes keyword arguments only*"]
    )
