"""An adaptive concurrency cap against a server with a knee: ``python
benchmarks/adaptive_bench.py [--quick] [--plot PATH]``.

The server (``examples/knee_server.py``, in a process of its own) has 8 workers, 50 ms a
call (+-20 %), and answers 503 at once to a call that finds 8 waiting: 160 calls a second
at most, with the latency of a queue beyond 8 in flight. A client of 256 tasks calls it
without pause, each call through ``limiter.acquire()`` and reported with
``lease.feedback(status=...)``; a 503 is a failed call (no retry).

1. A sweep of fixed ``max_concurrency`` (1, 2, 4 ... 512): goodput (successful calls a
   second) and p99 latency of each, over the last two thirds of its run.
2. ``max_concurrency=tb.adaptive(initial=4, min=1, max=512)`` (no tuning) on the same
   server, measured the same way: its goodput as a share of the best fixed setting's,
   and its p99 against that setting's (goals: >= 90 %, <= 1.5x); and the same against
   the knee (the smallest setting within 3 % of the best goodput: larger ones serve as
   much with longer queues, and a shorter p99).
3. The adaptive cap while the server's workers are halved (8 -> 4) for a third of the
   run, then restored: how long the error rate takes to return under 1 % once halved,
   and the goodput after the restore as a share of the one before.

4. On Redis: ``PROCESSES`` client processes share the server (``CLIENTS`` tasks in all),
   each through a limiter of the same key on a Redis backend, with the adaptive cap
   (learned per process) and a rate in Redis that never binds: their goodput and p99
   together, against the best fixed setting's, and each process's cap at the end.
   Redis is at ``$TOKENBUCKET_BENCH_REDIS_URL`` (default ``redis://127.0.0.1:6379/14``);
   ``--no-redis`` leaves this run out.

``--plot`` draws the third run (cap, calls in flight, latency and goodput over time)
beside the sweep's goodput against concurrency. See benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import tokenbucket as tb
from _harness import arguments, describe, environment, markdown_table, progress, write_json

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "examples"))
from knee_server import KneeServer

WORKERS, SERVICE, QUEUE = 8, 0.05, 8
CLIENTS = 256
SWEEP = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
STEP = 0.5  # the timeline's resolution, in seconds
PROCESSES = 2  # the Redis run's client processes
REDIS_URL = os.environ.get("TOKENBUCKET_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")


@dataclass
class Run:
    """What one run measured."""

    seconds: float
    ok: list[tuple[float, float]] = field(default_factory=list)  # (end, latency)
    failed: list[float] = field(default_factory=list)  # ends
    timeline: list[dict[str, float]] = field(default_factory=list)

    def window(self, start: float) -> tuple[float, float, float]:
        """Goodput, p99 latency and error rate from ``start`` on."""
        span = self.seconds - start
        kept = sorted(latency for end, latency in self.ok if end >= start)
        failed = sum(1 for end in self.failed if end >= start)
        p99 = kept[min(len(kept) - 1, int(len(kept) * 0.99))] if kept else float("nan")
        total = len(kept) + failed
        return len(kept) / span, p99, failed / total if total else 0.0


async def _call(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> int:
    writer.write(b"GET /work HTTP/1.1\r\nHost: knee\r\n\r\n")
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            length = int(line.split(b":", 1)[1])
    if length:
        await reader.readexactly(length)
    return status


async def run(
    server: KneeServer | str,
    cap: int | tb.Adaptive | tb.Limiter,
    seconds: float,
    phases: list[tuple[float, int]] = (),  # type: ignore[assignment]
    clients: int = CLIENTS,
) -> Run:
    """``clients`` tasks calling the server (or its URL) for ``seconds`` through a
    limiter of cap ``cap`` (or that limiter); at each ``(instant, workers)`` of
    ``phases``, the server's workers change."""
    limiter = cap if isinstance(cap, tb.Limiter) else tb.Limiter(max_concurrency=cap)
    url = server if isinstance(server, str) else server.url
    host, port = url.removeprefix("http://").split(":")
    result = Run(seconds)
    start = time.monotonic()
    end = start + seconds

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while (left := end - time.monotonic()) > 0:
                try:
                    async with limiter.acquire(timeout=left) as lease:
                        sent = time.monotonic()
                        status = await _call(reader, writer)
                        lease.feedback({}, status=status)
                except tb.AcquireTimeoutError:
                    return  # the run is over
                now = time.monotonic()
                if now >= end:
                    return  # (calls that end after the run are not counted)
                if status == 200:
                    result.ok.append((now - start, now - sent))
                else:
                    result.failed.append(now - start)
        finally:
            writer.close()

    async def watch() -> None:
        pending = sorted(phases)
        t = 0.0
        while t < seconds:
            await asyncio.sleep(max(0.0, start + t + STEP - time.monotonic()))
            t += STEP
            while pending and pending[0][0] <= t:
                assert isinstance(server, KneeServer)
                await asyncio.to_thread(server.set_workers, pending.pop(0)[1])
            stats = limiter.statistics()
            result.timeline.append(
                {"t": t, "limit": float(stats.max_concurrency or 0), "in_flight": stats.in_flight}
            )

    await asyncio.gather(watch(), *(client() for _ in range(clients)))
    if isinstance(server, KneeServer):
        server.set_workers(WORKERS)
    return result


async def child(url: str, redis_url: str, key: str, seconds: float, at: float) -> None:
    """One client process of the Redis run: ``CLIENTS // PROCESSES`` tasks from wall
    clock ``at`` on; prints what it measured as JSON."""
    backend = tb.RedisBackend(redis_url)
    limiter = tb.Limiter(
        requests_per_second=100_000,  # in Redis, never binding: every call asks it
        max_concurrency=tb.adaptive(initial=4, min=1, max=512),
        backend=backend,
        key=key,
    )
    await asyncio.sleep(max(0.0, at - time.time()))
    result = await run(url, limiter, seconds, clients=CLIENTS // PROCESSES)
    await backend.aclose()
    print(json.dumps({"ok": result.ok, "failed": result.failed, "cap": limiter.max_concurrency}))


async def forget(key: str) -> None:
    """Delete the keys of the limit named ``key`` (its meters and what its calls left):
    the database holds nothing of this run after it."""
    import redis.asyncio as aioredis

    client = aioredis.from_url(REDIS_URL)
    try:
        names = [name async for name in client.scan_iter(match=f"*{key}*")]
        if names:
            await client.delete(*names)
    finally:
        await client.aclose()


async def on_redis(server: KneeServer, seconds: float) -> tuple[Run, list[int]]:
    """``PROCESSES`` processes running :func:`child` at once: their calls as one run,
    and each one's cap at the end."""
    at = time.time() + 1.0  # (every process connected and imported by then)
    key = f"adaptive-bench-{uuid.uuid4().hex[:8]}"
    command = [sys.executable, __file__, "--child", server.url, REDIS_URL, key, str(seconds)]
    procs = [
        await asyncio.create_subprocess_exec(*command, str(at), stdout=subprocess.PIPE)
        for _ in range(PROCESSES)
    ]
    outputs = [await proc.communicate() for proc in procs]
    await forget(key)
    result = Run(seconds)
    caps = []
    for proc, (out, _) in zip(procs, outputs, strict=True):
        if proc.returncode != 0:
            raise SystemExit(
                f"a client process failed ({proc.returncode}): is Redis at {REDIS_URL}?"
            )
        data = json.loads(out)
        result.ok += [tuple(pair) for pair in data["ok"]]
        result.failed += data["failed"]
        caps.append(data["cap"])
    return result, caps


def timeline(result: Run) -> list[dict[str, float]]:
    """Per step: the cap, calls in flight, median latency, goodput and error rate."""
    rows = []
    for point in result.timeline:
        t = point["t"]
        lat = sorted(latency for end, latency in result.ok if t - STEP <= end < t)
        failed = sum(1 for end in result.failed if t - STEP <= end < t)
        rows.append(
            {
                **point,
                "latency": lat[len(lat) // 2] if lat else float("nan"),
                "goodput": len(lat) / STEP,
                "errors": failed / (len(lat) + failed) if lat or failed else 0.0,
            }
        )
    return rows


def plot(path: str, sweep: list[dict[str, float]], rows: list[dict[str, float]]) -> None:
    from matplotlib.figure import Figure

    figure = Figure(figsize=(11, 6.5), layout="constrained")
    grid = figure.add_gridspec(3, 2, width_ratios=[2.2, 1])
    times = [row["t"] for row in rows]
    top = figure.add_subplot(grid[0, 0])
    top.plot(times, [row["limit"] for row in rows], label="adaptive cap")
    top.plot(times, [row["in_flight"] for row in rows], label="calls in flight", alpha=0.7)
    top.set_ylabel("calls")
    top.legend(loc="upper right")
    middle = figure.add_subplot(grid[1, 0], sharex=top)
    middle.plot(times, [row["latency"] * 1000 for row in rows], color="tab:purple")
    middle.set_ylabel("median latency (ms)")
    bottom = figure.add_subplot(grid[2, 0], sharex=top)
    bottom.plot(times, [row["goodput"] for row in rows], color="tab:green", label="goodput")
    bottom.plot(times, [row["errors"] * 100 for row in rows], color="tab:red", label="errors (%)")
    bottom.set_ylabel("calls/s, %")
    bottom.set_xlabel("seconds (workers 8, then 4, then 8 again)")
    bottom.legend(loc="upper right")
    side = figure.add_subplot(grid[:, 1])
    side.plot([r["cap"] for r in sweep], [r["goodput"] for r in sweep], marker="o")
    side.set_xscale("log", base=2)
    side.set_xlabel("fixed max_concurrency")
    side.set_ylabel("goodput (calls/s)")
    side.set_title("the fixed sweep")
    figure.suptitle("An adaptive cap against a server with a knee (8 workers, 50 ms a call)")
    figure.savefig(path, dpi=110)


async def main() -> None:
    parser = arguments(__doc__)
    parser.add_argument("--plot", metavar="PATH", help="draw the capacity-change run here")
    parser.add_argument("--no-redis", action="store_true", help="leave the Redis run out")
    options = parser.parse_args()
    quick = options.quick
    seconds = 1.5 if quick else 9.0
    env = environment("quick" if quick else "full", " ".join(sys.argv), ["tokenbucket-async"])
    print(describe(env))
    with KneeServer(workers=WORKERS, service=SERVICE, queue=QUEUE) as server:
        sweep = []
        for cap in [1, 8, 64] if quick else SWEEP:
            progress(f"fixed max_concurrency={cap}")
            goodput, p99, errors = (await run(server, cap, seconds)).window(seconds / 3)
            sweep.append({"cap": cap, "goodput": goodput, "p99": p99, "errors": errors})
        adaptive = tb.adaptive(initial=4, min=1, max=512)
        progress("adaptive")
        steady = await run(server, adaptive, seconds * 2)
        goodput, p99, errors = steady.window(seconds * 2 / 3)
        progress("adaptive, with the workers halved for a third of the run")
        third = seconds * 2
        changed = await run(
            server, adaptive, third * 3, [(third, WORKERS // 2), (2 * third, WORKERS)]
        )
        shared = None
        if not options.no_redis:
            progress(f"adaptive on Redis, {PROCESSES} processes")
            redis_run, caps = await on_redis(server, seconds * 2)
            shared = (*redis_run.window(seconds * 2 / 3), caps)
    # The best fixed setting (the highest goodput), and the knee: the smallest setting
    # within 3 % of it (larger ones serve as much, with longer queues).
    most = max(sweep, key=lambda r: r["goodput"])
    knee = [r for r in sweep if r["goodput"] >= 0.97 * most["goodput"]]
    best = min(knee, key=lambda r: r["cap"])
    rows = timeline(changed)
    halved = [r for r in rows if third < r["t"] <= 2 * third]
    recovered = next(
        (
            r["t"] - third
            for i, r in enumerate(halved)
            if all(x["errors"] < 0.01 for x in halved[i:])
        ),
        float("nan"),
    )
    before = [r["goodput"] for r in rows if third / 2 < r["t"] <= third]
    after = [r["goodput"] for r in rows if 2.5 * third < r["t"]]
    share_after = (
        (sum(after) / len(after)) / (sum(before) / len(before))
        if before and after
        else float("nan")
    )
    table = [
        [str(r["cap"]), f"{r['goodput']:.0f}", f"{r['p99'] * 1000:.0f}", f"{r['errors']:.1%}"]
        for r in sweep
    ]
    table.append(["adaptive", f"{goodput:.0f}", f"{p99 * 1000:.0f}", f"{errors:.1%}"])
    if shared is not None:
        table.append(
            [
                f"adaptive, Redis, {PROCESSES} processes",
                f"{shared[0]:.0f}",
                f"{shared[1] * 1000:.0f}",
                f"{shared[2]:.1%}",
            ]
        )
    print(
        markdown_table(["max_concurrency", "goodput/s", "p99 ms", "errors"], table, right=[1, 2, 3])
    )
    print()
    for what, fixed in (("the best fixed setting", most), ("the knee", best)):
        print(
            f"adaptive / {what} ({fixed['cap']}): goodput {goodput / fixed['goodput']:.2f}x "
            f"(goal >= 0.90), p99 {p99 / fixed['p99']:.2f}x (goal <= 1.5)"
        )
    print(
        f"workers halved: errors under 1 % for good after {recovered:.1f} s; goodput after "
        f"the restore {share_after:.2f}x the one before"
    )
    if shared is not None:
        print(
            f"on Redis, {PROCESSES} processes / the best fixed setting: goodput "
            f"{shared[0] / most['goodput']:.2f}x, p99 {shared[1] / most['p99']:.2f}x; "
            f"/ the knee: p99 {shared[1] / best['p99']:.2f}x; caps at the end {shared[3]}"
        )
    if options.plot:
        plot(options.plot, sweep, rows)
    if options.json:
        write_json(
            options.json,
            {
                "environment": env,
                "sweep": sweep,
                "adaptive": {"goodput": goodput, "p99": p99, "errors": errors},
                "best": most,
                "knee": best,
                "timeline": rows,
                "recovered_after": recovered,
                "goodput_after_restore": share_after,
                "redis": None
                if shared is None
                else {
                    "processes": PROCESSES,
                    "goodput": shared[0],
                    "p99": shared[1],
                    "errors": shared[2],
                    "caps": shared[3],
                },
            },
        )


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        url, redis_url, key, seconds, at = sys.argv[2:7]
        asyncio.run(child(url, redis_url, key, float(seconds), float(at)))
    else:
        asyncio.run(main())
