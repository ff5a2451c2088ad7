"""A local, OpenAI-compatible chat server that enforces rate limits the way providers do.

It plays the provider in the rate-limiting demonstration: the official ``openai`` SDK talks
to it through ``AsyncOpenAI(base_url=server.base_url)``, and it answers with 200s, 429s and
the same rate-limit headers OpenAI sends. It deliberately does not use ``tokenbucket``: it
is an independent implementation of the provider's side. Standard library only.

Run it by hand (time is compressed: the limits are per ``--period`` seconds)::

    python examples/llm_server.py --rpm 600 --tpm 60000 --period 6

or from code::

    with LLMServer(rpm=600, tpm=60_000, period=6.0, latency=(0.05, 0.2), seed=0) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="local")
        ...
        print(server.stats())

Theory of operation
-------------------
Two continuously refilling token buckets, as providers describe their limits: one for
requests (capacity ``rpm``) and one for tokens (capacity ``tpm``), each refilling at
``limit / period`` per second and starting full. A bucket's level is computed lazily from
the elapsed time; nothing ticks.

A chat request is charged on arrival: 1 request, and ``prompt + max_tokens`` tokens (the
prompt estimated as ``ceil(characters / 4)``, see ``estimate_prompt_tokens``). It is admitted
only if both buckets hold enough; otherwise it gets a 429 and *nothing* is taken from either
bucket. The 429 names the limit that forces the longer wait, and ``retry-after-ms`` /
``retry-after`` say when both buckets will hold enough. A request larger than the token
bucket's capacity can never be served: it gets a 429 without a retry time, as OpenAI's
"Request too large" does.

With ``count_usage=True``, the unused part of an admitted request's ``max_tokens`` goes back
to the token bucket at once, so the token limit counts what requests really use (prompt +
completion), as providers bill it.

An admitted request is answered after a simulated latency (uniform in ``latency``, drawn
from a generator seeded with ``seed``) with a ``chat.completion`` whose completion length is
a pseudo-random number in ``[max_tokens / 2, max_tokens]`` derived from a hash of the
request, so the same request always reports the same usage. 429s are answered at once.

Every response carries ``x-ratelimit-{limit,remaining,reset}-{requests,tokens}``; the reset
headers are Go-style durations (``120ms``, ``1.5s``, ``6m0s``) until the bucket is full.

The layers: ``_Bucket`` and ``_Provider`` are pure (every time-dependent call takes ``now``;
the provider turns a request body into a reply under one lock); ``LLMServer`` is the thin
I/O layer, an ``asyncio`` server on its own event loop in a daemon thread, which reads the
clock, parses HTTP/1.1 (keep-alive) and sleeps the latency.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import TYPE_CHECKING, Final, Literal

if TYPE_CHECKING:
    from types import TracebackType

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "LLMServer",
    "ServerStats",
    "estimate_prompt_tokens",
    "format_duration",
    "main",
]

DEFAULT_MAX_TOKENS: Final = 256
"""Completion budget charged when a request sets neither ``max_tokens`` nor
``max_completion_tokens``."""

_MAX_BODY: Final = 8 * 1024 * 1024
_MAX_HEAD: Final = 64 * 1024
_BACKLOG: Final = 2048

Limit = Literal["requests", "tokens"]


# ---------------------------------------------------------------------------------------------
# Pure helpers


def estimate_prompt_tokens(messages: Iterable[Mapping[str, object]]) -> int:
    """The server's prompt-token estimate: ``ceil(characters of all message contents / 4)``.

    A message's ``content`` may be a string, a list of content parts (the ``text`` of each
    text part counts) or absent/``None``. Clients can call this to predict the server's
    charge exactly.

    >>> estimate_prompt_tokens([{"role": "user", "content": "abcd"}])
    1
    >>> estimate_prompt_tokens([{"content": "abc"}, {"content": "de"}, {"content": None}])
    2
    >>> estimate_prompt_tokens([{"content": [{"type": "text", "text": "hello"}]}])
    2
    """
    characters = 0
    for message in messages:
        content = message.get("content")
        if isinstance(content, str):
            characters += len(content)
        elif isinstance(content, list):
            for part in content:
                if isinstance(part, Mapping):
                    text = part.get("text")
                    if isinstance(text, str):
                        characters += len(text)
    return -(-characters // 4)


def format_duration(seconds: float) -> str:
    """A duration as Go's ``time.Duration`` prints it, rounded up to whole milliseconds.

    This is the format of OpenAI's ``x-ratelimit-reset-*`` headers. Rounding up means a
    bucket that is not quite full never reads ``0s``.

    >>> [format_duration(s) for s in (0, 0.0001, 0.12, 1, 1.5, 59.9991, 360, 3725.25)]
    ['0s', '1ms', '120ms', '1s', '1.5s', '1m0s', '6m0s', '1h2m5.25s']
    """
    ms = max(0, math.ceil(seconds * 1000 - 1e-6))
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    hours, rest = divmod(ms, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, frac = divmod(rest, 1000)
    secs = f"{whole}.{frac:03d}".rstrip("0") if frac else str(whole)
    if hours:
        return f"{hours}h{minutes}m{secs}s"
    if minutes:
        return f"{minutes}m{secs}s"
    return f"{secs}s"


def _completion_tokens(model: str, messages: Sequence[object], max_tokens: int) -> int:
    """A deterministic pseudo-random completion length in ``[ceil(max_tokens / 2), max_tokens]``."""
    canonical = json.dumps(
        [model, messages, max_tokens], sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )
    digest = hashlib.sha256(canonical.encode("utf-8")).digest()
    low = (max_tokens + 1) // 2
    return low + int.from_bytes(digest[:8], "big") % (max_tokens - low + 1)


class _Bucket:
    """A token bucket that starts full and refills continuously at ``capacity / period``."""

    __slots__ = ("_level", "_stamp", "capacity", "rate")

    def __init__(self, capacity: int, period: float, now: float) -> None:
        self.capacity = capacity
        self.rate = capacity / period
        self._level = float(capacity)
        self._stamp = now

    def level_at(self, now: float) -> float:
        """The level at ``now``; changes nothing."""
        elapsed = max(0.0, now - self._stamp)
        return min(float(self.capacity), self._level + elapsed * self.rate)

    def wait_for(self, amount: int, now: float) -> float:
        """Seconds from ``now`` until ``amount`` fits (0 if it fits, inf if it never will)."""
        if amount > self.capacity:
            return math.inf
        return max(0.0, (amount - self.level_at(now)) / self.rate)

    def take(self, amount: int, now: float) -> None:
        self._level = self.level_at(now) - amount
        self._stamp = max(now, self._stamp)

    def give_back(self, amount: int, now: float) -> None:
        self._level = min(float(self.capacity), self.level_at(now) + amount)
        self._stamp = max(now, self._stamp)

    def fill(self, now: float) -> None:
        self._level = float(self.capacity)
        self._stamp = max(now, self._stamp)

    def headers(self, kind: Limit, now: float) -> list[tuple[str, str]]:
        """OpenAI's ``x-ratelimit-*-{kind}`` headers for the state at ``now``."""
        level = self.level_at(now)
        return [
            (f"x-ratelimit-limit-{kind}", str(self.capacity)),
            (f"x-ratelimit-remaining-{kind}", str(max(0, math.floor(level + 1e-9)))),
            (f"x-ratelimit-reset-{kind}", format_duration((self.capacity - level) / self.rate)),
        ]


# ---------------------------------------------------------------------------------------------
# The provider: request body in, reply out; pure apart from its lock


@dataclass(frozen=True, slots=True)
class ServerStats:
    """A snapshot of what the server has seen since it started or ``reset_stats()``.

    ``tokens_charged`` is the admission charge (``prompt + max_tokens``) of accepted
    requests, ``tokens_used`` their actual ``total_tokens``. The instants are arrival times
    of chat requests (accepted or not) on the server's clock (``time.monotonic`` by default),
    ``None`` before the first one.
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
class _Reply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class _ChatRequest:
    model: str
    messages: list[Mapping[str, object]]
    max_tokens: int


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


def _json_reply(
    status: int, payload: object, headers: list[tuple[str, str]] | None = None, delay: float = 0.0
) -> _Reply:
    body = json.dumps(payload, separators=(",", ":")).encode("utf-8")
    return _Reply(status, [("content-type", "application/json"), *(headers or [])], body, delay)


def _error_reply(
    status: int,
    message: str,
    kind: str,
    *,
    code: str | None = None,
    param: str | None = None,
    headers: list[tuple[str, str]] | None = None,
) -> _Reply:
    error = {"message": message, "type": kind, "param": param, "code": code}
    return _json_reply(status, {"error": error}, headers)


def _parse_chat_request(body: bytes, default_max_tokens: int) -> _ChatRequest:
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise _BadRequest(f"We could not parse the JSON body of your request: {exc}") from None
    if not isinstance(payload, dict):
        raise _BadRequest("The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    messages = payload.get("messages")
    if (
        not isinstance(messages, list)
        or not messages
        or not all(isinstance(m, dict) for m in messages)
    ):
        raise _BadRequest("'messages' must be a non-empty array of message objects", "messages")
    if payload.get("stream"):
        raise _BadRequest("This server does not support streaming.", "stream")
    max_tokens = default_max_tokens
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise _BadRequest(f"'{name}' must be a positive integer", name)
        max_tokens = value
        break
    return _ChatRequest(model, messages, max_tokens)


class _Provider:
    """The simulated provider's state: two buckets, the statistics and the latency draw.

    Time-dependent methods take the instant ``now``; every method holds ``_lock`` while it
    reads or changes state, so the I/O thread and callers of ``stats()`` from other threads
    never see a half-made change.
    """

    def __init__(
        self,
        *,
        rpm: int,
        tpm: int,
        period: float,
        latency: tuple[float, float],
        seed: int,
        default_max_tokens: int,
        now: float,
        count_usage: bool = False,
    ) -> None:
        self.period = period
        self.count_usage = count_usage
        self.latency = latency
        self.default_max_tokens = default_max_tokens
        self._lock = threading.Lock()
        self._requests = _Bucket(rpm, period, now)
        self._tokens = _Bucket(tpm, period, now)
        self._rng = random.Random(seed)
        self._stats = ServerStats()
        self._served = 0

    def stats(self) -> ServerStats:
        with self._lock:
            return self._stats

    def reset_stats(self) -> None:
        with self._lock:
            self._stats = ServerStats()

    def refill(self, now: float) -> None:
        with self._lock:
            self._requests.fill(now)
            self._tokens.fill(now)

    def chat(self, body: bytes, now: float) -> _Reply:
        """Answer ``POST /v1/chat/completions``; the charge is taken at ``now``."""
        try:
            request = _parse_chat_request(body, self.default_max_tokens)
        except _BadRequest as exc:
            return _error_reply(400, exc.message, "invalid_request_error", param=exc.param)
        prompt = estimate_prompt_tokens(request.messages)
        charge = prompt + request.max_tokens
        with self._lock:
            stats = self._stats
            first = now if stats.first_request_at is None else stats.first_request_at
            waits: dict[Limit, float] = {
                "requests": self._requests.wait_for(1, now),
                "tokens": self._tokens.wait_for(charge, now),
            }
            if max(waits.values()) > 0:
                self._stats = replace(
                    stats,
                    requests_429=stats.requests_429 + 1,
                    first_request_at=first,
                    last_request_at=now,
                )
                return self._rejection(request, charge, waits, now)
            self._requests.take(1, now)
            self._tokens.take(charge, now)
            completion = _completion_tokens(request.model, request.messages, request.max_tokens)
            if self.count_usage:
                # The token limit counts what requests really use: the unused part of
                # max_tokens goes back at once.
                self._tokens.give_back(request.max_tokens - completion, now)
            self._stats = replace(
                stats,
                requests_ok=stats.requests_ok + 1,
                tokens_charged=stats.tokens_charged + charge,
                tokens_used=stats.tokens_used + prompt + completion,
                first_request_at=first,
                last_request_at=now,
            )
            self._served += 1
            serial = self._served
            low, high = self.latency
            delay = self._rng.uniform(low, high) if high > 0 else 0.0
            headers = self._limit_headers(now)
        digest = hashlib.sha256(f"{serial}:{request.model}:{charge}".encode()).hexdigest()
        completion_id = f"chatcmpl-{serial:06d}{digest[:18]}"
        payload = {
            "id": completion_id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": request.model,
            "choices": [
                {
                    "index": 0,
                    "message": {
                        "role": "assistant",
                        "content": f"Simulated reply #{serial}: {completion} tokens.",
                        "refusal": None,
                    },
                    "logprobs": None,
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        headers.append(("x-request-id", f"req_{digest[18:50]}"))
        return _json_reply(200, payload, headers, delay)

    def _limit_headers(self, now: float) -> list[tuple[str, str]]:
        return self._requests.headers("requests", now) + self._tokens.headers("tokens", now)

    def _rejection(
        self, request: _ChatRequest, charge: int, waits: dict[Limit, float], now: float
    ) -> _Reply:
        """The 429 for a request that does not fit; called with the lock held."""
        headers = self._limit_headers(now)
        kind: Limit = "tokens" if waits["tokens"] > waits["requests"] else "requests"
        bucket = self._tokens if kind == "tokens" else self._requests
        requested = charge if kind == "tokens" else 1
        unit = "TPM" if kind == "tokens" else "RPM"
        wait = waits[kind]
        if math.isinf(wait):
            message = (
                f"Request too large for {request.model} on tokens per {self.period:g}s ({unit}): "
                f"Limit {bucket.capacity}, Requested {requested}. "
                "The input or output tokens must be reduced in order to run successfully."
            )
        else:
            used = bucket.capacity - math.floor(bucket.level_at(now) + 1e-9)
            message = (
                f"Rate limit reached for {request.model} on {kind} per {self.period:g}s "
                f"({unit}): Limit {bucket.capacity}, Used {used}, Requested {requested}. "
                f"Please try again in {format_duration(wait)}."
            )
            headers += [
                ("retry-after", str(max(1, math.ceil(wait)))),
                ("retry-after-ms", str(max(1, math.ceil(wait * 1000)))),
            ]
        return _error_reply(429, message, kind, code="rate_limit_exceeded", headers=headers)


# ---------------------------------------------------------------------------------------------
# HTTP/1.1 over asyncio streams: the thin I/O layer


class _HTTPError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(status)
        self.status = status


@dataclass(frozen=True, slots=True)
class _HTTPRequest:
    method: str
    path: str
    body: bytes
    keep_alive: bool


async def _read_request(reader: asyncio.StreamReader) -> _HTTPRequest | None:
    """Read one request; ``None`` when the peer closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise _HTTPError(400) from None
        return None
    except asyncio.LimitOverrunError:
        raise _HTTPError(431) from None
    lines = head.decode("latin-1").strip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise _HTTPError(400)
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _HTTPError(400)
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            raise _HTTPError(400) from None
        if length < 0:
            raise _HTTPError(400)
        if length > _MAX_BODY:
            raise _HTTPError(413)
        body = await reader.readexactly(length)
    connection = headers.get("connection", "").lower()
    http10 = version == "HTTP/1.0"
    keep_alive = "keep-alive" in connection if http10 else "close" not in connection
    return _HTTPRequest(method, target.partition("?")[0], body, keep_alive)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    chunks: list[bytes] = []
    total = 0
    while True:
        try:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass  # trailers, ignored
                return b"".join(chunks)
        except (ValueError, asyncio.LimitOverrunError):
            raise _HTTPError(400) from None
        if size < 0:
            raise _HTTPError(400)
        total += size
        if total > _MAX_BODY:
            raise _HTTPError(413)
        chunks.append(await reader.readexactly(size))
        if await reader.readexactly(2) != b"\r\n":
            raise _HTTPError(400)


def _encode_response(reply: _Reply, keep_alive: bool) -> bytes:
    phrase = HTTPStatus(reply.status).phrase
    lines = [f"HTTP/1.1 {reply.status} {phrase}"]
    lines += [f"{name}: {value}" for name, value in reply.headers]
    lines.append(f"content-length: {len(reply.body)}")
    lines.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + reply.body


class LLMServer:
    """An OpenAI-compatible chat server on 127.0.0.1 that enforces request and token limits.

    ``rpm`` requests and ``tpm`` tokens per ``period`` seconds (the names follow the
    providers' "per minute"; here the period is yours to choose). ``latency`` is a
    ``(low, high)`` range in seconds, or one number, for admitted requests. ``clock`` is the
    monotonic clock the limits and statistics use; tests can pass a fake one. With
    ``count_usage``, the token limit counts prompt + completion tokens: the unused part of
    ``max_tokens`` goes back to it as soon as a request is admitted.

    Use it as a context manager (or call ``start()`` and ``close()``); the server runs on
    its own event loop in a daemon thread. ``stats()``, ``reset_stats()`` and ``refill()``
    are safe to call from any thread.
    """

    def __init__(
        self,
        *,
        rpm: int,
        tpm: int,
        period: float = 60.0,
        latency: float | tuple[float, float] = (0.05, 0.2),
        seed: int = 0,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        port: int = 0,
        clock: Callable[[], float] = time.monotonic,
        count_usage: bool = False,
    ) -> None:
        low, high = (latency, latency) if isinstance(latency, (int, float)) else latency
        if isinstance(rpm, bool) or not isinstance(rpm, int) or rpm < 1:
            raise ValueError(f"rpm must be a positive integer, got {rpm!r}")
        if isinstance(tpm, bool) or not isinstance(tpm, int) or tpm < 1:
            raise ValueError(f"tpm must be a positive integer, got {tpm!r}")
        if not (math.isfinite(period) and period > 0):
            raise ValueError(f"period must be a positive number of seconds, got {period!r}")
        if not (math.isfinite(high) and 0 <= low <= high):
            raise ValueError(f"latency must be 0 <= low <= high, got {latency!r}")
        if default_max_tokens < 1:
            raise ValueError(f"default_max_tokens must be positive, got {default_max_tokens!r}")
        self.rpm = rpm
        self.tpm = tpm
        self.period = float(period)
        self.latency = (float(low), float(high))
        self._clock = clock
        self._requested_port = port
        self._provider = _Provider(
            rpm=rpm,
            tpm=tpm,
            period=self.period,
            latency=self.latency,
            seed=seed,
            default_max_tokens=default_max_tokens,
            now=clock(),
            count_usage=count_usage,
        )
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._port: int | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> LLMServer:
        """Bind a port and start serving; returns once the server accepts connections."""
        if self._thread is not None:
            raise RuntimeError("LLMServer.start() called twice")
        self._thread = threading.Thread(target=self._run, name="LLMServer", daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._startup_error is not None:
            self._thread.join()
            raise self._startup_error
        return self

    def close(self) -> None:
        """Stop serving, drop open connections and join the server thread. Idempotent."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None or not thread.is_alive():
            return
        if loop is not None and stop is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed in the meantime
                loop.call_soon_threadsafe(stop.set)
        thread.join()

    def __enter__(self) -> LLMServer:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- public state ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._port is None:
            raise RuntimeError("the server is not running; call start() or use `with`")
        return self._port

    @property
    def url(self) -> str:
        """The server's root, e.g. ``http://127.0.0.1:8123``."""
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """The OpenAI base URL, e.g. ``http://127.0.0.1:8123/v1``."""
        return f"{self.url}/v1"

    def stats(self) -> ServerStats:
        return self._provider.stats()

    def reset_stats(self) -> None:
        self._provider.reset_stats()

    def refill(self) -> None:
        """Fill both buckets, as if the server had been idle for a whole period."""
        self._provider.refill(self._clock())

    def __repr__(self) -> str:
        where = f"{self.base_url}" if self._port is not None else "not started"
        return (
            f"<LLMServer {where} rpm={self.rpm} tpm={self.tpm} per {self.period:g}s {self.stats()}>"
        )

    # -- the server thread ----------------------------------------------------------------------

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # pragma: no cover - reported to start() or re-raised
            if not self._ready.is_set():
                self._startup_error = exc
                self._ready.set()
                return
            raise

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            server = await asyncio.start_server(
                self._serve_connection,
                "127.0.0.1",
                self._requested_port,
                backlog=_BACKLOG,
                limit=_MAX_HEAD,
            )
        except OSError as exc:
            self._startup_error = exc
            self._ready.set()
            return
        self._port = server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            await asyncio.sleep(0)  # let just-accepted connections register themselves
            while self._connections:
                pending = list(self._connections)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*pending, return_exceptions=True)
            await server.wait_closed()

    async def _serve_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                try:
                    request = await _read_request(reader)
                except _HTTPError as exc:
                    reply = _error_reply(
                        exc.status, HTTPStatus(exc.status).phrase, "invalid_request_error"
                    )
                    writer.write(_encode_response(reply, keep_alive=False))
                    await writer.drain()
                    break
                if request is None:
                    break
                reply = self._dispatch(request)
                if reply.delay > 0:
                    await asyncio.sleep(reply.delay)
                writer.write(_encode_response(reply, request.keep_alive))
                await writer.drain()
                if not request.keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    def _dispatch(self, request: _HTTPRequest) -> _Reply:
        path = request.path.rstrip("/")
        try:
            if path == "/v1/chat/completions":
                if request.method != "POST":
                    return _error_reply(405, "Use POST.", "invalid_request_error")
                return self._provider.chat(request.body, self._clock())
            if path == "/health":
                return _json_reply(200, {"status": "ok"})
            return _error_reply(404, f"Unknown path {request.path!r}.", "invalid_request_error")
        except Exception as exc:  # pragma: no cover - a bug here must not kill the connection
            return _error_reply(500, f"{type(exc).__name__}: {exc}", "server_error")


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Serve an OpenAI-compatible chat API with provider-style rate limits."
    )
    parser.add_argument("--rpm", type=int, default=600, help="requests per period")
    parser.add_argument("--tpm", type=int, default=60_000, help="tokens per period")
    parser.add_argument("--period", type=float, default=60.0, help="period in seconds")
    parser.add_argument(
        "--latency",
        type=float,
        nargs=2,
        metavar=("LOW", "HIGH"),
        default=(0.05, 0.2),
        help="simulated latency range in seconds (default 0.05 0.2)",
    )
    parser.add_argument("--seed", type=int, default=0, help="seed for the latency draw")
    parser.add_argument("--port", type=int, default=0, help="port (default: a free one)")
    args = parser.parse_args(argv)
    low, high = args.latency
    server = LLMServer(
        rpm=args.rpm,
        tpm=args.tpm,
        period=args.period,
        latency=(low, high),
        seed=args.seed,
        port=args.port,
    )
    with server:
        print(
            f"Serving {server.base_url}  ({server.rpm} requests and {server.tpm} tokens "
            f"per {server.period:g} s; Ctrl-C to stop)",
            flush=True,
        )
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        print(f"\n{server.stats()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
