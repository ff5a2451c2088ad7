"""One OS process of ``test_processes.py``: many tasks hammer one Redis-backed limiter.

Run as ``python -m tests.redis._hammer '<json config>'`` from the repository root. It
waits until the Redis server's clock reaches ``start_at`` (so all processes start
together), then ``tasks`` tasks acquire one unit at a time until ``duration`` seconds
have passed. For every grant it records the reservation's instant and arrival (exact,
on the server's clock, as the reserve script computed them) and the server's ``TIME``
read right after ``acquire`` returned (later than the grant by the wake-up and the
round trip). It prints one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import redis.asyncio as aioredis

import tokenbucket as tb
from tests.redis._support import RecordingBackend, server_time


async def hammer(config: dict[str, Any]) -> dict[str, Any]:
    backend = RecordingBackend(config["url"], prefix=config["prefix"])
    timer = aioredis.Redis.from_url(config["url"])
    limiter: tb.TokenBucket | tb.SlidingWindow
    if config["shape"] == "SlidingWindow":
        limiter = tb.SlidingWindow(config["p1"], config["p2"], backend=backend, key=config["key"])
    else:
        limiter = tb.TokenBucket(config["p1"], config["p2"], backend=backend, key=config["key"])
    loop = asyncio.get_running_loop()
    records: list[tuple[float, float, float]] = []
    try:
        # Open a connection per task now, so reading TIME after a grant does not wait
        # for one to be made.
        await asyncio.gather(*(server_time(timer) for _ in range(config["tasks"])))
        late = await server_time(timer) - config["start_at"]
        if late < 0:
            await asyncio.sleep(-late)
        stop = loop.time() + config["duration"]

        async def worker() -> None:
            while loop.time() < stop:
                await limiter.acquire()
                read = await server_time(timer)
                grant = backend.last.get()
                assert grant is not None
                records.append((grant.at, grant.now, read))

        await asyncio.gather(*(worker() for _ in range(config["tasks"])))
    finally:
        await backend.aclose()
        await timer.aclose()
    return {"records": records, "round_trips": backend.round_trips, "late_start": late}


def main() -> None:
    config = json.loads(sys.argv[1])
    result = asyncio.run(hammer(config))
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
