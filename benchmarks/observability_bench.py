"""What seeing a limiter costs: ``python benchmarks/observability_bench.py [--quick]``.

The uncontended path (``async with limiter.acquire(tokens=...) as lease:
lease.settle(...)`` on a Limiter that never binds, and the same without the settle) of a
plain limiter (its counters are always on), against the same limiter reported to
OpenTelemetry by ``tb.instrument`` (the SDK's ``MeterProvider`` with an in-memory reader,
collected after every batch) with the ``tokenbucket`` logger at INFO, and, for reference,
with a listener subscribed (every grant and settlement then makes an event). The
variants run in rotating order, in batches, on one asyncio loop; each round's median
is compared with the plain limiter's of the same round (goal: instrumented within 10 %).
Then the time one collection takes for a group of 100 models. See benchmarks/README.md.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import tokenbucket as tb
from _harness import (
    arguments,
    describe,
    environment,
    markdown_table,
    progress,
    rotated,
    time_ops,
    write_json,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

GOAL = 1.10  # instrumented / plain, uncontended
NEVER = 10**9  # requests per minute no run reaches (tokens: a thousand times more)
PLAIN = "plain (counters only)"
INSTRUMENTED = "instrument() + INFO logging"
LISTENED = "instrument() + INFO logging + a listener"
VARIANTS = [PLAIN, INSTRUMENTED, LISTENED]
PATHS = ["acquire + settle + release", "acquire + release"]


@dataclass(frozen=True)
class Config:
    mode: str
    rounds: int
    batch: int  # acquisitions per timed batch
    batches: int  # timed batches of each variant per round (their median counts)
    members: int  # the group whose collection is timed


FULL = Config("full", 15, 2_000, 5, 100)
QUICK = Config("quick", 3, 200, 3, 20)


@dataclass
class Results:
    ns: dict[str, dict[str, list[float]]] = field(default_factory=dict)  # path, variant: rounds
    collect_ms: list[float] = field(default_factory=list)

    def ratios(self, path: str, variant: str) -> list[float]:
        plain = self.ns[path][PLAIN]
        return [v / p for v, p in zip(self.ns[path][variant], plain, strict=True)]


def never_binding(name: str) -> tb.Limiter:
    return tb.Limiter(
        requests_per_minute=NEVER, tokens_per_minute=NEVER * 1000, max_concurrency=NEVER, name=name
    )


def variants() -> tuple[dict[str, tb.Limiter], list[InMemoryMetricReader]]:
    made = {variant: never_binding(f"bench {k}") for k, variant in enumerate(VARIANTS)}
    readers = []
    for variant in (INSTRUMENTED, LISTENED):
        reader = InMemoryMetricReader()
        tb.instrument(made[variant], meter_provider=MeterProvider(metric_readers=[reader]))
        readers.append(reader)
    made[LISTENED].subscribe(lambda event: None)
    return made, readers


def operation(limiter: tb.Limiter, path: str) -> Callable[[], Awaitable[None]]:
    async def settled() -> None:
        async with limiter.acquire(tokens=500) as lease:
            lease.settle(tokens=150)

    async def plain() -> None:
        async with limiter.acquire(tokens=500):
            pass

    return settled if path == PATHS[0] else plain


async def measure(cfg: Config, results: Results) -> None:
    logger = logging.getLogger("tokenbucket")
    logger.addHandler(logging.NullHandler())
    logger.setLevel(logging.INFO)
    limiters, readers = variants()
    ops = {(p, v): operation(limiters[v], p) for p in PATHS for v in VARIANTS}
    for op in ops.values():  # warm up
        await time_ops(op, cfg.batch)
    for turn in range(cfg.rounds):
        progress(f"round {turn + 1} of {cfg.rounds}")
        gc.collect()
        for path in PATHS:
            for variant in rotated(VARIANTS, turn):
                samples = [
                    await time_ops(ops[path, variant], cfg.batch) for _ in range(cfg.batches)
                ]
                for reader in readers:
                    reader.get_metrics_data()  # the collection runs between batches
                results.ns.setdefault(path, {}).setdefault(variant, []).append(
                    statistics.median(samples)
                )
    group = tb.BucketGroup({f"model-{k}": never_binding(f"model-{k}") for k in range(cfg.members)})
    reader = InMemoryMetricReader()
    tb.instrument(group, name="llm", meter_provider=MeterProvider(metric_readers=[reader]))
    for name in group.names():
        async with group.acquire(name, tokens=10):
            pass
    for _ in range(cfg.rounds):
        start = time.perf_counter()
        reader.get_metrics_data()
        results.collect_ms.append((time.perf_counter() - start) * 1000)


def report(env: dict[str, Any], cfg: Config, results: Results) -> str:
    rows = []
    for path in PATHS:
        for variant in VARIANTS:
            ratios = results.ratios(path, variant)
            ratio = statistics.median(ratios)
            goal = "" if variant != INSTRUMENTED else ("yes" if ratio <= GOAL else "NO")
            quartiles = statistics.quantiles(ratios, n=4) if len(ratios) > 1 else [ratio] * 3
            rows.append(
                [
                    path,
                    variant,
                    f"{statistics.median(results.ns[path][variant]):,.0f}",
                    f"{ratio:.3f}x",
                    f"{quartiles[0]:.3f} .. {quartiles[2]:.3f}",
                    goal,
                ]
            )
    table = markdown_table(
        ["path", "limiter", "ns/op", "vs plain", "rounds (IQR)", "within 10 %"],
        rows,
        right=[2, 3, 4],
    )
    collect = statistics.median(results.collect_ms)
    return "\n\n".join(
        [
            "# Observability: what instrumentation costs the uncontended path",
            describe(env),
            f"Medians of {cfg.rounds} rounds; in each, {cfg.batches} batches of {cfg.batch:,} "
            "acquisitions per variant (their median), the variants in rotating order; "
            "'vs plain' is the median of the per-round ratios to the plain limiter.",
            table,
            f"One collection of a group of {cfg.members} models (every metric): "
            f"{collect:.2f} ms (median of {len(results.collect_ms)}).",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = arguments(__doc__).parse_args(argv)
    cfg = QUICK if args.quick else FULL
    command = " ".join(["python benchmarks/observability_bench.py", *argv])
    env = environment(cfg.mode, command, ["opentelemetry-sdk"])
    started = time.monotonic()
    results = Results()
    asyncio.run(measure(cfg, results))
    print(report(env, cfg, results))
    if args.json:
        write_json(args.json, {"environment": env, "config": asdict(cfg), **asdict(results)})
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
