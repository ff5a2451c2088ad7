"""Thousands of chat requests through the official SDKs against a rate-limited server:
naive, then through ``tokenbucket.AsyncLimitedTransport``.

Starts a local server (the ``fake_provider`` package next to this file) that enforces
requests and tokens per period the way OpenAI does (token buckets; 429 with
``Retry-After``; ``x-ratelimit-*`` headers whose reset is the time until full), then
sends the same chat requests to it through the official SDKs, with their default
retries on, in four runs:

1. naively, with the ``openai`` SDK: ``asyncio.gather`` over every request, relying on
   the SDK's retries;
2. through the transport, with the server's limits: two lines, and every call, retry and
   stream of the client is limited, settled from its usage and paced by the headers;
3. the same with limits set 5x too high, which the server's headers correct;
4. the ``anthropic`` SDK through the transport (the server speaks its Messages API and
   ``anthropic-ratelimit-*`` headers too);
5. the classic batch script: the sync ``openai.OpenAI`` client in a
   ``ThreadPoolExecutor`` of 32 threads, through ``tokenbucket.LimitedTransport``, the
   sync twin (one limiter, shared by every thread).

Time is compressed: the limits are per second instead of per minute, so it runs in
about a minute. ``python examples/llm_demo.py`` (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import anthropic
import httpx2
import openai

import tokenbucket as tb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_provider import LLMServer, ServerStats, estimate_prompt_tokens

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

MODEL = "gpt-demo"
RUNS = (
    "naive",
    "transport",
    "transport, limits 5x too high",
    "transport, anthropic SDK",
    "sync transport, 32 threads",
)
THREADS = 32


@dataclass(frozen=True)
class ChatRequest:
    text: str
    max_tokens: int


@dataclass(frozen=True)
class Outcome:
    """What one run achieved, as the server counted it."""

    label: str
    sent: int
    succeeded: int
    failed: int
    stats: ServerStats
    wall: float
    rpm: int
    tpm: int
    period: float
    counters: tb.LimiterCounters | None = None  # what the limiter counted (None: naive)

    def rates(self) -> dict[str, float]:
        """Requests and tokens (prompt + completion) per second the server served, from
        the first request's arrival to the last's."""
        duration = max(self.stats.duration, 1e-9)
        return {
            "requests": self.stats.requests_ok / duration,
            "tokens": self.stats.tokens_used / duration,
        }

    def shares(self) -> dict[str, float]:
        """What the server served as a share of what its limits allowed over the run:
        the full bucket it started with, and its refill."""
        allowed = 1 + self.stats.duration / self.period  # limits' worth
        return {
            "requests": self.stats.requests_ok / (self.rpm * allowed),
            "tokens": self.stats.tokens_used / (self.tpm * allowed),
        }

    @property
    def binding(self) -> tuple[str, float]:
        """The limit that bound the run (the one used the most) and its share."""
        shares = self.shares()
        name = max(shares, key=shares.__getitem__)
        return name, shares[name]


def make_requests(count: int, seed: int = 7) -> list[ChatRequest]:
    """``count`` chat requests with seeded, varied prompt lengths and ``max_tokens``."""
    rng = random.Random(seed)
    words = ["rate", "limits", "tokens", "requests", "fair", "exact", "queue", "await"]
    words += ["server", "bucket", "window"]
    requests = []
    for _ in range(count):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(15, 250)))
        requests.append(ChatRequest(text, max_tokens=rng.randint(50, 300)))
    return requests


def count_tokens(value: object) -> float:
    """The server's own prompt estimate, as the transport's token counter (with a real
    provider: its tokenizer, e.g. tiktoken)."""
    if isinstance(value, list):
        return estimate_prompt_tokens(value)
    return -(-len(value) // 4) if isinstance(value, str) else 0


class Progress:
    """A one-line progress bar on stderr, shown only when stderr is a terminal."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.errors = 0
        self._shown = -1.0
        self._on = sys.stderr.isatty()
        self._lock = threading.Lock()  # steps may come from threads

    def step(self, *, error: bool = False) -> None:
        with self._lock:
            self._step(error)

    def _step(self, error: bool) -> None:
        self.done += 1
        self.errors += error
        now = time.monotonic()
        if self._on and (now - self._shown >= 0.1 or self.done == self.total):
            self._shown = now
            width = 30
            filled = width * self.done // self.total
            bar = "#" * filled + "." * (width - filled)
            end = "\n" if self.done == self.total else ""
            print(
                f"\r  {self.label:<30} [{bar}] {self.done:>5}/{self.total}  failed {self.errors}",
                end=end,
                file=sys.stderr,
                flush=True,
            )


async def run_all(
    label: str, requests: list[ChatRequest], send: Callable[[ChatRequest], Awaitable[object]]
) -> tuple[int, int]:
    """``send`` every request at once; how many succeeded and how many failed."""
    progress = Progress(label, len(requests))

    async def one(request: ChatRequest) -> bool:
        try:
            await send(request)
        except (openai.APIError, anthropic.APIError):
            progress.step(error=True)
            return False
        progress.step()
        return True

    results = await asyncio.gather(*(one(r) for r in requests))
    return sum(results), len(results) - sum(results)


def run_threads(
    server: LLMServer, label: str, limits: tb.Limiter, requests: list[ChatRequest]
) -> tuple[int, int]:
    """The batch script: the sync SDK in a pool of threads, every call through the sync
    transport; how many succeeded and how many failed."""
    transport = tb.LimitedTransport(limits, token_counter=count_tokens)
    client = openai.OpenAI(
        base_url=server.base_url, api_key="local", http_client=httpx2.Client(transport=transport)
    )
    progress = Progress(label, len(requests))

    def one(request: ChatRequest) -> bool:
        try:
            client.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": request.text}],
                max_tokens=request.max_tokens,
            )
        except openai.APIError:
            progress.step(error=True)
            return False
        progress.step()
        return True

    with client, ThreadPoolExecutor(THREADS) as pool:
        results = list(pool.map(one, requests))
    return sum(results), len(results) - sum(results)


def limits_for(rpm: float, tpm: float, period: float) -> tb.Limiter:
    """The server's limits over its period, as the token buckets they are: a burst of a
    whole period, then the refill. (With a real provider: ``tb.Limiter(requests_per_minute=
    tb.per_minute(500, burst=500), ..., max_concurrency=64)``, or a ``tb.BucketGroup``
    with one per model. A limit without a burst is an exact sliding window: it never
    admits more than N in any rolling minute, and forgoes the server's initial burst.)"""
    return tb.Limiter(
        {
            "requests": tb.Rate(rpm, period, burst=rpm),
            "tokens": tb.Rate(tpm, period, burst=tpm),
        },
        max_concurrency=64,
    )


def transport_client(limits: tb.Limiter) -> httpx2.AsyncClient:
    """An HTTP client whose every model call is limited by ``limits``: the two lines."""
    return httpx2.AsyncClient(
        transport=tb.AsyncLimitedTransport(limits, token_counter=count_tokens)
    )


def sender(
    server: LLMServer, label: str, limits: tb.Limiter | None
) -> tuple[Callable[[ChatRequest], Awaitable[object]], Callable[[], Awaitable[None]]]:
    """How ``label`` sends a request (with the SDK's default retries), and how it closes."""
    http = None if limits is None else transport_client(limits)
    if "anthropic" in label:
        claude = anthropic.AsyncAnthropic(base_url=server.url, api_key="local", http_client=http)

        async def send_message(request: ChatRequest) -> object:
            return await claude.messages.create(
                model=MODEL,
                messages=[{"role": "user", "content": request.text}],
                max_tokens=request.max_tokens,
            )

        return send_message, claude.close
    client = openai.AsyncOpenAI(base_url=server.base_url, api_key="local", http_client=http)

    async def send_chat(request: ChatRequest) -> object:
        return await client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": request.text}],
            max_tokens=request.max_tokens,
        )

    return send_chat, client.close


async def demonstrate(
    *,
    count: int,
    rpm: int,
    tpm: int,
    period: float,
    runs: tuple[str, ...] = RUNS,
    margin: float = 0.99,
) -> list[Outcome]:
    """Each of ``runs`` against one server, refilled between them. ``margin``: the share
    of the server's limits the limiter is given (a grant reaches the server some
    milliseconds later, and not all in the same order)."""
    requests = make_requests(count)
    outcomes = []
    with LLMServer(
        rpm=rpm, tpm=tpm, period=period, latency=(0.05, 0.25), seed=1, count_usage=True
    ) as server:
        for label in runs:
            server.refill()
            server.reset_stats()
            scale = 5 * margin if "5x" in label else margin
            limits = None if label == "naive" else limits_for(rpm * scale, tpm * scale, period)
            start = time.monotonic()
            if "threads" in label:
                assert limits is not None
                ok, failed = await asyncio.to_thread(run_threads, server, label, limits, requests)
            else:
                send, close = sender(server, label, limits)
                try:
                    ok, failed = await run_all(label, requests, send)
                finally:
                    await close()
            wall = time.monotonic() - start
            counters = None if limits is None else limits.statistics().counters
            outcomes.append(
                Outcome(label, count, ok, failed, server.stats(), wall, rpm, tpm, period, counters)
            )
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    """A Markdown table of the runs."""
    head = ["run", "sent", "succeeded", "failed", "429s"]
    head += ["requests/s", "tokens/s", "binding limit", "wall s"]
    body = []
    for o in outcomes:
        rates, shares = o.rates(), o.shares()
        name, share = o.binding
        body.append(
            [
                o.label,
                f"{o.sent:,}",
                f"{o.succeeded:,}",
                f"{o.failed:,}",
                f"{o.stats.requests_429:,}",
                f"{rates['requests']:,.1f} ({shares['requests']:.0%})",
                f"{rates['tokens']:,.0f} ({shares['tokens']:.0%})",
                f"{name} {share:.0%}",
                f"{o.wall:.1f}",
            ]
        )
    return markdown(head, body)


def counters_table(outcomes: list[Outcome]) -> str:
    """A Markdown table of what each run's limiter counted (statistics().counters)."""
    head = ["run", "admitted", "waited", "wait s", "429s", "pauses", "corrections"]
    head += ["tokens refunded", "tokens debt"]
    body = []
    for o in outcomes:
        c = o.counters
        if c is None:
            continue
        body.append(
            [
                o.label,
                f"{c.admitted:,}",
                f"{c.waited:,}",
                f"{c.wait_seconds:,.1f}",
                f"{c.rejections:,}",
                f"{c.pauses:,}",
                f"{c.corrections:,}",
                f"{c.refunded.get('tokens', 0.0):,.0f}",
                f"{c.debt.get('tokens', 0.0):,.0f}",
            ]
        )
    return markdown(head, body)


def markdown(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        padded = [
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "| " + " | ".join(padded) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(head), rule, *(line(row) for row in body)])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=1000, help="chat requests per run")
    parser.add_argument("--rpm", type=int, default=100, help="server: requests per period")
    parser.add_argument("--tpm", type=int, default=30_000, help="server: tokens per period")
    parser.add_argument("--period", type=float, default=1.0, help="server: period in seconds")
    parser.add_argument("--skip-naive", action="store_true", help="only the limited runs")
    args = parser.parse_args(argv)
    compressed = " (time compressed: providers count per minute)" if args.period < 60 else ""
    print(
        f"Local server: {args.rpm} requests and {args.tpm:,} tokens per {args.period:g} s"
        f"{compressed}; {args.requests:,} chat requests per run through the official openai "
        "and anthropic SDKs, default retries on.",
        flush=True,
    )
    runs = RUNS[1:] if args.skip_naive else RUNS
    outcomes = asyncio.run(
        demonstrate(count=args.requests, rpm=args.rpm, tpm=args.tpm, period=args.period, runs=runs)
    )
    print()
    print(table(outcomes))
    print(
        "\nrequests/s and tokens/s: what the server served, from the first request's arrival"
        "\nto the last's (tokens: what the requests really used, prompt + completion), and in"
        "\nbrackets as a share of what its limits allowed over that time (the full bucket it"
        "\nstarted with, and its refill). The binding limit is the one used the most."
    )
    print("\nWhat each run's limiter counted (limiter.statistics().counters):\n")
    print(counters_table(outcomes))
    print(
        "\nwaited: grants that queued first; wait s: their waits, in total; 429s, pauses and"
        "\ncorrections: what the server's answers told the limiter; refunded and debt: what"
        "\nsettling to the real usage gave back, or charged on top of the estimates."
    )


if __name__ == "__main__":
    main()
