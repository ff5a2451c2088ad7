"""AsyncLimitedTransport: an httpx-style transport that limits every model call through it.

Theory of operation
-------------------
The official LLM SDKs send every call, retry and stream through an ``httpx2`` (or
``httpx``) client, and a client sends every request through its transport. This one
wraps the real transport. For each request it decides whether it is a model call (see
:func:`model_call`), prices it from the request alone, acquires the lease from the
limiter of its model, and sends it. The response's headers and status go to the limiter
at once (for a 429 without ``Retry-After``, after reading its small JSON body for
Gemini's ``RetryInfo``); the response's body stream is wrapped so that the usage it
carries (a JSON body's ``usage``, or the usage in a server-sent event stream) settles the
lease, and so that the lease (and its concurrency slot) ends when the body is read to the
end or closed, once. A body read already settles and ends the lease at once.

Neither ``httpx`` nor ``httpx2`` is imported when tokenbucket is: the library is that of
the requests the transport sees (``type(request).__module__``), and classes that must
derive from the library's own (the body stream) are made for it on first use.
"""

from __future__ import annotations

import functools
import importlib
import itertools
import json
import re
import sys
import threading
import zlib
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Final, cast, overload

from ._decorate import estimate_tokens
from ._errors import ArgumentTypeError, TokenBucketError
from ._group import BucketGroup
from ._headers import OPENAI_FIELDS, Fields, ServerFeedback, read_openai
from ._headers._families import NAMES
from ._lease import BlockingLeaseContext
from ._limiter import Limiter
from ._report import report, warn
from ._usage import item, read_usage

if TYPE_CHECKING:
    from types import TracebackType

    import httpx
    import httpx2
    from typing_extensions import Self

    from ._lease import LeaseContext

    class _Transports(httpx.AsyncBaseTransport, httpx2.AsyncBaseTransport):  # type: ignore[misc]
        """For type checkers: usable wherever either library wants a transport."""

    class _SyncTransports(httpx.BaseTransport, httpx2.BaseTransport):  # type: ignore[misc]
        """For type checkers: usable wherever either library wants a sync transport."""

else:
    _Transports = object
    _SyncTransports = object

__all__ = ["AsyncLimitedTransport", "LimitedTransport"]

DEFAULT_MAX_TOKENS: Final = 1024
_MAKING: Final = threading.Lock()  # held to make an inner transport
_MAX_BODY: Final = 4 * 1024 * 1024  # the most of a JSON response kept to read its usage
_MAX_LINE: Final = 1024 * 1024  # the longest server-sent event line read for usage
# What json.loads raises for what is not JSON, or is nested too deep to read.
_UNREADABLE: Final = (ValueError, UnicodeDecodeError, RecursionError)

_OPENAI_PATHS: Final = ("/chat/completions", "/completions", "/responses", "/messages")
_EMBEDDINGS: Final = "/embeddings"
_GEMINI: Final = re.compile(
    r"/models/(?P<model>[^/:]+):(?P<method>generateContent|streamGenerateContent"
    r"|embedContent|batchEmbedContents)$"
)

Cost = Callable[[Mapping[str, Any]], Mapping[str, float]]
TokenCounter = Callable[[object], float]
_ESTIMATE: Final[TokenCounter] = estimate_tokens


def model_call(method: str, path: str) -> tuple[bool, str | None, bool]:
    """Whether a request is a model call: ``(limited, model in the path, embedding)``.

    A model call is a ``POST`` to a path ending in ``/chat/completions``,
    ``/completions``, ``/responses``, ``/messages`` or ``/embeddings`` (OpenAI,
    Anthropic and the many servers that copy their APIs), or to a Gemini
    ``/models/{model}:generateContent`` (also ``streamGenerateContent``, ``embedContent``,
    ``batchEmbedContents``). Everything else (listing models, files, batches, token
    counting, ...) passes through unlimited.
    """
    if method != "POST":
        return False, None, False
    if path.endswith(_OPENAI_PATHS):  # the usual call, at once
        return True, None, False
    path = path.rstrip("/")
    match = _GEMINI.search(path) if ":" in path else None
    if match is not None:
        return True, match["model"], match["method"] in ("embedContent", "batchEmbedContents")
    if path.endswith(_EMBEDDINGS):
        return True, None, True
    return path.endswith(_OPENAI_PATHS), None, False


class _Limits:
    """What both transports share: the limits, the options, and the cost of a call."""

    _WHAT = "an async transport"

    def __init__(
        self,
        limits: Limiter | BucketGroup,
        transport: Any = None,
        *,
        cost: Cost | None = None,
        token_counter: TokenCounter = estimate_tokens,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        default_model: str = "default",
        timeout: float | None = None,
    ) -> None:
        if not isinstance(limits, (Limiter, BucketGroup)):
            raise ArgumentTypeError(
                "limits", f"limits must be a Limiter or a BucketGroup, not {type(limits).__name__}"
            )
        method = "handle_async_request" if self._WHAT == "an async transport" else "handle_request"
        if transport is not None and not hasattr(transport, method):
            raise ArgumentTypeError(
                "transport", f"transport must be {self._WHAT}, not {type(transport)}"
            )
        if isinstance(default_max_tokens, bool) or not isinstance(default_max_tokens, int):
            raise ArgumentTypeError("default_max_tokens", "default_max_tokens must be an int")
        self._limits = limits
        self._inner: Any = transport
        self._cost = cost
        self._counter = token_counter
        self._max_tokens = default_max_tokens
        self._default_model = default_model
        self._timeout = timeout

    @property
    def limits(self) -> Limiter | BucketGroup:
        """The limiter or group the transport acquires from."""
        return self._limits

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self._limits!r} over {self._inner!r}>"

    def _inner_for(self, request: Any, name: str) -> Any:
        """The inner transport; made (the library's ``name``) for the first request, once
        even when several threads send their first requests at once."""
        inner = self._inner
        if inner is None:
            with _MAKING:
                inner = self._inner
                if inner is None:
                    module = type(request).__module__.partition(".")[0]
                    inner = self._inner = getattr(importlib.import_module(module), name)()
        return inner

    def _priced(self, request: Any) -> tuple[Limiter, dict[str, float]] | None:
        """The limiter of a model call and its amounts; ``None`` for other requests."""
        limited, path_model, embedding = model_call(request.method, request.url.path)
        if not limited:
            return None
        body = _json_body(request)
        limiter = self._pick(body, path_model)
        return limiter, self._amounts(body, limiter, embedding)

    def _answered(
        self, limiter: Limiter, context: LeaseContext, response: Any, body: bytes | None
    ) -> tuple[_Settlement, bool]:
        """Tell the limiter what the response's headers and status say, and start its
        settlement: ``(settlement, read)``, ``read`` when its body was read already (by
        the inner transport, or ``body``: a 429's, as sent, read by the transport for its
        delay), which then has fed it."""
        status = response.status_code
        read: tuple[Fields | ServerFeedback, str, str] | None = _openai_read(response.headers)
        if read is None:  # (else the usual report, read in one step)
            read = _fields_read(response.headers)
        fields, kind, encoding = read
        retry_after = None
        content: bytes | None
        if body is not None:
            # The settlement reads it decoded, once; one that cannot be decoded (broken,
            # too large, in an encoding not read here) reads as a body without usage.
            content, encoding = _decoded(body, encoding) or b"", ""
            if content:
                retry_after = retry_info_delay(content)
        else:
            content = _content(response)
            if content is not None:
                encoding = ""  # (read by the client's library, so decoded)
                if status == 429 and _retry_info_wanted(response.headers):
                    retry_after = retry_info_delay(content)
        report(
            limiter,
            fields,
            status,
            "a response",
            stacklevel=3,
            retry_after=retry_after,
            lease=context,
        )
        settle = _Settlement(limiter, context, status, kind, encoding)
        if content is not None:
            settle.feed(content)
        return settle, content is not None

    def _pick(self, body: Mapping[str, Any] | None, path_model: str | None) -> Limiter:
        limits = self._limits
        if isinstance(limits, Limiter):
            return limits
        model = path_model or (body or {}).get("model")
        return limits[model if isinstance(model, str) and model else self._default_model]

    def _amounts(
        self, body: Mapping[str, Any] | None, limiter: Limiter, embedding: bool
    ) -> dict[str, float]:
        dims = limiter.dimensions
        if body is None:
            return {}
        if self._cost is not None:
            return {k: v for k, v in dict(self._cost(body)).items() if k in dims}
        count = self._counter
        get = body.get
        prompt = 0.0
        if count is _ESTIMATE:  # which counts an absent part (None) as 0: the parts given
            for key in _PROMPT_SET.intersection(body):
                prompt += count(get(key))
            for key in _GEMINI_SET.intersection(body):
                prompt += count(_gemini_parts(get(key)))
        else:
            for key in _PROMPT_KEYS:
                prompt += float(count(get(key)))
            for key in _GEMINI_KEYS:
                prompt += float(count(_gemini_parts(get(key))))
        output = 0.0 if embedding else _max_output(body, self._max_tokens)
        amounts = {}
        if "tokens" in dims:
            amounts["tokens"] = prompt + output
        if "input_tokens" in dims:
            amounts["input_tokens"] = prompt
        if "output_tokens" in dims:
            amounts["output_tokens"] = output
        return amounts


class AsyncLimitedTransport(_Limits, _Transports):
    """An async ``httpx2``/``httpx`` transport that limits, settles and paces model calls.

    ::

        limits = tb.BucketGroup.from_toml("limits.toml")  # or one tb.Limiter
        client = openai.AsyncOpenAI(
            http_client=httpx2.AsyncClient(transport=tb.AsyncLimitedTransport(limits))
        )

    Every model call (see below) acquires its cost before it is sent and holds the lease,
    concurrency slot included, until its response body is read to the end or closed (a
    stream until the caller closes or finishes it). The usage the response reports
    settles the lease; every response's rate-limit headers and status go to the limiter
    (a 429 pauses it), so the SDK's own retries wait their turn. Keep the SDK's retries.

    Args:
        limits: a :class:`Limiter`, or a :class:`BucketGroup` whose limiter is picked by
            the model: the JSON body's ``model``, or the one in a Gemini URL
            (``/v1beta/models/gemini-2.5-flash:generateContent``). A call that names no
            model goes to ``default_model``. A model the group does not know (and no
            default covers) raises :class:`UnknownNameError` from the send.
        transport: the transport that really sends: ``None`` makes the default one
            (``AsyncHTTPTransport()``) of the library of the first request, ``httpx2``
            or ``httpx``; pass your own to configure it (HTTP/2, proxies, retries).
        cost: the amounts of a model call, from its parsed JSON body, replacing the
            estimate below. Dimensions the limiter does not have are left out.
        token_counter: counts the tokens of one part of a prompt (a string, a message,
            a list of them); default :func:`estimate_tokens`.
        default_max_tokens: the output assumed for a call that sets no
            ``max_tokens``-like field.
        default_model: the name used with a group for calls that name no model.
        timeout: seconds to wait for the limiter at most, then
            :class:`AcquireTimeoutError` from the send.

    The cost of a model call: one request, and ``tokens`` = the estimate of its input
    (``messages``, ``system``, ``input``, ``instructions``, ``prompt``, Gemini's
    ``contents`` and ``systemInstruction``) plus the most it may generate
    (``max_tokens``, ``max_completion_tokens``, ``max_output_tokens``,
    ``generationConfig.maxOutputTokens``, else ``default_max_tokens``; 0 for
    embeddings), also given apart as ``input_tokens`` and ``output_tokens`` for limiters
    that have those dimensions. A model call whose body is not a JSON object costs one
    request and no tokens.

    Settlement: from the ``usage`` of a JSON body (OpenAI, Anthropic) or its
    ``usageMetadata`` (Gemini); in a ``text/event-stream``, from the usage events as they
    pass (OpenAI's last chunk with ``stream_options={"include_usage": True}``, the
    Responses API's ``response.completed``, Anthropic's ``message_start`` and
    ``message_delta``, Gemini's ``usageMetadata``), without buffering the stream. A
    body in gzip or deflate is decoded for it (one in another encoding reads as one
    without usage). A response that reports no usage keeps the estimate; an error
    response (4xx, 5xx) without usage gives its tokens back and keeps the request. A
    response whose body the inner transport has read already (``httpx2.MockTransport``,
    caching transports) is settled, and its lease ended, before it is returned.

    A 429 pauses the limiter for its ``Retry-After`` (or ``retry-after-ms``). Without
    either header, a JSON 429 body (of no more than 4 MiB) is read at once, before the
    response is returned, and a ``google.rpc.RetryInfo`` in its ``error.details``
    (Gemini's ``"retryDelay": "7s"``) gives the pause: read eagerly, because an SDK about
    to retry may close the error response unread. The response still comes back unread
    (unless the inner transport read it), its body as sent (raw bytes, timing). Without
    a delay anywhere (or in a body in an encoding other than gzip or deflate), a 429
    pauses the limiter for one second.
    """

    def __init__(
        self,
        limits: Limiter | BucketGroup,
        transport: httpx2.AsyncBaseTransport | httpx.AsyncBaseTransport | None = None,
        *,
        cost: Cost | None = None,
        token_counter: TokenCounter = estimate_tokens,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        default_model: str = "default",
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            limits,
            transport,
            cost=cost,
            token_counter=token_counter,
            default_max_tokens=default_max_tokens,
            default_model=default_model,
            timeout=timeout,
        )

    @overload
    async def handle_async_request(self, request: httpx2.Request) -> httpx2.Response: ...

    @overload
    async def handle_async_request(self, request: httpx.Request) -> httpx.Response: ...

    async def handle_async_request(self, request: Any) -> Any:
        """Send ``request``: acquire first if it is a model call, then pass it on.

        Waits (in FIFO order) for the limiter; cancelled or timed out there, nothing is
        taken and nothing is sent. If sending fails or is cancelled, the lease ends at
        once. Otherwise the response comes back with its body wrapped: the lease ends when
        the body is read to the end or closed.
        """
        inner = self._inner_for(request, "AsyncHTTPTransport")
        priced = self._priced(request)
        if priced is None:
            return await inner.handle_async_request(request)
        limiter, amounts = priced
        context = limiter.acquire(timeout=self._timeout, **amounts)
        await context.__aenter__()
        try:
            response = await inner.handle_async_request(request)
        except BaseException as exc:
            await context.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        try:
            body = None
            if response.status_code == 429 and _retry_info_wanted(response.headers):
                try:  # an error body is small: read it now, the SDK may close it unread
                    body = await _drained(response)
                except BaseException:
                    _unread_429(limiter, context, response)
                    raise
            settle, read = self._answered(limiter, context, response, body)
        except BaseException as exc:  # (the body's read failed, or was cancelled)
            await context.__aexit__(type(exc), exc, exc.__traceback__)
            raise
        if read:
            await settle.end()
            return response
        stream_type = _stream_type(type(response.stream).__mro__)
        response.stream = stream_type(response.stream, settle)
        return response

    async def aclose(self) -> None:
        """Close the inner transport."""
        if self._inner is not None:
            await self._inner.aclose()

    async def __aenter__(self) -> Self:
        if self._inner is not None:
            await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._inner is not None:
            await self._inner.__aexit__(exc_type, exc_value, traceback)


class LimitedTransport(_Limits, _SyncTransports):
    """The sync twin of :class:`AsyncLimitedTransport`, for ``httpx2.Client`` and
    ``httpx.Client``: the same cost, settlement, header feedback and 429 pauses, for the
    sync SDK clients, from any number of threads at once.

    ::

        limits = tb.BucketGroup.from_toml("limits.toml")  # or one tb.Limiter
        client = openai.OpenAI(
            http_client=httpx2.Client(transport=tb.LimitedTransport(limits))
        )

    Each model call blocks its thread until the limiter grants it (see
    :meth:`Limiter.acquire_blocking`: one FIFO order across every thread, and every event
    loop, using the limiter), and holds the lease until its response body is read to the
    end or closed. The limiter becomes *shared* on first use: threads and asyncio loops in
    other threads may use it at once. Arguments as :class:`AsyncLimitedTransport`'s, with
    a sync ``transport`` (default: the library's own ``HTTPTransport()``).
    """

    _WHAT = "a sync transport"

    def __init__(
        self,
        limits: Limiter | BucketGroup,
        transport: httpx2.BaseTransport | httpx.BaseTransport | None = None,
        *,
        cost: Cost | None = None,
        token_counter: TokenCounter = estimate_tokens,
        default_max_tokens: int = DEFAULT_MAX_TOKENS,
        default_model: str = "default",
        timeout: float | None = None,
    ) -> None:
        super().__init__(
            limits,
            transport,
            cost=cost,
            token_counter=token_counter,
            default_max_tokens=default_max_tokens,
            default_model=default_model,
            timeout=timeout,
        )

    @overload
    def handle_request(self, request: httpx2.Request) -> httpx2.Response: ...

    @overload
    def handle_request(self, request: httpx.Request) -> httpx.Response: ...

    def handle_request(self, request: Any) -> Any:
        """Send ``request``: block until granted if it is a model call, then pass it on.

        Timed out (or interrupted) while waiting, nothing is taken and nothing is sent. If
        sending fails, the lease ends at once. Otherwise the response comes back with its
        body wrapped: the lease ends when the body is read to the end or closed.
        """
        inner = self._inner_for(request, "HTTPTransport")
        priced = self._priced(request)
        if priced is None:
            return inner.handle_request(request)
        limiter, amounts = priced
        context = limiter.acquire_blocking(timeout=self._timeout, **amounts)
        context.__enter__()
        try:
            response = inner.handle_request(request)
        except BaseException as exc:
            context.__exit__(type(exc), exc, exc.__traceback__)
            raise
        try:
            body = None
            if response.status_code == 429 and _retry_info_wanted(response.headers):
                try:  # an error body is small: read it now, the SDK may close it unread
                    body = _drained_blocking(response)
                except BaseException:
                    _unread_429(limiter, context, response)
                    raise
            settle, read = self._answered(limiter, context, response, body)
        except BaseException as exc:  # (the body's read failed)
            context.__exit__(type(exc), exc, exc.__traceback__)
            raise
        if read:
            settle.end_blocking()
            return response
        stream_type = _sync_stream_type(type(response.stream).__mro__)
        response.stream = stream_type(response.stream, settle)
        return response

    def close(self) -> None:
        """Close the inner transport."""
        if self._inner is not None:
            self._inner.close()

    def __enter__(self) -> Self:
        if self._inner is not None:
            self._inner.__enter__()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        if self._inner is not None:
            self._inner.__exit__(exc_type, exc_value, traceback)


# The parts of a request that its prompt is made of (a custom counter is given each one,
# None for those absent, in this order; the estimate, those given, in any order).
_PROMPT_KEYS: Final = ("messages", "system", "input", "instructions", "prompt")
_GEMINI_KEYS: Final = ("contents", "systemInstruction", "requests")
_PROMPT_SET: Final = frozenset(_PROMPT_KEYS)
_GEMINI_SET: Final = frozenset(_GEMINI_KEYS)


def _gemini_parts(value: object) -> object:
    """Gemini ``contents`` (``[{"role": ..., "parts": [{"text": ...}]}]``, or one of
    them, or the ``requests`` of a batch embedding) as text parts for a token counter."""
    if isinstance(value, Mapping):
        value = [value]
    if not isinstance(value, list):
        return None
    parts: list[object] = []
    for entry in value:
        if isinstance(entry, Mapping):
            inner = entry.get("parts")
            if inner is None:
                inner = _gemini_parts(entry.get("content"))
            if isinstance(inner, list):
                parts.extend(inner)
    return parts


def _max_output(body: Mapping[str, Any], default: int) -> float:
    config = body.get("generationConfig")
    for value in (
        body.get("max_tokens"),
        body.get("max_completion_tokens"),
        body.get("max_output_tokens"),
        None if config is None else item(config, "maxOutputTokens"),
    ):
        if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
            return float(value)
    return float(default)


# JSON's whitespace, and the scanner json.loads reads with (C's, where there is one; the
# stubs do not declare it).
_JSON_SPACE: Final = " \t\n\r"
_SCAN: Final[Callable[[str, int], tuple[Any, int]]] = json.JSONDecoder().scan_once  # type: ignore[attr-defined]


def _loads(data: bytes | bytearray) -> Any:
    """``json.loads(data)``, the same value or the same error, with its Python steps left
    out for a UTF-8 document (what APIs send): decoded and scanned at once. Anything
    else (another encoding, a byte-order mark, a malformed document) is given to
    ``json.loads``, to read or to raise as it does. (Before Python 3.12, whose scanner
    counts Python's frames toward the recursion limit, a document nested within a few
    levels of that limit is read here where ``json.loads``, a few frames deeper, raises
    ``RecursionError``.)"""
    try:
        text = data.decode().strip(_JSON_SPACE)
        value, end = _SCAN(text, 0)
    except (ValueError, StopIteration):  # (UnicodeDecodeError is a ValueError)
        return json.loads(data)
    return value if end == len(text) else json.loads(data)


def _json_body(request: Any) -> Mapping[str, Any] | None:
    """The request's body as a JSON object, or ``None`` (not JSON, not an object, or a
    streamed body not read yet)."""
    try:
        content = request.content
    except Exception:  # a streaming request body: httpx's RequestNotRead
        return None
    try:
        body = _loads(content)
    except _UNREADABLE:
        return None
    return body if isinstance(body, dict) else None


_DURATION: Final = re.compile(r"\s*(\d+(?:\.\d*)?|\.\d+)s\s*")


def retry_info_delay(content: bytes) -> float | None:
    """The delay of a ``google.rpc.RetryInfo`` in a JSON error body, in seconds, or
    ``None``.

    Gemini (and other Google APIs) answer a 429 with ``{"error": {..., "details": [...]}}``
    where one entry of ``details`` has an ``@type`` ending in ``google.rpc.RetryInfo`` and a
    ``retryDelay`` such as ``"7s"`` or ``"0.5s"`` (a protobuf ``Duration`` in JSON). A
    body that is a list of such objects (``streamGenerateContent`` without ``alt=sse``) is
    read too. Anything else gives ``None``.
    """
    try:
        payload = _loads(content)
    except _UNREADABLE:
        return None
    for entry in payload if isinstance(payload, list) else [payload]:
        details = item(item(entry, "error"), "details")
        for detail in details if isinstance(details, list) else []:
            kind = item(detail, "@type")
            if isinstance(kind, str) and kind.endswith("google.rpc.RetryInfo"):
                delay = item(detail, "retryDelay")
                match = _DURATION.fullmatch(delay) if isinstance(delay, str) else None
                if match is not None:
                    return float(match[1])
    return None


async def _drained(response: Any) -> bytes | None:
    """The body of ``response`` as sent, read from its stream, which is closed (also if
    the read fails) and replaced with the same bytes, unread: the caller reads the
    response as if the transport had not (its raw bytes, its timing). ``None`` for a
    response read already (by the inner transport): its content is read instead."""
    if _content(response) is not None:
        return None
    if response.is_stream_consumed or response.is_closed:  # (and not read: broken)
        await response.aread()  # (raises StreamConsumed or StreamClosed)
        return None
    stream = response.stream
    try:
        body = b"".join([chunk async for chunk in stream])
    finally:
        await stream.aclose()
    response.stream = _byte_stream(type(response).__mro__)(body)
    return body


def _drained_blocking(response: Any) -> bytes | None:
    """:func:`_drained` for a sync response."""
    if _content(response) is not None:
        return None
    if response.is_stream_consumed or response.is_closed:  # (and not read: broken)
        response.read()  # (raises StreamConsumed or StreamClosed)
        return None
    stream = response.stream
    try:
        body = b"".join(list(stream))
    finally:
        stream.close()
    response.stream = _byte_stream(type(response).__mro__)(body)
    return body


@functools.cache
def _byte_stream(mro: tuple[type, ...]) -> Callable[[bytes], Any]:
    """The ``ByteStream`` (a body of bytes, sync and async) of the library whose
    response has this MRO (a subclass's own module may have none)."""
    for cls in mro:
        for module in (cls.__module__, cls.__module__.partition(".")[0]):
            stream = getattr(sys.modules.get(module), "ByteStream", None)
            if stream is not None:
                return cast("Callable[[bytes], Any]", stream)
    raise TypeError(f"not a response of httpx or httpx2: {mro[0]!r}")


def _decoder(encoding: str) -> Any:
    """A decompressor of a body in ``encoding`` (a ``content-encoding``): ``None`` for
    none, ``False`` for one not read here."""
    encoding = encoding.strip().lower()
    if not encoding or encoding == "identity":
        return None
    if encoding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if encoding == "deflate":
        return _Deflate()
    return False


class _Deflate:
    """A decompressor of ``deflate`` as servers send it: in its zlib wrapper, as the
    standard has it, or without, as some do. The first two bytes tell them apart: a zlib
    header (method 8, a window of at most 32 KiB, no preset dictionary, a check that
    makes the two a multiple of 31) would open a raw stream only with a stored block
    whose unused bits are not zero, which no encoder writes."""

    __slots__ = ("_head", "_inner")

    def __init__(self) -> None:
        self._head = b""
        self._inner: Any = None

    def decompress(self, data: bytes, max_length: int = 0) -> bytes:
        inner = self._inner
        if inner is None:
            head = self._head + data
            if len(head) < 2:
                self._head = head
                return b""
            self._head = b""
            wrapped = (
                head[0] & 0x0F == 8
                and head[0] >> 4 <= 7
                and not head[1] & 0x20
                and (head[0] << 8 | head[1]) % 31 == 0
            )
            inner = self._inner = zlib.decompressobj(zlib.MAX_WBITS if wrapped else -zlib.MAX_WBITS)
            data = head
        result: bytes = inner.decompress(data, max_length)
        return result

    def flush(self) -> bytes:
        if self._inner is None:  # (a body of one byte, or none: nothing to decode)
            return b""
        result: bytes = self._inner.flush()
        return result


def _decoded(body: bytes, encoding: str) -> bytes | None:
    """``body`` as sent in ``encoding``, decoded; ``None`` if it cannot be (an encoding not
    read here, broken, or more than ``_MAX_BODY`` once decoded)."""
    decoder = _decoder(encoding)
    if decoder is None:
        return body if len(body) <= _MAX_BODY else None
    if decoder is False:
        return None
    try:
        decoded: bytes = decoder.decompress(body, _MAX_BODY + 1)
    except zlib.error:
        return None
    return decoded if len(decoded) <= _MAX_BODY else None


def _unread_429(limiter: Limiter, context: LeaseContext, response: Any) -> None:
    """Report a 429 whose body could not be read (for its delay) as its headers tell."""
    fields = _fields_read(response.headers)[0]
    report(limiter, fields, 429, "a response", stacklevel=3, lease=context)


def _retry_info_wanted(headers: Any) -> bool:
    """Whether a 429's body is read for a ``RetryInfo``: JSON, of a known size no larger
    than ``_MAX_BODY`` or of none given, and no ``Retry-After`` header."""
    if "retry-after" in headers or "retry-after-ms" in headers:
        return False
    if "json" not in str(headers.get("content-type", "")).lower():
        return False
    length = str(headers.get("content-length", "0")).strip()
    return not (length.isascii() and length.isdigit()) or int(length) <= _MAX_BODY


# The fields of a response that are read, by their names as sent (in lower case): the
# rate-limit headers (for the limiter), the body's type and encoding (to read its usage).
_CONTENT_TYPE: Final = "content-type"
_CONTENT_ENCODING: Final = "content-encoding"
_READ: Final = {name.encode("ascii"): name for name in (*NAMES, _CONTENT_TYPE, _CONTENT_ENCODING)}


def _fields_read(headers: Any) -> tuple[Fields, str, str]:
    """What of ``headers`` (an ``httpx2.Headers`` or ``httpx.Headers``) is read: the
    rate-limit fields, and the body's content type and content encoding (``""`` when
    absent), with values decoded as the client decodes them (the others are never
    decoded) and repeated fields joined with ``", "`` as ``Headers.get`` does. (The
    usual response is read by :func:`_openai_read` instead.)"""
    encoding = headers.encoding
    read = _READ
    fields = Fields()
    for key, value in headers.raw:
        name = read.get(key)
        if name is None:
            name = read.get(key.lower())
            if name is None:
                continue
        text = value.decode(encoding)
        known = fields.get(name)
        fields[name] = text if known is None else f"{known}, {text}"
    return fields, fields.pop(_CONTENT_TYPE, ""), fields.pop(_CONTENT_ENCODING, "")


# Where _openai_read puts each field it reads (the others it meets send the response to
# _fields_read).
_OPENAI_SLOTS: Final = {
    name.encode("ascii"): slot
    for slot, name in enumerate((*OPENAI_FIELDS, _CONTENT_TYPE, _CONTENT_ENCODING))
}


def _openai_read(headers: Any) -> tuple[ServerFeedback, str, str] | None:
    """:func:`_fields_read` and the parse of its fields in one step, for the usual
    response: rate-limit fields of OpenAI's alone (or none), each sent once (and the
    body's type and encoding too), in their usual forms (see :func:`read_openai`).
    ``None`` for any other."""
    encoding = headers.encoding
    values: list[str | None] = [None] * len(_OPENAI_SLOTS)
    slot_of = _OPENAI_SLOTS.get
    for key, value in headers.raw:
        slot = slot_of(key)
        if slot is None:
            if not key.islower():  # (a name as sent, with capitals)
                key = key.lower()
                slot = slot_of(key)
            if slot is None:
                if key in _READ:  # another family's field, or Retry-After
                    return None
                continue
        if values[slot] is not None:  # sent twice
            return None
        values[slot] = value.decode(encoding)
    info = read_openai(values)
    if info is None:
        return None
    return info, values[-2] or "", values[-1] or ""


def _content(response: Any) -> bytes | None:
    """The response's body if it was read already (decoded), else ``None``."""
    if getattr(response, "is_stream_consumed", True) is False:
        return None  # the usual case, a body still to stream: no ResponseNotRead to raise
    try:
        content = response.content
    except Exception:  # ResponseNotRead: the usual case, a body still to stream
        return None
    return content if isinstance(content, bytes) else None


_NO_USAGE: Final = b'"usage":null'  # in every chunk of an OpenAI stream with usage


def _may_hold_usage(line: bytearray) -> bool:
    """Whether a server-sent event's line may report usage: it names ``usage`` (or
    ``usageMetadata``, or ``message``, all holding ``sage``), other than as the
    ``"usage":null`` of OpenAI's chunks before the last. Without a ``\\u`` escape in the
    line, a key that reads ``usage`` once parsed is written as such, so a line whose
    every ``sage`` is in a ``"usage":null`` (or that has none) has no usage to read; a
    line that escapes one of the letters of ``sage`` is read (``"usag\\u0065"`` is
    ``"usage"``)."""
    if line.count(b"sage") != line.count(_NO_USAGE):
        return True
    return b"\\u00" in line and any(letter in line for letter in _SAGE_ESCAPED)


# "s", "a", "g" and "e" as JSON escapes (all digits: no other case to write them in)
_SAGE_ESCAPED: Final = (b"\\u0073", b"\\u0061", b"\\u0067", b"\\u0065")


class _Settlement:
    """One response's usage, read from its body as it passes, and the end of its lease."""

    __slots__ = (
        "_buffer",
        "_context",
        "_decoder",
        "_ended",
        "_event",
        "_limiter",
        "_line",
        "_once",
        "_status",
        "_usage",
    )

    def __init__(
        self, limiter: Limiter, context: LeaseContext, status: int, kind: str, encoding: str
    ) -> None:
        """``kind`` and ``encoding``: the body's ``content-type`` and
        ``content-encoding`` (``""``: none; for a body read already, decoded)."""
        self._limiter = limiter
        self._context = context
        self._status = status
        self._ended = False
        self._once = itertools.count()  # next() is 0 once, whichever thread asks first
        self._usage: dict[str, float] = {}
        self._decoder: Any = None
        self._line = bytearray()
        self._event = kind != "application/json" and (  # (the usual body, at once)
            kind.partition(";")[0].strip().lower() == "text/event-stream"
        )
        # (bytes: a first chunk, kept as it came; a bytearray once another follows)
        self._buffer: bytes | bytearray | None = None if self._event else b""
        if encoding:
            decoder = _decoder(encoding)
            if decoder is False:  # an encoding not read here: keep the estimate
                self._buffer = None
                self._event = False
            else:
                self._decoder = decoder

    def feed(self, chunk: bytes) -> None:
        """Read what ``chunk`` says about usage; never raises."""
        buffer = self._buffer
        if self._ended or not chunk or (buffer is None and not self._event):
            return
        decoder = self._decoder
        try:
            if decoder is None:
                data = chunk
            elif buffer is None:  # (a stream, decoded a chunk at a time as its reader does)
                data = decoder.decompress(chunk)
            else:  # (a body to keep: never decoded past the most kept)
                data = decoder.decompress(chunk, _MAX_BODY + 1 - len(buffer))
        except zlib.error:
            self._buffer, self._event = None, False
            return
        if not data:  # (a piece of an encoding's own, a gzip trailer: nothing to read)
            return
        if buffer is None:
            self._lines(data)
        elif len(buffer) + len(data) > _MAX_BODY:
            self._buffer = None
        elif type(buffer) is bytearray:
            buffer += data
        elif buffer:  # a second chunk: from now on, a buffer of its own that grows
            grown = bytearray(buffer)
            grown += data
            self._buffer = grown
        else:  # the usual body, in one chunk: kept as it came (bytes), not copied
            self._buffer = data if type(data) is bytes else bytearray(data)

    def _lines(self, data: bytes) -> None:
        if b"\r" in data:  # lines that end in CR LF, or in CR alone (as SSE allows): as LF
            data = data.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        line = self._line
        start = 0
        if not line:
            # The whole lines of this chunk at once: none of them may hold usage when the
            # chunk's every "sage" is in a "usage":null and it has no escape (each line
            # then passes _may_hold_usage's test too). OpenAI's chunks before the last
            # are skipped here, with a few scans in C (a backslash first: the quickest).
            last = data.rfind(b"\n")
            if (
                last >= 0
                and data.count(b"sage", 0, last) == data.count(_NO_USAGE, 0, last)
                and (data.find(b"\\", 0, last) < 0 or data.find(b"\\u", 0, last) < 0)
            ):
                if last == len(data) - 1:
                    return  # (nothing after its last line)
                start = last + 1
        while True:
            end = data.find(b"\n", start)
            if end < 0:
                if len(line) + len(data) - start <= _MAX_LINE:
                    line += data[start:]
                else:
                    line.clear()  # too long to be a usage event
                return
            line += data[start:end]
            if line.startswith(b"data:") and _may_hold_usage(line):
                self._event_data(bytes(line[5:]))
            line.clear()
            start = end + 1

    def _event_data(self, data: bytes) -> None:
        try:
            self._read(_loads(data))
        except _UNREADABLE:  # (RecursionError too: _read recurses into nested lists)
            return

    def _read(self, payload: object) -> None:
        if isinstance(payload, list):  # Gemini's streamGenerateContent without alt=sse
            for entry in payload:
                self._read(entry)
            return
        if type(payload) is not dict and not isinstance(payload, Mapping):
            return
        get = payload.get
        message, response = get("message"), get("response")
        for usage in (
            get("usage"),  # OpenAI, Anthropic's message_delta
            None if message is None else item(message, "usage"),  # Anthropic's message_start
            None if response is None else item(response, "usage"),  # response.completed
            get("usageMetadata"),  # Gemini
        ):
            if usage is None:
                continue
            found = read_usage(usage, item)
            if found and usage is not get("usage") and get("type") == "message_start":
                # Its output count is a placeholder (1) until message_delta: a stream cut
                # before that keeps the output estimate.
                found.pop("output_tokens", None)
                found.pop("tokens", None)
            if found:
                self._usage.update(found)
                if "tokens" not in found and "tokens" in self._usage:
                    del self._usage["tokens"]
                if "input_tokens" in self._usage and "output_tokens" in self._usage:
                    self._usage.setdefault(
                        "tokens", self._usage["input_tokens"] + self._usage["output_tokens"]
                    )

    async def end(self, error: BaseException | None = None) -> None:
        """Settle the lease and end it (``error``: reading the body failed so); the
        second and later calls do nothing."""
        if next(self._once):
            return
        self._ended = True
        try:
            self._settle()
        finally:
            kind = None if error is None else type(error)
            await self._context.__aexit__(kind, error, None)

    def end_blocking(self, error: BaseException | None = None) -> None:
        """:meth:`end` for a lease of :meth:`Limiter.acquire_blocking`; from any thread
        (a body read in one and closed in another ends its lease once)."""
        if next(self._once):
            return
        self._ended = True
        try:
            self._settle()
        finally:
            context = self._context
            assert isinstance(context, BlockingLeaseContext)
            context.__exit__(None if error is None else type(error), error, None)

    def _settle(self) -> None:
        if self._buffer:
            try:
                if self._decoder is not None:
                    self._buffer += self._decoder.flush()
                self._read(_loads(self._buffer))
            except (*_UNREADABLE, zlib.error):
                pass
            self._buffer = None
        dims = self._limiter._dims
        usage = {k: v for k, v in self._usage.items() if k in dims}
        if not usage and self._status >= 400:  # refused or failed: no tokens were used
            usage = {k: 0.0 for k in ("tokens", "input_tokens", "output_tokens") if k in dims}
        if usage:
            try:
                self._context.settle(**usage)
            except TokenBucketError as error:
                warn("could not settle a response's usage", error, stacklevel=3)


# What a response body closed before its end ends its lease with (see _adaptive: an
# error that is no drop, so the call's shortened duration is no sample).
_CLOSED_EARLY: Final = GeneratorExit("the response body was closed before its end")


class _LeaseStream:
    """A response body that settles and ends its lease when read to the end or closed."""

    def __init__(self, inner: Any, settlement: _Settlement) -> None:
        self._inner = inner
        self._settlement = settlement

    async def __aiter__(self) -> AsyncIterator[bytes]:
        settlement = self._settlement
        chunks = self._inner.__aiter__()
        try:
            async for chunk in chunks:
                settlement.feed(chunk)
                yield chunk
        except GeneratorExit:  # closed before its end: so is the iterator it reads, now
            try:  # (not when collected, on a task of the event loop's)
                await settlement.end(_CLOSED_EARLY)
            finally:
                # (a stream that is its own iterator is closed with the response)
                close = None if chunks is self._inner else getattr(chunks, "aclose", None)
                if close is not None:
                    await close()
            raise
        except BaseException as error:  # (a broken stream: the lease ends with it)
            await settlement.end(error)
            raise
        await settlement.end()

    async def aclose(self) -> None:
        try:  # (closed before its end, if not read to it: the call is no sample)
            if not self._settlement._ended:  # (else no coroutine to make and await)
                await self._settlement.end(_CLOSED_EARLY)
        finally:
            await self._inner.aclose()


class _SyncLeaseStream:
    """A sync response body that settles and ends its lease when read to the end or
    closed."""

    def __init__(self, inner: Any, settlement: _Settlement) -> None:
        self._inner = inner
        self._settlement = settlement

    def __iter__(self) -> Iterator[bytes]:
        settlement = self._settlement
        try:
            for chunk in self._inner:
                settlement.feed(chunk)
                yield chunk
        except BaseException as error:
            settlement.end_blocking(error)
            raise
        settlement.end_blocking()

    def close(self) -> None:
        try:
            self._settlement.end_blocking(_CLOSED_EARLY)
        finally:
            self._inner.close()


@functools.cache
def _sync_stream_type(mro: tuple[type, ...]) -> Callable[[Any, _Settlement], Any]:
    """The sync body stream class for the library whose stream has this MRO, derived
    from that library's ``SyncByteStream``."""
    base = next((cls for cls in mro if cls.__name__ == "SyncByteStream"), None)
    bases: tuple[type, ...] = (_SyncLeaseStream,) if base is None else (_SyncLeaseStream, base)
    return type("LimitedSyncByteStream", bases, {"__module__": __name__})


@functools.cache
def _stream_type(mro: tuple[type, ...]) -> Callable[[Any, _Settlement], Any]:
    """The body stream class for the library whose stream has this MRO: ours, derived
    from that library's ``AsyncByteStream`` (which its client checks for)."""
    base = next(
        (cls for cls in mro if cls.__name__ == "AsyncByteStream"),
        None,
    )
    bases: tuple[type, ...] = (_LeaseStream,) if base is None else (_LeaseStream, base)
    return type("LimitedByteStream", bases, {"__module__": __name__})
