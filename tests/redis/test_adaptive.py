"""An adaptive cap on Redis: each process learns its own, and applies it to the calls in
flight of every process (the slots in Redis)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

import pytest

import tokenbucket as tb
from tests.contract._support import fits

if TYPE_CHECKING:
    from collections.abc import Callable

    from tests.redis._support import RecordingBackend

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


def make(backend: RecordingBackend) -> tb.Limiter:
    cap = tb.adaptive(initial=4, min=1, max=100, policy="aimd", window=1)
    return tb.Limiter(requests_per_second=1000, max_concurrency=cap, backend=backend, key="a")


async def test_a_drop_lowers_this_processs_cap_on_the_slots_of_all(
    backend_factory: Callable[..., RecordingBackend],
) -> None:
    one, other = make(backend_factory()), make(backend_factory())
    release = asyncio.Event()

    async def hold(limiter: tb.Limiter) -> None:
        async with limiter.acquire():
            await release.wait()

    held = [asyncio.ensure_future(hold(limiter)) for limiter in (one, other, other)]
    while sum(limiter.statistics().in_flight for limiter in (one, other)) < 3:
        await asyncio.sleep(0.005)
    async with one.acquire() as lease:  # the fourth slot of four
        lease.feedback({}, status=503)  # (a 429 would pause every process too)
    assert one.max_concurrency == 3  # 4 x 0.9, this process's alone
    assert other.max_concurrency == 4
    assert not await fits(one)  # three held, by both processes: none more for one
    assert await fits(other)  # ...but one more for the other
    release.set()
    await asyncio.gather(*held)
