"""Several OS processes, each with many tasks, share one limit through Redis.

Four processes (``_hammer.py``) of 50 tasks each acquire one unit at a time on ONE key for
about three seconds. Every grant comes back with two instants on the Redis server's
clock:

- the reservation's instant, computed by the reserve script: exact, so the limit is
  checked on it with no slack at all (only float rounding);
- the server's ``TIME`` read by the task right after ``acquire`` returned: later than the
  grant by the wake-up and one round trip (the *lag*). It must never be earlier than the
  reservation (no one goes early), and the limit still holds on these stamps over
  windows shortened by the largest lag measured (a grant moved later by at most ``L``
  cannot join more than a window of ``W - L`` of the true instants would allow).

The total achieved rate, after the initial burst, must be at least 95% of the limit.
"""

from __future__ import annotations

import asyncio
import json
import math
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from tests.redis._support import ROUNDING, bucket_excess, server_time, window_peak

if TYPE_CHECKING:
    import redis.asyncio as aioredis

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
PROCESSES = 4
TASKS = 50
DURATION = 3.0

# shape: (p1, p2, average rate per second, burst admitted at once)
SHAPES: dict[str, tuple[float, float, float, float]] = {
    "SlidingWindow": (50, 0.5, 100.0, 50),  # 50 in any 0.5 s
    "TokenBucket": (100, 20, 100.0, 20),  # 100/s, bursts of 20
}


async def run_processes(config: dict[str, Any]) -> list[dict[str, Any]]:
    """Start the processes together; their results, or fail with their stderr."""
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tests.redis._hammer",
            json.dumps(config),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(PROCESSES)
    ]
    outputs = await asyncio.wait_for(asyncio.gather(*(p.communicate() for p in procs)), 90)
    results = []
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, err.decode(errors="replace")
        results.append(json.loads(out))
    return results


@pytest.mark.parametrize("shape", list(SHAPES))
async def test_processes_share_one_limit(
    shape: str, redis_url: str, prefix: str, admin: aioredis.Redis
) -> None:
    p1, p2, rate, burst = SHAPES[shape]
    config = {
        "url": redis_url,
        "prefix": prefix,
        "shape": shape,
        "key": "hammered",
        "p1": p1,
        "p2": p2,
        "tasks": TASKS,
        "duration": DURATION,
        "start_at": await server_time(admin) + 3.0,  # time to start Python four times
    }
    results = await run_processes(config)

    records = [tuple(r) for result in results for r in result["records"]]
    instants = [at for at, _, _ in records]
    reads = [read for _, _, read in records]
    count = len(records)
    lag = max(read - at for at, _, read in records)
    span = max(instants) - min(instants)
    achieved = (count - burst) / span
    trips = sum(result["round_trips"] for result in results)
    print(
        f"\n{shape}: {count} grants by {PROCESSES} processes x {TASKS} tasks over "
        f"{span:.2f} s: {achieved:.1f}/s after the burst (limit {rate:g}/s); "
        f"TIME read at most {lag * 1000:.1f} ms after the reserved instant; "
        f"{trips / count:.2f} round trips per admission; "
        f"late starts {[round(r['late_start'], 3) for r in results]} s"
    )

    # Every process took part, and had a fair share (FIFO across processes).
    shares = [len(result["records"]) for result in results]
    assert min(shares) >= count / PROCESSES / 2, shares
    assert count >= rate * DURATION * 0.95

    # Nobody went before its instant: the TIME read after the grant is not earlier.
    early = [(at, read) for at, _, read in records if read < at - ROUNDING]
    assert not early, f"{len(early)} grants went before their reserved instant"
    # ...and no instant was reserved in the past (before the request reached Redis).
    assert all(at >= now - ROUNDING for at, now, _ in records)

    # The limit holds exactly on the reserved instants...
    if shape == "SlidingWindow":
        assert window_peak(instants, p2) <= p1
    else:
        # Allowed: float rounding only. A bucket's schedule is a chain of additions on
        # epoch-second doubles (spacing math.ulp(1.8e9) = 2**-22 s), so it drifts by up to
        # half a spacing per grant; see test_bucket_schedule_does_not_drift (a BUG).
        drift = len(instants) * math.ulp(max(instants)) / 2
        assert bucket_excess(instants, rate, p2 + rate * drift) <= 0
    # ...and on the TIME stamps, with only the measured lag as slack.
    assert lag < 0.25, f"TIME read {lag:.3f} s after the grant: the stamps mean little"
    if shape == "SlidingWindow":
        assert window_peak(reads, p2 - lag) <= p1
    else:
        assert bucket_excess(reads, rate, p2 + rate * (lag + drift)) <= 0

    # Work conservation: the configured rate is reached (>= 95%), on both clocks.
    assert achieved >= 0.95 * rate
    assert (count - burst) / (max(reads) - min(reads)) >= 0.95 * rate
