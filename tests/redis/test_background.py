"""The backend's background tasks: bounded, drained, and nothing left unawaited."""

from __future__ import annotations

import asyncio
import gc
import warnings

import pytest

from tokenbucket._redis._tasks import Background


@pytest.mark.asyncio
async def test_drain_closes_what_never_started() -> None:
    background = Background()
    started = 0

    async def give_back() -> None:
        nonlocal started
        started += 1
        await asyncio.sleep(10)

    for _ in range(40):  # more than may run at once: the rest queue
        background.spawn(give_back())
    await asyncio.sleep(0.01)
    assert 0 < started < 40
    loop = asyncio.get_running_loop()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # "coroutine ... was never awaited" would fail
        await background.drain(loop.time())
        gc.collect()
    assert started < 40
