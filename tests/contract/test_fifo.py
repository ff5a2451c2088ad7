"""FIFO: waiters of one process are granted in arrival order, on every backend."""

from __future__ import annotations

import asyncio

import pytest

from tests.contract._support import HANG, Backend, MakeSubject

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(60)]


async def test_fifo_among_tasks_of_one_process(make_subject: MakeSubject, backend: Backend) -> None:
    subject = make_subject(bucket=(50, 1), window=(1, 0.02))
    await subject.acquire()  # now every unit comes 20 ms after the previous one
    order: list[int] = []

    async def waiter(i: int) -> None:
        await subject.acquire()
        order.append(i)

    tasks = []
    for i in range(8):
        tasks.append(asyncio.create_task(waiter(i)))
        await asyncio.sleep(0.002)  # arrival order is unambiguous
    await asyncio.wait_for(asyncio.gather(*tasks), HANG)
    assert order == list(range(8))
