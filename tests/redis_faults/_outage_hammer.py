"""One OS process of ``test_outage.py``: many tasks share one limit through Redis under
``on_error="local"`` while the test kills Redis and starts it again.

Run as ``python -m tests.redis_faults._outage_hammer '<json config>'`` from the repository
root. It waits until ``time.monotonic()`` (one clock for every process of the machine)
reaches ``start_at``, then ``tasks`` tasks acquire one unit at a time until ``duration``
seconds have passed. For every grant it records the instant ``acquire`` returned (on
``time.monotonic()``) and whether Redis granted it (else the local stand-in did). It
prints one JSON object on stdout.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from typing import Any

import tokenbucket as tb
from tests.redis._support import RecordingBackend


async def hammer(config: dict[str, Any]) -> dict[str, Any]:
    backend = RecordingBackend(
        config["url"],
        prefix=config["prefix"],
        on_error="local",
        local_share=config["share"],
    )
    limiter: tb.TokenBucket | tb.SlidingWindow
    if config["shape"] == "SlidingWindow":
        limiter = tb.SlidingWindow(config["p1"], config["p2"], backend=backend, key="outage")
    else:
        limiter = tb.TokenBucket(config["p1"], config["p2"], backend=backend, key="outage")
    records: list[tuple[float, bool]] = []
    try:
        await backend.ping()  # connected before the start
        late = time.monotonic() - config["start_at"]
        if late < 0:
            await asyncio.sleep(-late)
        stop = config["start_at"] + config["duration"]

        async def worker() -> None:
            while time.monotonic() < stop:
                backend.last.set(None)
                await limiter.acquire()
                records.append((time.monotonic(), backend.last.get() is not None))

        await asyncio.gather(*(worker() for _ in range(config["tasks"])))
    finally:
        await backend.aclose()
    return {"records": records, "late_start": late}


def main() -> None:
    config = json.loads(sys.argv[1])
    json.dump(asyncio.run(hammer(config)), sys.stdout)


if __name__ == "__main__":
    main()
