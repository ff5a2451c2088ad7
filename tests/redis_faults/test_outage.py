"""Failing open keeps the shared limit: N processes at ``local_share = 1/N``.

Four processes (``_outage_hammer.py``) of 20 tasks each acquire one unit at a time from
ONE limit in a private Redis, under ``on_error="local"`` and ``local_share=0.25``. The
test kills Redis after ``UP`` seconds and starts it again (empty) ``OUTAGE`` seconds
later. Every process records the instant each ``acquire`` returned, on
``time.monotonic()`` (one clock for the whole machine), and whether Redis or the local
stand-in granted it.

Over the whole run, the limit must hold over every window on all processes' grants
together, those Redis made before the outage (some of them admitted during it) with
those the stand-ins made and those Redis made after it: the bound docs/redis.md states.
Across the return, each process charges Redis with its stand-in's grants and sends
nothing new there for a moment, so that every process's charge lands first. The one
slack is ``LAG``: an instant is recorded when the task resumes, after its grant by the
wake-up (a window of recorded instants shortened by ``LAG`` holds no more than a window
of true ones).

For a sliding window the design allows one more thing (docs/redis.md, "the bound"): a
stand-in knows only its own process's Redis grants, so a window may hold, on top of the
limit, what processes were granted by Redis in it above their share (Redis grants in
batches, so shares are uneven from one window to the next). The test computes that
allowance per window from the records.

After the restart, the stand-ins hand back: no local grant more than ``HAND_BACK``
seconds after Redis answers again. Redis restarts empty; the outage is longer than a
window, so nothing it lost still counted.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.redis._support import ROUNDING, bucket_excess, window_peak

if TYPE_CHECKING:
    from tests.redis_faults.conftest import RedisServer

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
SHARE = 1 / PROCESSES
TASKS = 20
UP = 1.5  # seconds on Redis before it is killed
OUTAGE = 3.0
AFTER = 1.0  # seconds on Redis again
LAG = 0.05  # a task resumes this long after its grant at most (a loaded machine)
HAND_BACK = 0.5  # the stand-in's probe asks every 0.1 s; a new connection, a wake-up

# shape: (p1, p2, bound over any interval of length T)
SHAPES: dict[str, tuple[float, float]] = {
    "SlidingWindow": (50, 1.0),  # 50 in any 1 s
    "TokenBucket": (100, 50),  # 100/s, bursts of 50: 50 + 100 T
}


def window_excess(
    records: list[tuple[float, int, bool]], limit: float, window: float, share: float
) -> tuple[int, float]:
    """The most grants in any window ``[s, s + window)`` above ``limit`` plus what the
    processes' Redis grants in it exceed their shares (``share * limit`` each), and the
    count of that window."""
    ordered = sorted(records)
    worst, count = -math.inf, 0
    for first, (start, _, _) in enumerate(ordered):
        inside = [r for r in ordered[first:] if r[0] < start + window - ROUNDING]
        by_process: dict[int, int] = {}
        for _, process, remote in inside:
            if remote:
                by_process[process] = by_process.get(process, 0) + 1
        allowed = limit + sum(max(0.0, n - share * limit) for n in by_process.values())
        if len(inside) - allowed > worst:
            worst, count = len(inside) - allowed, len(inside)
    return count, worst


async def run_outage(config: dict[str, Any], server: RedisServer) -> list[dict[str, Any]]:
    """Start the processes, kill Redis at ``UP`` and start it again after ``OUTAGE``."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.redis_faults._outage_hammer",
            json.dumps(config),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    outputs = asyncio.gather(*(p.communicate() for p in procs))
    start = config["start_at"]
    await asyncio.sleep(start + UP - time.monotonic())
    server.kill()
    await asyncio.sleep(start + UP + OUTAGE - time.monotonic())
    config["restarting"] = time.monotonic()  # no grant from the new server before this
    server.start()  # blocks until it answers: the children only write at their end
    config["restarted"] = time.monotonic()
    results = []
    for proc, (out, err) in zip(procs, await asyncio.wait_for(outputs, 90), strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")
        results.append(json.loads(out))
    return results


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_failing_open_keeps_the_shared_limit(shape: str, redis_server: RedisServer) -> None:
    p1, p2 = SHAPES[shape]
    config: dict[str, Any] = {
        "url": redis_server.url,
        "prefix": "outage",
        "shape": shape,
        "p1": p1,
        "p2": p2,
        "share": SHARE,
        "tasks": TASKS,
        "duration": UP + OUTAGE + AFTER,
        "start_at": time.monotonic() + 4.0,  # time to start Python four times
    }
    results = await run_outage(config, redis_server)
    start, restarting, restarted = config["start_at"], config["restarting"], config["restarted"]
    killed = start + UP
    records = [(at, remote) for result in results for at, remote in result["records"]]
    tagged = [
        (at, process, remote)
        for process, result in enumerate(results)
        for at, remote in result["records"]
    ]
    instants = sorted(at for at, _ in records)
    local = [at for at, remote in records if not remote]
    if shape == "SlidingWindow":
        worst = window_peak(instants, p2 - LAG)
        count, over = window_excess(tagged, p1, p2 - LAG, SHARE)
        measure = (
            f"most in any {p2 - LAG:g} s window: {worst} (limit {p1:g}); "
            f"over the limit and the uneven shares' allowance: {over:g} (window of {count})"
        )
    else:
        excess = bucket_excess(instants, p1, p2 + p1 * LAG)
        measure = f"worst excess over {p2:g} + {p1:g} T (+{p1 * LAG:g}): {excess:g}"
    print(
        f"\n{shape}: {len(records)} grants, {len(local)} local, by {PROCESSES} processes "
        f"at local_share {SHARE:g}; {measure}; "
        f"late starts {[round(r['late_start'], 3) for r in results]} s"
    )
    assert all(r["late_start"] < UP / 2 for r in results), "a process started too late"

    # The limit holds over every window of the run: across the failure and the return.
    if shape == "SlidingWindow":
        assert over <= 0
    else:
        assert excess <= 0

    # The stand-ins limited during the outage, at their shares of the rate...
    during = [at for at in local if killed <= at < restarting]
    # (A window's stand-in first waits until this process's grants of the last window
    # have left it.)
    rate, held = (p1 / p2, p2) if shape == "SlidingWindow" else (p1, 0.0)
    assert len(during) >= 0.5 * rate * (OUTAGE - held), len(during)
    # ...and handed back to Redis once it answered again.
    late = [at - restarted for at in local if at > restarted + HAND_BACK]
    assert not late, f"{len(late)} local grants after Redis was back, up to {max(late):.2f} s"
    assert any(remote and at > restarted for at, remote in records)
