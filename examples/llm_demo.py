"""Thousands of chat requests against a rate-limited server: naive, then through tokenbucket.

Starts a local, OpenAI-compatible server (the ``fake_provider`` package next to this file)
that enforces requests and tokens per period the way providers do (429 with
``Retry-After`` and ``x-ratelimit-*`` headers), then sends the same chat requests to it
through the official ``openai`` SDK twice:

1. naively: ``asyncio.gather`` over every request, relying on the SDK's retries;
2. through a :class:`tokenbucket.BucketGroup`: one ``acquire`` per request covering
   requests, tokens and a cap on calls in flight, settled with the real usage and fed
   the server's rate-limit headers.

Time is compressed: the limits are per second instead of per minute, so it runs in
well under a minute. Run it with ``python examples/llm_demo.py`` (``--help`` for sizes).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import openai

import tokenbucket as tb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fake_provider import LLMServer, ServerStats, estimate_prompt_tokens

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from openai.types.chat import ChatCompletionMessageParam

MODEL = "gpt-demo"


@dataclass(frozen=True)
class ChatRequest:
    messages: list[ChatCompletionMessageParam]
    max_tokens: int

    @property
    def estimate(self) -> int:
        """What the server charges on arrival: prompt + max_tokens."""
        return estimate_prompt_tokens(self.messages) + self.max_tokens


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

    @property
    def retries(self) -> int:
        # Every 429 the server sent was either retried by the SDK or ended in a failure.
        return self.stats.requests_429 - self.failed

    def rates(self) -> tuple[float, float]:
        """Requests and tokens (prompt + completion) per second the server served, from
        the first request's arrival to the last's."""
        duration = max(self.stats.duration, 1e-9)
        return self.stats.requests_ok / duration, self.stats.tokens_used / duration


def make_requests(count: int, seed: int = 7) -> list[ChatRequest]:
    """``count`` chat requests with seeded, varied prompt lengths and ``max_tokens``."""
    rng = random.Random(seed)
    words = [
        "rate",
        "limits",
        "tokens",
        "requests",
        "fair",
        "exact",
        "queue",
        "await",
        "server",
        "bucket",
        "window",
    ]
    requests = []
    for _ in range(count):
        text = " ".join(rng.choice(words) for _ in range(rng.randint(15, 250)))
        messages: list[ChatCompletionMessageParam] = [{"role": "user", "content": text}]
        requests.append(ChatRequest(messages, max_tokens=rng.randint(50, 300)))
    return requests


class Progress:
    """A one-line progress bar on stderr."""

    def __init__(self, label: str, total: int) -> None:
        self.label = label
        self.total = total
        self.done = 0
        self.errors = 0
        self._shown = -1.0

    def step(self, *, error: bool = False) -> None:
        self.done += 1
        self.errors += error
        now = time.monotonic()
        if now - self._shown >= 0.1 or self.done == self.total:
            self._shown = now
            width = 30
            filled = width * self.done // self.total
            bar = "#" * filled + "." * (width - filled)
            end = "\n" if self.done == self.total else ""
            print(
                f"\r  {self.label:<12} [{bar}] {self.done:>5}/{self.total}  errors {self.errors}",
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
        except openai.APIError:
            progress.step(error=True)
            return False
        progress.step()
        return True

    results = await asyncio.gather(*(one(r) for r in requests))
    return sum(results), len(results) - sum(results)


async def run_naive(client: openai.AsyncOpenAI, requests: list[ChatRequest]) -> tuple[int, int]:
    """Everything at once; the SDK retries 429s (honouring Retry-After) up to its limit."""

    async def send(request: ChatRequest) -> object:
        return await client.chat.completions.create(
            model=MODEL, messages=request.messages, max_tokens=request.max_tokens
        )

    return await run_all("naive", requests, send)


async def run_limited(
    client: openai.AsyncOpenAI, requests: list[ChatRequest], limits: tb.BucketGroup
) -> tuple[int, int]:
    """The same requests, each in one ``acquire`` of the model's limits."""

    async def send(request: ChatRequest) -> None:
        try:
            async with limits.acquire(MODEL, tokens=request.estimate) as lease:
                raw = await client.chat.completions.with_raw_response.create(
                    model=MODEL, messages=request.messages, max_tokens=request.max_tokens
                )
                lease.feedback(raw.headers)  # the server's view of what is left
                completion = raw.parse()
                if completion.usage is not None:
                    lease.settle(tokens=completion.usage.total_tokens)
        except openai.RateLimitError as exc:
            limits[MODEL].feedback(exc.response.headers, status=429)
            raise

    return await run_all("tokenbucket", requests, send)


def limits_for(rpm: int, tpm: int, period: float, margin: float) -> tb.BucketGroup:
    """The server's limits over the server's period, a margin below them for the
    jitter between a grant and the request's arrival at the server (a limit's worth
    admitted at one window's edge can arrive closer together than a period), per model.
    (With a real provider: ``requests_per_minute=...``.)"""
    limiter = tb.Limiter(
        {
            "requests": tb.Rate(rpm * margin, period),
            "tokens": tb.Rate(tpm * margin, period),
        },
        max_concurrency=64,
    )
    return tb.BucketGroup({MODEL: limiter})


async def demonstrate(
    *, count: int, rpm: int, tpm: int, period: float, naive: bool = True, margin: float = 0.97
) -> list[Outcome]:
    requests = make_requests(count)
    outcomes = []
    with LLMServer(
        rpm=rpm, tpm=tpm, period=period, latency=(0.05, 0.25), seed=1, count_usage=True
    ) as server:
        phases: list[str] = ["naive", "tokenbucket"] if naive else ["tokenbucket"]
        for label in phases:
            server.refill()
            server.reset_stats()
            client = openai.AsyncOpenAI(base_url=server.base_url, api_key="local", max_retries=2)
            start = time.monotonic()
            try:
                if label == "naive":
                    ok, failed = await run_naive(client, requests)
                else:
                    group = limits_for(rpm, tpm, period, margin)
                    ok, failed = await run_limited(client, requests, group)
            finally:
                await client.close()
            wall = time.monotonic() - start
            outcomes.append(
                Outcome(label, count, ok, failed, server.stats(), wall, rpm, tpm, period)
            )
    return outcomes


def table(outcomes: list[Outcome]) -> str:
    """A Markdown table of the runs."""
    head = ["run", "sent", "succeeded", "failed", "429s", "retries"]
    head += ["requests/s (of limit)", "tokens/s (of limit)", "wall s"]
    body = []
    for o in outcomes:
        requests, tokens = o.rates()
        req_limit, tok_limit = o.rpm / o.period, o.tpm / o.period
        body.append(
            [
                o.label,
                f"{o.sent:,}",
                f"{o.succeeded:,}",
                f"{o.failed:,}",
                f"{o.stats.requests_429:,}",
                f"{o.retries:,}",
                f"{requests:.1f} ({requests / req_limit:.0%} of {req_limit:g})",
                f"{tokens:,.0f} ({tokens / tok_limit:.0%} of {tok_limit:,.0f})",
                f"{o.wall:.1f}",
            ]
        )
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
    parser.add_argument("--requests", type=int, default=1500, help="chat requests per run")
    parser.add_argument("--rpm", type=int, default=100, help="server: requests per period")
    parser.add_argument("--tpm", type=int, default=30_000, help="server: tokens per period")
    parser.add_argument("--period", type=float, default=1.0, help="server: period in seconds")
    parser.add_argument("--skip-naive", action="store_true", help="only the limited run")
    args = parser.parse_args(argv)
    print(
        f"Local server: {args.rpm} requests and {args.tpm:,} tokens per {args.period:g} s "
        f"(time compressed: per second instead of per minute); {args.requests:,} chat "
        "requests through the official openai SDK.",
        flush=True,
    )
    outcomes = asyncio.run(
        demonstrate(
            count=args.requests,
            rpm=args.rpm,
            tpm=args.tpm,
            period=args.period,
            naive=not args.skip_naive,
        )
    )
    print()
    print(table(outcomes))
    print(
        "\nRates are what the server served, from the first request's arrival to the last's;"
        "\ntokens are what the requests really used (prompt + completion)."
    )


if __name__ == "__main__":
    main()
