"""A limited client's metrics over one run, as OpenTelemetry reports them, plotted.

``python examples/observability_demo.py [--out docs/guides/observability.png] [--quick]``

The openai SDK sends chat requests through ``tb.AsyncLimitedTransport`` to the local
limit-enforcing server (examples/fake_provider), all at once, with a ``Limiter`` set to
the server's limits and reported by ``tb.instrument`` to an in-memory OpenTelemetry
reader, collected every 100 ms. Midway, a neighbour sharing the API key (no limiter)
sends a burst of its own: the server answers the limited client 429s, the limiter pauses
for the server's ``retry-after``, and the headers correct it. The plot shows admissions
per second, the queue and the calls in flight, the pauses, and the distribution of the
waits; the script prints the limiter's counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path
from typing import Any

import openai
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import tokenbucket as tb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_provider import LLMServer
from llm_demo import MODEL, ChatRequest, limits_for, make_requests, run_all, sender

SAMPLE = 0.1  # seconds between collections


def read(reader: InMemoryMetricReader) -> dict[str, Any]:
    """The limiter's metrics now, by name: a value summed over the points (attribute
    sets), or for the wait histogram, its points (one per binding limit)."""
    found: dict[str, Any] = {}
    data = reader.get_metrics_data()
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    if hasattr(point, "value"):
                        found[metric.name] = found.get(metric.name, 0) + point.value
                    else:
                        found.setdefault(metric.name, []).append(point)
    return found


async def neighbour(server: LLMServer, count: int) -> None:
    """Another service on the same API key, with no limiter: a burst of calls."""
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="local", max_retries=0)

    async def one() -> None:
        with contextlib.suppress(openai.APIError):  # its 429s are its own business
            await client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "hello " * 50}], max_tokens=100
            )

    try:
        await asyncio.gather(*(one() for _ in range(count)))
    finally:
        await client.close()


async def run(
    count: int, burst: int, at: float
) -> tuple[list[dict[str, float]], list[Any], list[float], Any]:
    """The run's samples (time, admitted, queue, in flight, paused), the final wait
    histogram's points, when the server said 429, and the limiter's counters."""
    reader = InMemoryMetricReader()
    provider = MeterProvider(metric_readers=[reader])
    samples: list[dict[str, float]] = []
    rpm, tpm = 100, 30_000
    with LLMServer(
        rpm=rpm, tpm=tpm, period=1.0, latency=(0.05, 0.25), seed=1, count_usage=True
    ) as server:
        limits = limits_for(rpm * 0.99, tpm * 0.99, 1.0)
        handle = tb.instrument(limits, name="gpt-demo", meter_provider=provider)
        rejected: list[float] = []
        limits.subscribe(
            lambda event: (
                rejected.append(time.monotonic() - start) if event.kind == "rejected" else None
            )
        )
        requests: list[ChatRequest] = make_requests(count)
        send, close = sender(server, "transport", limits)
        start = time.monotonic()
        done = asyncio.Event()

        async def sample() -> None:
            while not done.is_set():
                metrics = read(reader)
                samples.append(
                    {
                        "t": time.monotonic() - start,
                        "admitted": metrics.get("tokenbucket.admitted", 0),
                        "queue": metrics.get("tokenbucket.queue.length", 0),
                        "in_flight": metrics.get("tokenbucket.in_flight", 0),
                        "paused": metrics.get("tokenbucket.paused", 0),
                    }
                )
                await asyncio.sleep(SAMPLE)

        async def interfere() -> None:
            await asyncio.sleep(at)
            await neighbour(server, burst)

        sampler = asyncio.create_task(sample())
        try:
            await asyncio.gather(run_all("transport", requests, send), interfere())
        finally:
            done.set()
            await sampler
            await close()
        histogram = read(reader).get("tokenbucket.wait.duration", [])
        counters = limits.statistics().counters
        handle.close()
    return samples, histogram, rejected, counters


def plot(
    samples: list[dict[str, float]], histogram: list[Any], rejected: list[float], out: Path
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    times = [s["t"] for s in samples]
    span = 5  # samples: admissions per second over half a second
    rates = [
        (s["admitted"] - samples[max(0, k - span)]["admitted"])
        / max(s["t"] - samples[max(0, k - span)]["t"], 1e-9)
        for k, s in enumerate(samples)
    ]
    figure, (top, middle, bottom) = plt.subplots(3, 1, figsize=(8, 8.5))
    top.plot(times, rates, color="tab:blue", label="admitted per second (over 0.5 s)")
    top.axhline(100, color="gray", ls="--", lw=1, label="server's request limit (tokens bind)")
    for k, when in enumerate(rejected):
        top.axvline(
            when, color="tab:red", lw=0.8, alpha=0.6, label="429 (then a pause)" if k == 0 else None
        )
    top.set_ylabel("requests/s")
    top.set_title("Admissions; red: a neighbour's burst made the server answer 429")
    top.legend(loc="lower right", fontsize=8)
    middle.plot(times, [s["queue"] for s in samples], color="tab:orange", label="waiting")
    middle.plot(times, [s["in_flight"] for s in samples], color="tab:green", label="in flight")
    middle.set_ylabel("requests")
    middle.set_xlabel("seconds")
    middle.set_title("Queue length and calls in flight (max_concurrency 64)")
    middle.legend(loc="upper right", fontsize=8)
    if histogram:
        bounds = list(histogram[0].explicit_bounds)
        counts = [sum(c) for c in zip(*(p.bucket_counts for p in histogram), strict=True)]
        waited = sum(p.count for p in histogram)
        total = sum(p.sum for p in histogram)
        labels = [f"<= {b:g} s" for b in bounds] + [f"> {bounds[-1]:g} s"]
        bottom.bar(range(len(counts)), counts, color="tab:purple")
        bottom.set_xticks(range(len(counts)), labels, fontsize=8)
        bottom.set_ylabel("grants")
        bottom.set_title(
            f"Waits of the grants that waited ({waited:,}; mean {total / max(waited, 1):.2f} s)"
        )
    figure.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=110)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--out", type=Path, default=Path("observability.png"), help="the PNG")
    parser.add_argument("--quick", action="store_true", help="a short run")
    args = parser.parse_args(argv)
    count, burst, at = (150, 60, 0.5) if args.quick else (1200, 250, 3.0)
    samples, histogram, rejected, counters = asyncio.run(run(count, burst, at))
    plot(samples, histogram, rejected, args.out)
    print(f"wrote {args.out}")
    print(
        f"admitted {counters.admitted:,}, waited {counters.waited:,} "
        f"({counters.wait_seconds:,.1f} s in total), 429s {counters.rejections}, "
        f"pauses {counters.pauses} ({counters.paused_seconds:.1f} s), "
        f"corrections {counters.corrections}, timeouts {counters.timeouts}"
    )


if __name__ == "__main__":
    main()
