"""The transport's overhead per call: ``python benchmarks/transport_bench.py [--quick]``.

The same chat completions (non-streaming, and streaming with usage) through the real
``openai`` SDK, bare (``http_client=httpx2.AsyncClient()``) and limited
(``httpx2.AsyncClient(transport=tb.AsyncLimitedTransport(limiter))`` on a ``Limiter``
that never binds, so only the overhead shows), and the same with ``httpx``, against the
fake provider (examples/fake_provider) run in a subprocess on this machine: the client
CPU of each call (``time.process_time`` of this process, which runs nothing else), the
clients of a library calling one after the other in a random order, medians. The floors:
clients whose transport does only the limiter's part (acquire, settle, release; then also
the feedback of the response's headers), and the same work alone in a tight loop, in the
same run. Last, each of these transports over a canned response (no network, no SDK),
timed right after a bare call of the SDK: their cost as inside a call, with a fraction of
the noise. See benchmarks/README.md for the method.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
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
USED = 150.0  # the usage the floors settle
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
    calls: int  # calls of each client per round, one client after the other
    rounds: int  # medians of each round give the spread of the overhead
    warmup: int  # calls per client before the first round (connections, caches)
    floor_factor: int  # the floor batches make this many times more (cheap) calls


FULL = Config("full", calls=50, rounds=12, warmup=20, floor_factor=20)
QUICK = Config("quick", calls=10, rounds=2, warmup=3, floor_factor=5)

Call = Callable[[], Awaitable[None]]
ESTIMATE = float(tb.estimate_tokens(MESSAGES) + MAX_TOKENS)  # as the transport's


VARIANTS = ("bare", "limited", "lease", "lease+feedback")  # the last two: httpx2 only
LOOP = "loop"  # the "library" of the floors measured in a tight loop, without any call
CANNED = "canned"  # the "library" of the transports measured over a canned response


@dataclass
class Results:
    """CPU seconds of every call (of every batch, for the tight loops) by round, keyed by
    (library, variant, streaming)."""

    cpu: dict[str, list[list[float]]] = field(default_factory=dict)

    @staticmethod
    def key(library: str, variant: str, stream: bool) -> str:
        return f"{library} {variant} {'stream' if stream else 'json'}"

    def add(self, key: str, turn: int, seconds: float) -> None:
        rounds = self.cpu.setdefault(key, [])
        rounds += [[] for _ in range(turn + 1 - len(rounds))]
        rounds[turn].append(seconds)

    def us(self, library: str, variant: str, stream: bool) -> float:
        """The median over every round, in microseconds (NaN when not measured)."""
        found = [
            x for rounds in self.cpu.get(self.key(library, variant, stream), []) for x in rounds
        ]
        return statistics.median(found) * 1e6 if found else math.nan

    def paired(self, library: str, variant: str, stream: bool) -> list[float]:
        """The overhead of each round: ``variant``'s median against the bare one's."""
        bare = self.cpu[self.key(library, "bare", stream)]
        other = self.cpu[self.key(library, variant, stream)]
        median = statistics.median
        return [median(mine) / median(theirs) - 1 for theirs, mine in zip(bare, other, strict=True)]


class LeaseOnly:
    """A transport that asks of the limiter what AsyncLimitedTransport does and nothing
    more: acquire the estimate, send, (``feedback``: fold in the response's headers),
    settle a fixed usage and release, before the body is read (a floor)."""

    def __init__(
        self, library: Any, limiter: tb.Limiter, *, feedback: bool, inner: Any = None
    ) -> None:
        self._inner = library.AsyncHTTPTransport() if inner is None else inner
        self._limiter = limiter
        self._feedback = feedback

    async def handle_async_request(self, request: Any) -> Any:
        async with self._limiter.acquire(tokens=ESTIMATE) as lease:
            response = await self._inner.handle_async_request(request)
            if self._feedback:
                self._limiter.feedback(response.headers.multi_items(), status=response.status_code)
            lease.settle(tokens=USED)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


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
    """CPU seconds per call of ``n`` sequential calls."""
    cpu = time.process_time()
    for _ in range(n):
        await call()
    return (time.process_time() - cpu) / n


def transport_for(variant: str, library: Any, limiter: tb.Limiter, inner: Any = None) -> Any:
    if variant == "limited":
        return tb.AsyncLimitedTransport(limiter, inner)
    if variant.startswith("lease"):
        return LeaseOnly(library, limiter, feedback=variant == "lease+feedback", inner=inner)
    return inner  # bare: the client's own default transport (or the canned one)


def chat_body(stream: bool) -> dict[str, Any]:
    """The JSON body of the SDK's calls (``sdk_call``)."""
    body: dict[str, Any] = {"model": MODEL, "messages": MESSAGES, "max_tokens": MAX_TOKENS}
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    return body


class CannedBody(httpx2.AsyncByteStream):
    """A response body of chunks received before."""

    def __init__(self, chunks: list[bytes]) -> None:
        self._chunks = chunks

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self._chunks:
            yield chunk


class Canned(httpx2.AsyncBaseTransport):
    """Answers every request with the status, headers and body of a response received
    from the fake provider before: a stream in one chunk per event (as the server sent
    them on an idle machine), whatever chunks the body arrived in."""

    def __init__(self, status: int, headers: list[tuple[bytes, bytes]], chunks: list[bytes]):
        self._answer = status, headers, chunks

    @classmethod
    async def of(cls, url: str, stream: bool) -> Canned:
        async with (
            httpx2.AsyncClient() as client,
            client.stream("POST", f"{url}/chat/completions", json=chat_body(stream)) as response,
        ):
            raw = b"".join([chunk async for chunk in response.aiter_raw()])
            status, headers = response.status_code, response.headers
        assert status == 200, status
        assert "content-encoding" not in headers, headers
        assert b'"usage":{' in raw, raw  # (what the transport settles from)
        chunks = [event + b"\n\n" for event in raw.split(b"\n\n") if event] if stream else [raw]
        return cls(status, headers.raw, chunks)

    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response:
        status, headers, chunks = self._answer
        return httpx2.Response(status, headers=headers, stream=CannedBody(chunks))


def canned_call(transport: Any, url: str, stream: bool) -> Call:
    """Send a request of the SDK's path and body through ``transport``, read the
    response's body to its end, close it."""
    content = json.dumps(chat_body(stream)).encode()
    headers = {"content-type": "application/json"}
    target = f"{url}/chat/completions"

    async def call() -> None:
        request = httpx2.Request("POST", target, content=content, headers=headers)
        response = await transport.handle_async_request(request)
        async for _ in response.aiter_raw():
            pass
        await response.aclose()

    return call


async def measure(url: str, cfg: Config, results: Results) -> dict[str, Any]:
    """Every batch of every round into ``results``; returns what one reply looked like."""
    libraries: dict[str, Any] = {"httpx2": httpx2, "httpx": httpx}
    limiters: list[tb.Limiter] = []
    clients: list[openai.AsyncOpenAI] = []
    calls: dict[str, Call] = {}
    for name, library in libraries.items():
        for variant in VARIANTS if name == "httpx2" else VARIANTS[:2]:
            limiter = never_binding()
            limiters.append(limiter)
            http = library.AsyncClient(transport=transport_for(variant, library, limiter))
            client = openai.AsyncOpenAI(base_url=url, api_key="local", http_client=http)
            clients.append(client)
            for stream in (False, True):
                calls[Results.key(name, variant, stream)] = sdk_call(client, stream)

    # The floors in a tight loop: the limiter's work per call, with nothing around it.
    reply = await clients[0].chat.completions.with_raw_response.create(
        model=MODEL, messages=MESSAGES, max_tokens=MAX_TOKENS
    )
    headers = reply.headers.multi_items()
    usage = reply.parse().usage
    assert usage is not None
    loop_limiter = never_binding()

    async def lease() -> None:
        async with loop_limiter.acquire(tokens=ESTIMATE) as held:
            held.settle(tokens=USED)

    async def lease_and_feedback() -> None:
        async with loop_limiter.acquire(tokens=ESTIMATE) as held:
            loop_limiter.feedback(headers, status=200)
            held.settle(tokens=USED)

    loops = {Results.key(LOOP, "lease", False): lease}
    loops[Results.key(LOOP, "lease+feedback", False)] = lease_and_feedback

    # The transports over canned responses, each timed right after a bare call.
    canned: dict[str, Call] = {}
    for stream in (False, True):
        answer = await Canned.of(url, stream)
        for variant in VARIANTS:
            limiter = never_binding()
            limiters.append(limiter)
            transport = transport_for(variant, httpx2, limiter, answer)
            canned[Results.key(CANNED, variant, stream)] = canned_call(transport, url, stream)
    chill = calls[Results.key("httpx2", "bare", False)]

    for call in [*calls.values(), *loops.values(), *canned.values()]:
        for _ in range(cfg.warmup):
            await call()
    clock = time.process_time
    shuffle = random.Random(0).shuffle
    for turn in range(cfg.rounds):
        progress(f"round {turn + 1} of {cfg.rounds}")
        gc.collect()
        for library in rotated(list(libraries), turn):
            # One call of each of the library's clients in turn, in a random order: a
            # call runs faster after one that used the same code (warm caches), so every
            # client follows every other as often, and never a client of the other library.
            keys = [key for key in calls if key.startswith(f"{library} ")]
            for _ in range(cfg.calls):
                shuffle(keys)
                for key in keys:
                    call = calls[key]
                    cpu = clock()
                    await call()
                    results.add(key, turn, clock() - cpu)
        for key, loop in loops.items():
            results.add(key, turn, await batch(loop, cfg.calls * cfg.floor_factor))
        keys = list(canned)
        for _ in range(cfg.calls):
            shuffle(keys)
            for key in keys:
                await chill()  # (its caches, as a call leaves them)
                cpu = clock()
                await canned[key]()
                results.add(key, turn, clock() - cpu)
    for client in clients:
        await client.close()
    for limiter in limiters:  # every lease ended: every slot was released
        assert limiter.statistics().in_flight == 0, limiter.statistics()
    return {"headers": dict(headers), "usage": usage.model_dump()}


def report(results: Results, env: dict[str, Any], cfg: Config) -> str:
    def spread(library: str, variant: str, stream: bool) -> str:
        """The middle half of the rounds' overheads (all of them, with fewer than 4)."""
        paired = sorted(results.paired(library, variant, stream))
        if len(paired) >= 4:
            low, _, high = statistics.quantiles(paired, n=4)
        else:
            low, high = paired[0], paired[-1]
        return f"{low:+.1%} .. {high:+.1%}"

    def name(library: str, stream: bool) -> str:
        return f"openai + {library}, {'stream with usage' if stream else 'JSON'}"

    cases = [(library, stream) for library in ("httpx2", "httpx") for stream in (False, True)]
    rows = []
    for library, stream in cases:
        bare, limited = (results.us(library, v, stream) for v in ("bare", "limited"))
        overhead = (limited - bare) / bare
        rows.append(
            [
                name(library, stream),
                f"{bare:,.0f}",
                f"{limited:,.0f}",
                f"{limited - bare:+,.0f}",
                f"{overhead:+.1%}",
                spread(library, "limited", stream),
                "yes" if overhead < GOAL else "NO",
            ]
        )
    headers = ["calls", "bare us/call", "limited us/call", "overhead us", "overhead"]
    table = markdown_table([*headers, "rounds (IQR)", f"< {GOAL:.0%}"], rows, range(1, 6))

    def over(library: str, variant: str, stream: bool) -> str:
        bare = results.us(library, "bare", stream)
        extra = results.us(library, variant, stream) - bare
        return f"{extra:+,.0f} ({extra / bare:+.1%})"

    floor_rows = [
        [
            name("httpx2", stream),
            over("httpx2", "lease", stream),
            over("httpx2", "lease+feedback", stream),
            over("httpx2", "limited", stream),
        ]
        for stream in (False, True)
    ]
    loop = [results.us(LOOP, variant, False) for variant in ("lease", "lease+feedback")]
    floor_rows.append(["the same alone, in a tight loop", *(f"{us:,.1f}" for us in loop), ""])
    for stream in (False, True):
        nothing = results.us(CANNED, "bare", stream)
        extra = [
            results.us(CANNED, variant, stream) - nothing
            for variant in ("lease", "lease+feedback", "limited")
        ]
        what = "canned stream" if stream else "canned JSON response"
        floor_rows.append([f"a {what}, after a bare call", *(f"{us:,.1f}" for us in extra)])
    floor_table = markdown_table(
        [
            "calls (us over bare)",
            "floor: acquire + settle + release",
            "floor + feedback of the headers",
            "AsyncLimitedTransport",
        ],
        floor_rows,
        (1, 2, 3),
    )
    calls = cfg.calls * cfg.rounds
    return "\n".join(
        [
            "# AsyncLimitedTransport: overhead per call",
            "",
            describe(env),
            "",
            f"Client CPU (`time.process_time`) of each call: medians of {calls:,} calls per "
            f"client, {cfg.rounds} rounds of {cfg.calls} in which the clients of one library "
            "make one call each after the other (in a random order; then the other library's); "
            "'rounds (IQR)' is the middle half of the "
            "overheads of each round (its medians) against the bare client's. The fake "
            "provider runs in another process.",
            "",
            table,
            "",
            "Where the overhead goes: the floors are clients whose transport only does what "
            "AsyncLimitedTransport asks of the limiter (acquire, settle, release; then also "
            "`Limiter.feedback` of the response's headers), and the same work alone in a tight "
            "loop (hot caches: cheaper than inside a call). The last rows time each "
            "transport over a canned response (the one of the fake provider's, received "
            "before: no network, no SDK), right after a bare call of the SDK (caches as a "
            "call leaves them), less the same without a transport: us per call, as inside "
            "a call but with a fraction of its noise.",
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
    results = Results()
    with provider() as url:
        seen = asyncio.run(measure(url, cfg, results))
    print(report(results, env, cfg))
    if args.json:
        found = {"environment": env, "config": asdict(cfg), "cpu_per_call": results.cpu}
        write_json(args.json, found | seen)
    progress(f"done in {time.monotonic() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
