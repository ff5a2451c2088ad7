"""The HTTP layer around the provider: OpenAI's chat completions and Anthropic's messages
routes over HTTP/1.1.

Keep-alive connections, ``content-length`` or chunked request bodies, JSON responses;
``"stream": true`` gets OpenAI's server-sent events (``chat.completion.chunk`` objects, a
last chunk with the usage when ``stream_options.include_usage`` is set, then ``[DONE]``),
sent chunked. ``GET /v1/models`` lists the one model ``gpt-test``.

``POST /v1/messages`` is Anthropic's Messages API: ``max_tokens`` is required (a 400
without it), ``system`` counts as prompt, the answer is a ``message`` object, errors are
``{"type": "error", "error": {...}}`` and a stream is Anthropic's named events
(``message_start`` with the input tokens, ``content_block_*``, ``message_delta`` with the
output tokens, ``message_stop``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from dataclasses import dataclass, field, replace
from http import HTTPStatus
from typing import TYPE_CHECKING, Any, Final

from .provider import Admitted, ChatRequest, Headers, Refused

if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Mapping

MAX_BODY: Final = 8 * 1024 * 1024
MAX_HEAD: Final = 64 * 1024


class HTTPError(Exception):
    """A request refused before it reaches the provider (a 4xx, ``param`` naming the field)."""

    def __init__(self, status: int, message: str = "", param: str | None = None) -> None:
        self.status = status
        self.message = message or HTTPStatus(status).phrase
        self.param = param
        super().__init__(self.message)


@dataclass(frozen=True, slots=True)
class HTTPRequest:
    method: str
    path: str
    body: bytes
    keep_alive: bool


@dataclass(frozen=True, slots=True)
class Reply:
    status: int
    payload: object  # sent as JSON
    headers: Headers = field(default_factory=list)
    delay: float = 0.0
    events: tuple[object, ...] | None = None  # sent as server-sent events instead
    # (an event is its data, or a pair (name, data) for a named event)


def error(status: int, message: str, headers: Headers | None = None, **fields: str | None) -> Reply:
    """OpenAI's error body; ``fields`` may set its ``type``, ``param`` and ``code``."""
    body = {"message": message, "type": "invalid_request_error", "param": None, "code": None}
    return Reply(status, {"error": body | fields}, headers or [])


def _chat_payload(
    body: bytes, bad_json: str, no_model: str, no_messages: str
) -> tuple[dict[str, Any], str, list[dict[str, Any]]]:
    """A chat body's JSON object, model and messages, each checked (``HTTPError`` (400)
    with the API's own wording otherwise)."""
    try:
        payload = json.loads(body)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise HTTPError(400, f"{bad_json}: {exc}") from None
    if not isinstance(payload, dict):
        raise HTTPError(400, "The request body must be a JSON object.")
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise HTTPError(400, no_model, "model")
    messages = payload.get("messages")
    if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
        raise HTTPError(400, no_messages, "messages")
    return payload, model, messages


def parse_chat_request(body: bytes, default_max_tokens: int) -> ChatRequest:
    """The ``POST /v1/chat/completions`` body as a ``ChatRequest``; ``HTTPError`` (400) if bad."""
    payload, model, messages = _chat_payload(
        body,
        "We could not parse the JSON body of your request",
        "you must provide a model parameter",
        "'messages' must be a non-empty array of message objects",
    )
    for name in ("max_completion_tokens", "max_tokens"):
        value = payload.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise HTTPError(400, f"'{name}' must be a positive integer", name)
        return ChatRequest(model, messages, value)
    return ChatRequest(model, messages, default_max_tokens)


def completion(request: ChatRequest, admitted: Admitted, delay: float) -> Reply:
    """The ``chat.completion`` for an admitted request."""
    serial, prompt, used = admitted.serial, admitted.prompt_tokens, admitted.completion_tokens
    charge = prompt + request.max_tokens
    digest = hashlib.sha256(f"{serial}:{request.model}:{charge}".encode()).hexdigest()
    content = f"Simulated reply #{serial}: {used} tokens."
    message = {"role": "assistant", "content": content, "refusal": None}
    usage = {"prompt_tokens": prompt, "completion_tokens": used, "total_tokens": prompt + used}
    payload = {
        "id": f"chatcmpl-{serial:06d}{digest[:18]}",
        "object": "chat.completion",
        "created": int(time.time()),
        "model": request.model,
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": "stop"}],
        "usage": usage,
    }
    return Reply(200, payload, [*admitted.headers, ("x-request-id", f"req_{digest[18:50]}")], delay)


def stream_mode(body: bytes) -> tuple[bool, bool]:
    """``(stream, include_usage)`` of a chat request body that already parsed."""
    payload = json.loads(body)
    options = payload.get("stream_options")
    usage = isinstance(options, dict) and options.get("include_usage") is True
    return payload.get("stream") is True, usage


def chunks(reply: Reply, include_usage: bool) -> Reply:
    """The completion ``reply`` as the events of a stream."""
    payload = reply.payload
    assert isinstance(payload, dict)
    content = payload["choices"][0]["message"]["content"]
    base = {k: payload[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}
    empty = {"usage": None} if include_usage else {}
    words = content.split(" ")
    deltas = [{"role": "assistant", "content": ""}] + [
        {"content": w if i == 0 else f" {w}"} for i, w in enumerate(words)
    ]
    events: list[object] = [
        base | {"choices": [{"index": 0, "delta": d, "finish_reason": None}]} | empty
        for d in deltas
    ]
    events.append(base | {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]} | empty)
    if include_usage:
        events.append(base | {"choices": [], "usage": payload["usage"]})
    return Reply(reply.status, None, reply.headers, reply.delay, (*events, "[DONE]"))


ANTHROPIC_ERRORS: Final = {
    400: "invalid_request_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "request_too_large",
    429: "rate_limit_error",
}


def anthropic_error(status: int, message: str, headers: Headers | None = None) -> Reply:
    """Anthropic's error body, its ``type`` by the status."""
    kind = ANTHROPIC_ERRORS.get(status, "api_error")
    body = {"type": "error", "error": {"type": kind, "message": message}}
    return Reply(status, body, headers or [])


def parse_messages_request(body: bytes) -> ChatRequest:
    """The ``POST /v1/messages`` body as a ``ChatRequest`` (``system`` first among its
    messages, for the prompt estimate); ``HTTPError`` (400) if bad."""
    payload, model, messages = _chat_payload(
        body,
        "There was an issue with your request body",
        "model: Field required",
        "messages: Field required, a non-empty list of messages",
    )
    max_tokens = payload.get("max_tokens")
    if max_tokens is None:
        raise HTTPError(400, "max_tokens: Field required", "max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise HTTPError(400, "max_tokens: Input should be a positive integer", "max_tokens")
    system = payload.get("system")
    if system is not None and not isinstance(system, (str, list)):
        raise HTTPError(400, "system: Input should be a string or a list of blocks", "system")
    prompt = messages if system is None else [{"role": "system", "content": system}, *messages]
    return ChatRequest(model, prompt, max_tokens)


def message(request: ChatRequest, admitted: Admitted, delay: float, usage: bool = True) -> Reply:
    """Anthropic's ``message`` for an admitted request (without ``usage`` if not ``usage``)."""
    serial, prompt, used = admitted.serial, admitted.prompt_tokens, admitted.completion_tokens
    digest = hashlib.sha256(f"{serial}:{request.model}:{prompt}".encode()).hexdigest()
    payload: dict[str, object] = {
        "id": f"msg_{serial:06d}{digest[:18]}",
        "type": "message",
        "role": "assistant",
        "content": [{"type": "text", "text": f"Simulated reply #{serial}: {used} tokens."}],
        "model": request.model,
        "stop_reason": "end_turn",
        "stop_sequence": None,
    }
    if usage:
        payload["usage"] = {"input_tokens": prompt, "output_tokens": used}
    return Reply(200, payload, [*admitted.headers, ("request-id", f"req_{digest[18:50]}")], delay)


def message_events(reply: Reply) -> Reply:
    """The ``message`` ``reply`` as the named events of Anthropic's stream."""
    payload = reply.payload
    assert isinstance(payload, dict)
    usage = payload.get("usage")
    start = {k: v for k, v in payload.items() if k != "usage"} | {
        "content": [],
        "stop_reason": None,
    }
    delta: dict[str, object] = {"stop_reason": payload["stop_reason"], "stop_sequence": None}
    end: dict[str, object] = {"type": "message_delta", "delta": delta}
    if isinstance(usage, dict):
        start["usage"] = {"input_tokens": usage["input_tokens"], "output_tokens": 1}
        end["usage"] = {"output_tokens": usage["output_tokens"]}
    words = payload["content"][0]["text"].split(" ")
    block = {"type": "text", "text": ""}
    events: list[tuple[str, object]] = [
        ("message_start", {"type": "message_start", "message": start}),
        (
            "content_block_start",
            {"type": "content_block_start", "index": 0, "content_block": block},
        ),
        ("ping", {"type": "ping"}),
    ]
    events += [
        (
            "content_block_delta",
            {
                "type": "content_block_delta",
                "index": 0,
                "delta": {"type": "text_delta", "text": w if i == 0 else f" {w}"},
            },
        )
        for i, w in enumerate(words)
    ]
    events += [
        ("content_block_stop", {"type": "content_block_stop", "index": 0}),
        ("message_delta", end),
        ("message_stop", {"type": "message_stop"}),
    ]
    return Reply(reply.status, None, reply.headers, reply.delay, tuple(events))


async def read_request(reader: asyncio.StreamReader) -> HTTPRequest | None:
    """Read one request; ``None`` when the peer closed the connection between requests."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if exc.partial.strip():
            raise HTTPError(400) from None
        return None
    except asyncio.LimitOverrunError:
        raise HTTPError(431) from None
    lines = head.decode("latin-1").strip("\r\n").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise HTTPError(400)
    method, target, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise HTTPError(400)
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        body = await reader.readexactly(_body_size(headers.get("content-length", "0"), 10))
    connection = headers.get("connection", "").lower()
    http10 = version == "HTTP/1.0"
    keep_alive = "keep-alive" in connection if http10 else "close" not in connection
    return HTTPRequest(method, target.partition("?")[0], body, keep_alive)


def _body_size(text: str | bytes, base: int, before: int = 0) -> int:
    """A content-length or chunk size: 400 if malformed, 413 if the body outgrows MAX_BODY."""
    try:
        size = int(text, base)
    except ValueError:
        raise HTTPError(400) from None
    if size < 0:
        raise HTTPError(400)
    if before + size > MAX_BODY:
        raise HTTPError(413)
    return size


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    try:
        while size := _body_size((await reader.readuntil(b"\r\n")).split(b";")[0], 16, len(body)):
            body += await reader.readexactly(size)
            if await reader.readexactly(2) != b"\r\n":
                raise HTTPError(400)
        while await reader.readuntil(b"\r\n") != b"\r\n":
            pass  # trailers, ignored
    except asyncio.LimitOverrunError:
        raise HTTPError(400) from None
    return bytes(body)


def encode_event_head(reply: Reply, keep_alive: bool) -> bytes:
    lines = [
        f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
        "content-type: text/event-stream; charset=utf-8",
        *(f"{name}: {value}" for name, value in reply.headers),
        "transfer-encoding: chunked",
        f"connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def encode_event(event: object) -> bytes:
    name = ""
    if isinstance(event, tuple):
        name, event = event
        name = f"event: {name}\n"
    data = event if isinstance(event, str) else json.dumps(event, separators=(",", ":"))
    payload = f"{name}data: {data}\n\n".encode()
    return f"{len(payload):x}\r\n".encode() + payload + b"\r\n"


def encode_response(reply: Reply, keep_alive: bool) -> bytes:
    body = json.dumps(reply.payload, separators=(",", ":")).encode("utf-8")
    lines = [
        f"HTTP/1.1 {reply.status} {HTTPStatus(reply.status).phrase}",
        "content-type: application/json",
        *(f"{name}: {value}" for name, value in reply.headers),
        f"content-length: {len(body)}",
        f"connection: {'keep-alive' if keep_alive else 'close'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


@dataclass(frozen=True, slots=True)
class ChatAPI:
    """The routes (``POST /v1/chat/completions``, ``POST /v1/messages``, ``GET /health``)
    over HTTP/1.1.

    ``answer`` is the provider's decision on a chat completion, ``answer_messages`` on an
    Anthropic message (without it, ``/v1/messages`` is not found). An admitted request's
    reply waits a delay drawn from ``rng`` in the ``(low, high)`` range ``latency``. Chat
    requests that set no ``max_tokens`` are charged ``default_max_tokens``. A stream waits
    ``event_delay`` seconds before each event after the first; with ``drop_after``, the
    connection is dropped after that many events, as a server failing mid-stream does.
    With ``usage=False`` no answer reports its usage, as some compatible servers do not;
    ``headers`` are set on every answer to a model call, replacing the provider's headers
    of the same name (to send malformed ones).
    """

    answer: Callable[[ChatRequest], Admitted | Refused]
    latency: tuple[float, float]
    rng: random.Random
    default_max_tokens: int
    event_delay: float = 0.0
    drop_after: int | None = None
    answer_messages: Callable[[ChatRequest], Admitted | Refused] | None = None
    usage: bool = True
    headers: Mapping[str, str] = field(default_factory=dict)

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """Answer one connection's requests until it closes or a request asks to."""
        try:
            keep_alive = True
            while keep_alive:
                try:
                    request = await read_request(reader)
                except HTTPError as exc:  # the framing is lost: answer, then close
                    reply, keep_alive = error(exc.status, exc.message), False
                else:
                    if request is None:
                        break
                    reply, keep_alive = self.dispatch(request), request.keep_alive
                if reply.delay > 0:
                    await asyncio.sleep(reply.delay)
                if reply.events is not None:
                    if not await self._stream(writer, reply, keep_alive):
                        break
                    continue
                writer.write(encode_response(reply, keep_alive))
                await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away mid-request
        finally:
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _stream(self, writer: asyncio.StreamWriter, reply: Reply, keep_alive: bool) -> bool:
        """Send ``reply``'s events; ``False`` if the connection was dropped on purpose."""
        assert reply.events is not None
        writer.write(encode_event_head(reply, keep_alive))
        for sent, event in enumerate(reply.events):
            if sent == self.drop_after:
                writer.transport.abort()
                return False
            if sent and self.event_delay > 0:
                await asyncio.sleep(self.event_delay)
            writer.write(encode_event(event))
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        return True

    def dispatch(self, request: HTTPRequest) -> Reply:
        path = request.path.rstrip("/")
        if path == "/v1/messages" and self.answer_messages is not None:
            return self.dispatch_messages(request, self.answer_messages)
        try:
            if path == "/health":
                return Reply(200, {"status": "ok"})
            if path == "/v1/models" and request.method == "GET":
                model = {"id": "gpt-test", "object": "model", "created": 0, "owned_by": "fake"}
                return Reply(200, {"object": "list", "data": [model]})
            if path != "/v1/chat/completions":
                return error(404, f"Unknown path {request.path!r}.")
            if request.method != "POST":
                return error(405, "Use POST.")
            reply = self.chat(parse_chat_request(request.body, self.default_max_tokens))
            stream, include_usage = stream_mode(request.body)
            reply = chunks(reply, include_usage) if stream and reply.status == 200 else reply
            return self._override(reply)
        except HTTPError as exc:
            return error(exc.status, exc.message, param=exc.param)
        except Exception as exc:  # pragma: no cover - a bug here must not kill the connection
            return error(500, f"{type(exc).__name__}: {exc}", type="server_error")

    def chat(self, request: ChatRequest) -> Reply:
        decision = self.answer(request)
        if isinstance(decision, Refused):
            return error(
                429,
                decision.message,
                decision.headers,
                type=decision.limit,
                code="rate_limit_exceeded",
            )
        low, high = self.latency
        reply = completion(request, decision, self.rng.uniform(low, high) if high > 0 else 0.0)
        if not self.usage and isinstance(reply.payload, dict):
            reply = replace(reply, payload={**reply.payload, "usage": None})
        return reply

    def dispatch_messages(
        self, request: HTTPRequest, answer: Callable[[ChatRequest], Admitted | Refused]
    ) -> Reply:
        """Anthropic's ``POST /v1/messages``: its errors in Anthropic's shape."""
        if request.method != "POST":
            return anthropic_error(405, "Use POST.")
        try:
            chat = parse_messages_request(request.body)
        except HTTPError as exc:
            return anthropic_error(exc.status, exc.message)
        try:
            decision = answer(chat)
            if isinstance(decision, Refused):
                return self._override(anthropic_error(429, decision.message, decision.headers))
            low, high = self.latency
            delay = self.rng.uniform(low, high) if high > 0 else 0.0
            reply = message(chat, decision, delay, self.usage)
            stream = json.loads(request.body).get("stream") is True
            return self._override(message_events(reply) if stream else reply)
        except Exception as exc:  # pragma: no cover - a bug here must not kill the connection
            return anthropic_error(500, f"{type(exc).__name__}: {exc}")

    def _override(self, reply: Reply) -> Reply:
        if not self.headers:
            return reply
        names = {name.lower() for name in self.headers}
        kept = [(name, value) for name, value in reply.headers if name.lower() not in names]
        return replace(reply, headers=[*kept, *self.headers.items()])
