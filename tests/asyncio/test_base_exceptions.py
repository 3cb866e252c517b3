"""A submit job raising GeneratorExit resolves its future and frees its key and slot."""

from __future__ import annotations

import asyncio

from keyed_dispatch import AsyncKeyedDispatcher
from tests.asyncio_support import run


def test_a_submit_job_raising_generator_exit_is_retired() -> None:
    async def body() -> None:
        ad = AsyncKeyedDispatcher(1)

        async def stop() -> None:
            raise GeneratorExit

        async def after() -> str:
            return "after"

        failing = await ad.submit("k", stop)
        following = await ad.submit("k", after)
        await asyncio.wait([failing], timeout=10)
        # Not awaited: a coroutine that lets GeneratorExit through is a
        # coroutine being closed, as far as Python is concerned.
        assert isinstance(failing.exception(), GeneratorExit)
        assert await asyncio.wait_for(following, 10) == "after"
        stats = ad.stats()
        assert (stats.failed, stats.completed, stats.workers) == (1, 1, 0)
        await asyncio.wait_for(ad.aclose(), 10)

    run(body)
