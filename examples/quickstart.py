"""A tour of tokenbucket in a few seconds: bursts, a steady rate, FIFO, timeouts, windows.

Run it with ``python examples/quickstart.py`` (add ``--trio`` to run it on trio).
"""

from __future__ import annotations

import sys

import anyio

import tokenbucket as tb


async def main() -> None:
    start = anyio.current_time()

    def stamp(text: str) -> None:
        print(f"  t={anyio.current_time() - start:5.2f}s  {text}")

    async def admit(limiter: tb.TokenBucket | tb.SlidingWindow, count: int, label: str) -> None:
        for i in range(count):
            await limiter.acquire()
            stamp(f"{label} {i} admitted")

    print("TokenBucket(rate=10, capacity=5): a burst of 5, then one every 0.1 s")
    bucket = tb.TokenBucket(rate=10, capacity=5)
    await admit(bucket, 8, "request")
    print(f"  {bucket!r}")

    print("\nFIFO: a request for 5 units is not overtaken by the small ones behind it")

    async def request(name: str, amount: float) -> None:
        await bucket.acquire(amount)
        stamp(f"{name} ({amount:g} units) admitted")

    async with anyio.create_task_group() as tg:
        tg.start_soon(request, "big", 5)
        await anyio.wait_all_tasks_blocked()
        for i in range(3):
            tg.start_soon(request, f"small-{i}", 1)
            await anyio.wait_all_tasks_blocked()
        stamp(f"queued: {bucket!r}")

    print("\nTimeouts raise a TimeoutError and consume nothing")
    try:
        await bucket.acquire(5, timeout=0.2)
    except TimeoutError as exc:
        stamp(f"{type(exc).__name__}: gave up after 0.2 s")
    stamp(f"try_acquire(1) -> {bucket.try_acquire(1)}")

    print("\nSlidingWindow(limit=3, window=1): at most 3 in any 1-second window")
    window = tb.SlidingWindow(limit=3, window=1)
    await admit(window, 7, "window request")

    print("\nReadable rates: TokenBucket(rate=tb.per_minute(600), capacity=2)")
    per_minute = tb.TokenBucket(rate=tb.per_minute(600), capacity=2)
    print(f"  {per_minute!r}")


if __name__ == "__main__":
    anyio.run(main, backend="trio" if "--trio" in sys.argv else "asyncio")
