"""The simulated provider: its limits, the accounting of each request, usage, statistics.

Pure: nothing here reads a clock, sleeps or does I/O. Every time-dependent method takes
the instant ``now`` (seconds on any monotonic clock), so a table of instants replays
exactly. Not thread-safe: ``LLMServer`` calls it under a lock.

Two continuously refilling token buckets, as providers describe their limits: one for
requests (capacity ``rpm``) and one for tokens (capacity ``tpm``), each refilling at
``limit / period`` per second and starting full; a level is computed lazily from the
elapsed time. A chat request is charged on arrival: 1 request, and ``prompt + max_tokens``
tokens (``estimate_prompt_tokens``). It is admitted only if both buckets hold enough;
otherwise it is refused (a 429) and *nothing* is taken from either. The refusal names the
limit that forces the longer wait, and ``retry-after(-ms)`` say when both will hold enough;
a request larger than the token bucket's capacity is refused without them, as OpenAI's
"Request too large" is.

An admitted request's completion length is a pseudo-random number in ``[max_tokens / 2,
max_tokens]`` derived from a hash of the request, so the same request always reports the
same usage. With ``count_usage=True``, the unused part of its ``max_tokens`` goes back to
the token bucket at once: the token limit counts what requests really use, as providers
bill it. Every answer carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``;
the reset values are Go-style durations (``120ms``, ``1.5s``, ``6m0s``) until full.

``Provider.messages`` accounts a request to Anthropic's Messages API the same way, on
the same buckets, and answers in Anthropic's terms: ``anthropic-ratelimit-{requests,
tokens}-{limit,remaining,reset}`` headers, whose reset is the RFC 3339 time at which the
bucket is full again (``format_rfc3339``), and on a refusal ``retry-after`` in whole
seconds only. That time needs the wall clock, which this module never reads: the caller
passes ``wall``, the Unix time at the instant ``now``.

Anthropic also limits input and output tokens apart: with ``itpm`` and ``otpm``, two more
buckets take a request's prompt and its ``max_tokens`` (``count_usage`` gives the unused
output back to both output-counting buckets), and Anthropic's answers add
``anthropic-ratelimit-{input,output}-tokens-*``. OpenAI's headers never show them.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from typing import Final, Literal

DEFAULT_MAX_TOKENS: Final = 256
"""Completion budget charged when a request sets neither ``max_tokens`` nor
``max_completion_tokens``."""

Limit = Literal["requests", "tokens", "input_tokens", "output_tokens"]
_ACRONYMS: Final[dict[Limit, str]] = {
    "requests": "RPM",
    "tokens": "TPM",
    "input_tokens": "ITPM",
    "output_tokens": "OTPM",
}
Headers = list[tuple[str, str]]


def estimate_prompt_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """The provider's prompt-token estimate: ``ceil(characters of all message contents / 4)``.

    A message's ``content`` may be a string, a list of content parts (the ``text`` of each
    text part counts) or absent/``None``. Clients can call this to predict the provider's
    charge exactly.
    """
    characters = 0
    for message in messages:
        content = message.get("content")
        parts = content if isinstance(content, list) else [{"text": content}]
        for part in parts:
            text = part.get("text") if isinstance(part, Mapping) else None
            if isinstance(text, str):
                characters += len(text)
    return -(-characters // 4)


def format_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration`` prints it, rounded up to whole milliseconds.

    This is the format of OpenAI's ``x-ratelimit-reset-*`` headers. Rounding up means a
    bucket that is not quite full never reads ``0s``: ``0.12`` is ``120ms``, ``3725.25`` is
    ``1h2m5.25s``.
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms < 1000:
        return f"{ms}ms" if ms else "0s"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    return f"{minutes}m{secs}s" if minutes else f"{secs}s"


def format_rfc3339(unix: float) -> str:
    """A Unix time as an RFC 3339 UTC date-time, rounded up to whole milliseconds.

    The format of Anthropic's ``anthropic-ratelimit-*-reset`` headers: ``2023-11-14T22:13:20Z``,
    with a fraction only when the time is not a whole second (``...:26.6Z``). Rounding up
    means the bucket is full by then, never just after.
    """
    ms = math.ceil(unix * 1000 - 1e-3)  # within a microsecond: a Unix time's float error
    whole, frac = divmod(ms, 1000)
    text = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{text}.{frac:03d}".rstrip("0") + "Z" if frac else f"{text}Z"


@dataclass(frozen=True, slots=True)
class ChatRequest:
    """A chat request as the provider accounts it."""

    model: str
    messages: Sequence[Mapping[str, object]]
    max_tokens: int = DEFAULT_MAX_TOKENS

    def completion_tokens(self) -> int:
        """A deterministic pseudo-random length in ``[ceil(max_tokens / 2), max_tokens]``."""
        canonical = json.dumps(
            [self.model, self.messages, self.max_tokens],
            sort_keys=True,
            ensure_ascii=False,
            separators=(",", ":"),
        )
        digest = hashlib.sha256(canonical.encode("utf-8")).digest()
        low = (self.max_tokens + 1) // 2
        return low + int.from_bytes(digest[:8], "big") % (self.max_tokens - low + 1)


@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of what the provider has seen since it started or ``reset_stats()``.

    ``tokens_charged`` is the admission charge (``prompt + max_tokens``) of accepted
    requests, ``tokens_used`` their actual ``total_tokens``. The instants are arrival times
    of chat requests (accepted or not), ``None`` before the first one.
    """

    requests_ok: int = 0
    requests_429: int = 0
    tokens_charged: int = 0
    tokens_used: int = 0
    first_request_at: float | None = None
    last_request_at: float | None = None

    @property
    def duration(self) -> float:
        """Seconds between the first and the last request (0 with fewer than two)."""
        if self.first_request_at is None or self.last_request_at is None:
            return 0.0
        return self.last_request_at - self.first_request_at


@dataclass(frozen=True, slots=True)
class Admitted:
    """A request the limits let through, and its usage."""

    serial: int  # 1 for the provider's first admitted request, then 2, ...
    prompt_tokens: int
    completion_tokens: int
    headers: Headers  # x-ratelimit-*, after the charge


@dataclass(frozen=True, slots=True)
class Refused:
    """A request refused with a 429; it took nothing from either limit."""

    limit: Limit  # the one that forces the longer wait
    retry_after: float  # seconds until both limits hold enough; inf if it never fits
    message: str
    headers: Headers  # x-ratelimit-*, and retry-after(-ms) unless it never fits


class Bucket:
    """A token bucket that starts full and refills continuously at ``capacity / period``."""

    __slots__ = ("_level", "_stamp", "capacity", "rate")

    def __init__(self, capacity: int, period: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self._level = float(capacity)
        self._stamp = now

    def level_at(self, now: float) -> float:
        """The level at ``now`` (never earlier than the last change); changes nothing."""
        elapsed = max(0.0, now - self._stamp)
        return min(float(self.capacity), self._level + elapsed * self.rate)

    def remaining(self, now: float) -> int:
        return max(0, math.floor(self.level_at(now) + 1e-9))

    def wait_for(self, amount: int, now: float) -> float:
        """Seconds from ``now`` until ``amount`` fits (0 if it fits, inf if it never will)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level_at(now)) / self.rate)

    def add(self, amount: float, now: float) -> None:
        """Change the level by ``amount`` at ``now`` (negative to take), up to the capacity."""
        self._level = min(float(self.capacity), self.level_at(now) + amount)
        self._stamp = max(now, self._stamp)


class Provider:
    """``rpm`` requests and ``tpm`` tokens per ``period`` seconds, both full at ``now``.

    (The names follow the providers' "per minute"; the period is yours to choose.)
    """

    def __init__(
        self,
        *,
        rpm: int,
        tpm: int,
        period: float,
        now: float,
        count_usage: bool = False,
        itpm: int | None = None,
        otpm: int | None = None,
    ) -> None:
        limits = {"rpm": rpm, "tpm": tpm, "itpm": itpm, "otpm": otpm}
        for name, value in limits.items():
            if value is None and name in ("itpm", "otpm"):
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        self.period = float(period)
        self.count_usage = count_usage
        self.buckets: dict[Limit, Bucket] = {
            "requests": Bucket(rpm, self.period, now),
            "tokens": Bucket(tpm, self.period, now),
        }
        if itpm is not None:
            self.buckets["input_tokens"] = Bucket(itpm, self.period, now)
        if otpm is not None:
            self.buckets["output_tokens"] = Bucket(otpm, self.period, now)
        self.stats = ServerStats()
        self._served = 0

    def reset_stats(self) -> None:
        self.stats = ServerStats()

    def refill(self, now: float) -> None:
        """Fill every bucket, as if the provider had been idle for a whole period."""
        for bucket in self.buckets.values():
            bucket.add(bucket.capacity, now)

    def headers(self, now: float) -> Headers:
        """OpenAI's ``x-ratelimit-*`` headers for the state at ``now``."""
        return [
            (f"x-ratelimit-{name}-{kind}", value)
            for kind, b in self.buckets.items()
            if kind in ("requests", "tokens")
            for name, value in (
                ("limit", str(b.capacity)),
                ("remaining", str(b.remaining(now))),
                ("reset", format_duration(b.wait_for(b.capacity, now))),
            )
        ]

    def anthropic_headers(self, now: float, wall: float) -> Headers:
        """Anthropic's ``anthropic-ratelimit-*`` headers for the state at ``now``, whose
        Unix time is ``wall``: each reset is the RFC 3339 time the bucket is full again."""
        return [
            (f"anthropic-ratelimit-{kind.replace('_', '-')}-{name}", value)
            for kind, b in self.buckets.items()
            for name, value in (
                ("limit", str(b.capacity)),
                ("remaining", str(b.remaining(now))),
                ("reset", format_rfc3339(wall + b.wait_for(b.capacity, now))),
            )
        ]

    def chat(self, request: ChatRequest, now: float) -> Admitted | Refused:
        """Account ``request`` arriving at ``now``: charge and admit it, or refuse it."""
        outcome = self._account(request, now)
        if isinstance(outcome, Admitted):
            return replace(outcome, headers=self.headers(now))
        return self._refusal(request.model, *outcome, now)

    def messages(self, request: ChatRequest, now: float, wall: float) -> Admitted | Refused:
        """Account a request to Anthropic's Messages API as ``chat`` does, answering with
        Anthropic's headers (``wall`` is the Unix time at ``now``) and wording."""
        outcome = self._account(request, now)
        headers = self.anthropic_headers(now, wall)
        if isinstance(outcome, Admitted):
            return replace(outcome, headers=headers)
        limit, requested, wait = outcome
        bucket = self.buckets[limit]
        rate = f"{bucket.capacity} {limit.replace('_', ' ')} per {self.period:g}s"
        if math.isinf(wait):
            message = (
                f"This request would exceed the rate limit for {request.model} of {rate}: "
                f"it requests {requested}, more than the limit, and can never be admitted. "
                "Please reduce the prompt length or the maximum tokens requested."
            )
        else:
            message = (
                f"This request would exceed the rate limit for {request.model} of {rate}. "
                "You can see the response headers for current usage. "
                f"Please try again in {format_duration(wait)}."
            )
            headers.append(("retry-after", str(max(1, math.ceil(wait)))))
        return Refused(limit, wait, message, headers)

    def _account(self, request: ChatRequest, now: float) -> Admitted | tuple[Limit, int, float]:
        """Charge and admit ``request`` (an ``Admitted`` without headers), or refuse it:
        ``(limit, requested, wait)`` of the limit that forces the longer wait."""
        prompt = estimate_prompt_tokens(request.messages)
        amounts: dict[Limit, int] = {"requests": 1, "tokens": prompt + request.max_tokens}
        if "input_tokens" in self.buckets:
            amounts["input_tokens"] = prompt
        if "output_tokens" in self.buckets:
            amounts["output_tokens"] = request.max_tokens
        waits = {kind: self.buckets[kind].wait_for(n, now) for kind, n in amounts.items()}
        first = now if self.stats.first_request_at is None else self.stats.first_request_at
        stats = replace(self.stats, first_request_at=first, last_request_at=now)
        limit = max(waits, key=waits.__getitem__)  # on a tie, "requests"
        if waits[limit] > 0:
            self.stats = replace(stats, requests_429=stats.requests_429 + 1)
            return limit, amounts[limit], waits[limit]
        for kind, amount in amounts.items():
            self.buckets[kind].add(-amount, now)
        completion = request.completion_tokens()
        if self.count_usage:
            for kind in ("tokens", "output_tokens"):
                if kind in self.buckets:
                    self.buckets[kind].add(request.max_tokens - completion, now)
        self.stats = replace(
            stats,
            requests_ok=stats.requests_ok + 1,
            tokens_charged=stats.tokens_charged + amounts["tokens"],
            tokens_used=stats.tokens_used + prompt + completion,
        )
        self._served += 1
        return Admitted(self._served, prompt, completion, [])

    def _refusal(
        self, model: str, limit: Limit, requested: int, wait: float, now: float
    ) -> Refused:
        bucket = self.buckets[limit]
        where = f"{model} on {limit} per {self.period:g}s ({_ACRONYMS[limit]})"
        headers = self.headers(now)
        if math.isinf(wait):
            message = (
                f"Request too large for {where}: Limit {bucket.capacity}, Requested {requested}. "
                "The input or output tokens must be reduced in order to run successfully."
            )
        else:
            used = bucket.capacity - bucket.remaining(now)
            message = (
                f"Rate limit reached for {where}: Limit {bucket.capacity}, Used {used}, "
                f"Requested {requested}. Please try again in {format_duration(wait)}."
            )
            headers += [
                ("retry-after", str(max(1, math.ceil(wait)))),
                ("retry-after-ms", str(max(1, math.ceil(wait * 1000)))),
            ]
        return Refused(limit, wait, message, headers)
