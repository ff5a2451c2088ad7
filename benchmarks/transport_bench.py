"""The transport's overhead per call: ``python benchmarks/transport_bench.py [--quick]``.

The same chat completions (non-streaming, and streaming with usage) through the real
``openai`` SDK, bare (``http_client=httpx2.AsyncClient()``) and limited
(``httpx2.AsyncClient(transport=tb.AsyncLimitedTransport(limiter))`` on a ``Limiter``
that never binds, so only the overhead shows), and the same with ``httpx``, against the
fake provider (examples/fake_provider) run in a subprocess on this machine: client CPU per
call (``time.process_time`` of this process, which runs nothing else), in batches of
sequential calls, bare and limited batches alternating, medians over the rounds. The
floor rows are the limiter alone (acquire, settle, release; then also the feedback of the
provider's headers) per call, in the same run. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import httpx2
import openai

import tokenbucket as tb
from _harness import (
    arguments,
    describe,
    environment,
    markdown_table,
    number,
    progress,
    rotated,
    write_json,
)

HERE = os.path.dirname(os.path.abspath(__file__))
SERVER = os.path.join(HERE, os.pardir, "examples", "fake_provider", "server.py")
GOAL = 0.05  # the transport's overhead, as a share of the bare call's client CPU
NEVER = 10**9  # requests per minute no run reaches (tokens: a thousand times more)
MODEL = "gpt-bench"
MAX_TOKENS = 200
MESSAGES: list[Any] = [
    {
        "role": "system",
        "content": "You are a concise assistant. Answer in one short paragraph, plain text, "
        "no lists, no headings, and say so when you do not know.",
    },
    {
        "role": "user",
        "content": "Our service calls a language model a few thousand times a minute and "
        "sometimes gets 429s. Which limits do providers usually enforce (requests, input "
        "and output tokens per minute), and how should a client pace its calls so that "
        "retries stay rare without leaving much of the allowance unused?",
    },
]


@dataclass(frozen=True)
class Config:
    mode: str
    calls: int  # sequential calls per measured batch
    rounds: int  # every batch once per round, in a rotating order
    warmup: int  # calls per client before the first round (connections, caches)
    floor_factor: int  # the floor batches make this many times more (cheap) calls


FULL = Config("full", calls=40, rounds=21, warmup=20, floor_factor=5)
QUICK = Config("quick", calls=15, rounds=2, warmup=3, floor_factor=2)

Call = Callable[[], Awaitable[None]]


@dataclass
class Row:
    """One client (library, streaming or not): CPU per call of each round, bare and limited."""

    library: str
    stream: bool
    bare: list[float] = field(default_factory=list)
    limited: list[float] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"openai + {self.library}, {'stream with usage' if self.stream else 'JSON'}"

    @property
    def bare_us(self) -> float:
        return statistics.median(self.bare) * 1e6

    @property
    def limited_us(self) -> float:
        return statistics.median(self.limited) * 1e6

    @property
    def overhead(self) -> float:
        return (self.limited_us - self.bare_us) / self.bare_us

    @property
    def paired(self) -> list[float]:
        """The overhead of each round, limited against the bare batch of the same round."""
        return [limited / bare - 1 for bare, limited in zip(self.bare, self.limited, strict=True)]


@dataclass
class Floor:
    name: str
    cpu: list[float] = field(default_factory=list)

    @property
    def us(self) -> float:
        return statistics.median(self.cpu) * 1e6


@contextlib.contextmanager
def provider() -> Iterator[str]:
    """The fake provider in a subprocess (its own CPU stays out of ours): its base URL."""
    command = [sys.executable, SERVER, "--rpm", str(NEVER), "--tpm", str(NEVER * 1000)]
    process = subprocess.Popen([*command, "--latency", "0", "0"], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    try:
        line = process.stdout.readline()
        match = re.search(r"Serving (\S+)", line)
        if match is None:
            raise RuntimeError(f"the fake provider did not start: {line!r}")
        yield match[1]
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def never_binding() -> tb.Limiter:
    return tb.Limiter(requests_per_minute=NEVER, tokens_per_minute=NEVER * 1000)


def sdk_call(client: openai.AsyncOpenAI, stream: bool) -> Call:
    async def plain() -> None:
        reply = await client.chat.completions.create(
            model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
        )
        assert reply.usage is not None

    async def streamed() -> None:
        chunks = await client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            max_tokens=MAX_TOKENS,
            stream=True,
            stream_options={"include_usage": True},
        )
        usage = None
        async with chunks:
            async for chunk in chunks:
                usage = chunk.usage or usage
        assert usage is not None

    return streamed if stream else plain


async def batch(call: Call, n: int) -> float:
    """CPU seconds per call of ``n`` sequential calls, after a garbage collection."""
    gc.collect()
    cpu = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - cpu) / n


async def measure(url: str, cfg: Config) -> tuple[list[Row], list[Floor], dict[str, Any]]:
    libraries: dict[str, Any] = {"httpx2": httpx2, "httpx": httpx}
    rows = [Row(name, stream) for name in libraries for stream in (False, True)]
    limiters: list[tb.Limiter] = []
    clients: list[openai.AsyncOpenAI] = []
    calls: dict[tuple[str, bool, bool], Call] = {}
    for name, library in libraries.items():
        for limited in (False, True):
            if limited:
                limiters.append(never_binding())
                http = library.AsyncClient(transport=tb.AsyncLimitedTransport(limiters[-1]))
            else:
                http = library.AsyncClient()
            client = openai.AsyncOpenAI(base_url=url, api_key="local", http_client=http)
            clients.append(client)
            for stream in (False, True):
                calls[name, stream, limited] = sdk_call(client, stream)

    # The floor: what the transport asks of the limiter per call, nothing else.
    reply = await clients[0].chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    headers = reply.headers.multi_items()
    usage = reply.parse().usage
    assert usage is not None
    estimate = float(tb.estimate_tokens(MESSAGES) + MAX_TOKENS)
    floor_limiter = never_binding()

    async def lease() -> None:
        async with floor_limiter.acquire(tokens=estimate) as held:
            held.settle(tokens=usage.total_tokens)

    async def lease_and_feedback() -> None:
        async with floor_limiter.acquire(tokens=estimate) as held:
            floor_limiter.feedback(headers, status=200)
            held.settle(tokens=usage.total_tokens)

    floors = [
        Floor("floor: Limiter acquire + settle + release"),
        Floor("floor + feedback: the same + Limiter.feedback(the response's headers)"),
    ]
    floor_calls = {floors[0].name: lease, floors[1].name: lease_and_feedback}

    for call in [*calls.values(), lease, lease_and_feedback]:
        for _ in range(cfg.warmup):
            await call()
    jobs: list[tuple[str, Any]] = [("sdk", key) for key in calls] + [("floor", f) for f in floors]
    for turn in range(cfg.rounds):
        progress(f"round {turn + 1} of {cfg.rounds}")
        for kind, job in rotated(jobs, turn * 3):  # rotate by 3: not always bare first
            if kind == "floor":
                job.cpu.append(await batch(floor_calls[job.name], cfg.calls * cfg.floor_factor))
                continue
            name, stream, limited = job
            row = next(r for r in rows if (r.library, r.stream) == (name, stream))
            (row.limited if limited else row.bare).append(await batch(calls[job], cfg.calls))
    for client in clients:
        await client.close()
    for limiter in limiters:  # every lease ended: the transport released every slot
        assert limiter.statistics().in_flight == 0, limiter.statistics()
    return rows, floors, {"headers": dict(headers), "usage": usage.model_dump()}


def report(rows: list[Row], floors: list[Floor], env: dict[str, Any], cfg: Config) -> str:
    def spread(row: Row) -> str:
        """The middle half of the rounds' overheads (all of them, with fewer than 4)."""
        paired = sorted(row.paired)
        if len(paired) >= 4:
            low, _, high = statistics.quantiles(paired, n=4)
        else:
            low, high = paired[0], paired[-1]
        return f"{low:+.1%} .. {high:+.1%}"

    table = markdown_table(
        [
            "calls",
            "bare us/call",
            "limited us/call",
            "overhead us",
            "overhead",
            "rounds (IQR)",
            f"< {GOAL:.0%}",
        ],
        [
            [
                row.name,
                f"{row.bare_us:,.0f}",
                f"{row.limited_us:,.0f}",
                f"{row.limited_us - row.bare_us:+,.1f}",
                f"{row.overhead:+.1%}",
                spread(row),
                "yes" if row.overhead < GOAL else "NO",
            ]
            for row in rows
        ],
        range(1, 6),
    )
    reference = rows[0]
    floor_table = markdown_table(
        ["limiter alone", "us/call", f"of the bare {reference.name.split(', ')[0]} JSON call"],
        [[f.name, number(f.us, ".1f"), f"{f.us / reference.bare_us:.1%}"] for f in floors],
        (1, 2),
    )
    calls = cfg.calls * cfg.rounds
    return "\n".join(
        [
            "# AsyncLimitedTransport: overhead per call",
            "",
            describe(env),
            "",
            f"Client CPU (`time.process_time`) per call: medians over {cfg.rounds} rounds of "
            f"{cfg.calls} sequential calls per client ({calls:,} calls each), bare and "
            "limited batches alternating; 'rounds (IQR)' is the middle half of the overheads "
            "of each round against the bare batch of the same round. The fake provider runs in another process.",
            "",
            table,
            "",
            floor_table,
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = arguments(__doc__)
    args = parser.parse_args(argv)
    cfg = QUICK if args.quick else FULL
    command = " ".join(["python benchmarks/transport_bench.py", *argv])
    env = environment(cfg.mode, command, ["openai", "httpx", "httpx2"])
    started = time.monotonic()
    with provider() as url:
        rows, floors, seen = asyncio.run(measure(url, cfg))
    print(report(rows, floors, env, cfg))
    if args.json:
        results = {"rows": [asdict(r) for r in rows], "floors": [asdict(f) for f in floors]}
        write_json(args.json, {"environment": env, "config": asdict(cfg), **results, **seen})
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
