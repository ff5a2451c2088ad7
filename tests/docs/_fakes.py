"""Local stand-ins for the LLM providers, so the documentation's SDK examples run offline.

- **OpenAI**: the real ``openai`` SDK (installed with the ``demo`` extra), pointed at an
  in-process fake server through an ``httpx2.MockTransport``. ``openai.AsyncOpenAI`` is
  replaced by :func:`openai_client`, which builds a real ``AsyncOpenAI`` on that
  transport, so the examples exercise the SDK's own request building, response parsing,
  ``with_raw_response`` and errors.
- **Anthropic** (``anthropic``) and **Gemini** (``google.genai``): small fake modules
  with the shapes the examples use (``AsyncAnthropic().messages.create``,
  ``genai.Client().aio.models.generate_content``, usage fields, ``RateLimitError`` /
  ``errors.APIError``), checked against the SDKs' sources (anthropic 2.x, google-genai
  3.x). They are installed in ``sys.modules`` for the duration of a test.

Every fake answers at once, with a usage computed from the request and the providers'
rate-limit headers (generous limits, so feedback never throttles an example).
"""

from __future__ import annotations

import importlib
import itertools
import json
import math
import sys
import types
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import httpx2
import openai

import tokenbucket

if TYPE_CHECKING:
    import pytest

# Captured before any test replaces ``openai.AsyncOpenAI`` with the fake's factory.
_REAL_ASYNC_OPENAI = openai.AsyncOpenAI

FAKE_OPENAI_URL = "http://openai.invalid/v1"


def _prompt_tokens(payload: object) -> int:
    """About four characters per token, as the providers' own estimates go."""
    return max(1, math.ceil(len(json.dumps(payload)) / 4))


def _completion_tokens(max_tokens: object) -> int:
    return min(int(max_tokens), 24) if isinstance(max_tokens, int) and max_tokens > 0 else 24


@dataclass
class FakeProviders:
    """The state of the fake servers: what they were asked, in order."""

    requests: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    _ids: itertools.count[int] = field(default_factory=itertools.count)

    # -- OpenAI: an HTTP handler behind the real SDK ------------------------------------

    def openai_handler(self, request: httpx2.Request) -> httpx2.Response:
        body: dict[str, Any] = json.loads(request.content or b"{}")
        self.requests.append(("openai", body))
        if not request.url.path.endswith("/chat/completions"):
            return httpx2.Response(404, json={"error": {"message": "not faked"}})
        prompt = _prompt_tokens(body.get("messages"))
        completion = _completion_tokens(body.get("max_completion_tokens") or body.get("max_tokens"))
        headers = {
            "x-ratelimit-limit-requests": "10000",
            "x-ratelimit-remaining-requests": "9999",
            "x-ratelimit-reset-requests": "6ms",
            "x-ratelimit-limit-tokens": "10000000",
            "x-ratelimit-remaining-tokens": str(10_000_000 - prompt - completion),
            "x-ratelimit-reset-tokens": "1ms",
        }
        reply = {
            "id": f"chatcmpl-{next(self._ids)}",
            "object": "chat.completion",
            "created": 0,
            "model": body.get("model", "gpt-4o"),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": "Hello from the fake server."},
                    "finish_reason": "stop",
                }
            ],
            "usage": {
                "prompt_tokens": prompt,
                "completion_tokens": completion,
                "total_tokens": prompt + completion,
            },
        }
        return httpx2.Response(200, json=reply, headers=headers)

    def openai_client(self, **options: Any) -> openai.AsyncOpenAI:
        """A real ``openai.AsyncOpenAI`` whose HTTP requests go to :meth:`openai_handler`."""
        options.setdefault("api_key", "sk-docs-test")
        options["base_url"] = FAKE_OPENAI_URL
        transport: Any = httpx2.MockTransport(self.openai_handler)
        # An example's AsyncLimitedTransport is kept, over the fake server.
        limited = getattr(options.get("http_client"), "_transport", None)
        if isinstance(limited, tokenbucket.AsyncLimitedTransport):
            transport = tokenbucket.AsyncLimitedTransport(limited.limits, transport)
        options["http_client"] = httpx2.AsyncClient(transport=transport)
        return _REAL_ASYNC_OPENAI(**options)

    # -- Anthropic -----------------------------------------------------------------------

    def anthropic_message(self, kwargs: dict[str, Any]) -> tuple[Any, dict[str, str]]:
        self.requests.append(("anthropic", kwargs))
        given = _prompt_tokens([kwargs.get("system"), kwargs.get("messages")])
        produced = _completion_tokens(kwargs.get("max_tokens"))
        message = types.SimpleNamespace(
            id=f"msg_{next(self._ids)}",
            type="message",
            role="assistant",
            model=kwargs.get("model"),
            content=[types.SimpleNamespace(type="text", text="Hello from the fake server.")],
            stop_reason="end_turn",
            usage=types.SimpleNamespace(input_tokens=given, output_tokens=produced),
        )
        headers = {
            "anthropic-ratelimit-requests-limit": "4000",
            "anthropic-ratelimit-requests-remaining": "3999",
            "anthropic-ratelimit-requests-reset": "2099-01-01T00:00:00Z",
            "anthropic-ratelimit-input-tokens-limit": "2000000",
            "anthropic-ratelimit-input-tokens-remaining": str(2_000_000 - given),
            "anthropic-ratelimit-input-tokens-reset": "2099-01-01T00:00:00Z",
            "anthropic-ratelimit-output-tokens-limit": "400000",
            "anthropic-ratelimit-output-tokens-remaining": str(400_000 - produced),
            "anthropic-ratelimit-output-tokens-reset": "2099-01-01T00:00:00Z",
        }
        return message, headers

    # -- Gemini --------------------------------------------------------------------------

    def gemini_response(self, kwargs: dict[str, Any]) -> Any:
        self.requests.append(("gemini", kwargs))
        config = kwargs.get("config")
        limit = getattr(config, "max_output_tokens", None)
        if isinstance(config, dict):
            limit = config.get("max_output_tokens")
        prompt = _prompt_tokens(kwargs.get("contents"))
        produced = _completion_tokens(limit)
        return types.SimpleNamespace(
            text="Hello from the fake server.",
            usage_metadata=types.SimpleNamespace(
                prompt_token_count=prompt,
                candidates_token_count=produced,
                total_token_count=prompt + produced,
            ),
            sdk_http_response=types.SimpleNamespace(headers={}),
        )


# -- fake modules -------------------------------------------------------------------------


def _module(name: str, doc: str | None = None, **attributes: object) -> types.ModuleType:
    """A module ``name`` that holds ``attributes``."""
    module = types.ModuleType(name, doc)
    module.__dict__.update(attributes)
    return module


def _anthropic_module(providers: FakeProviders) -> types.ModuleType:
    class APIError(Exception):
        pass

    class APIStatusError(APIError):
        def __init__(self, message: str, *, response: Any, body: object = None) -> None:
            super().__init__(message)
            self.response = response
            self.status_code: int = response.status_code
            self.body = body

    class RateLimitError(APIStatusError):
        pass

    class _Raw:
        def __init__(self, message: Any, headers: dict[str, str]) -> None:
            self.headers = headers
            self.status_code = 200
            self._message = message

        def parse(self) -> Any:
            return self._message

    class _RawMessages:
        async def create(self, **kwargs: Any) -> _Raw:
            return _Raw(*providers.anthropic_message(kwargs))

    class _Messages:
        with_raw_response = _RawMessages()

        async def create(self, **kwargs: Any) -> Any:
            message, _ = providers.anthropic_message(kwargs)
            return message

    class AsyncAnthropic:
        def __init__(self, **options: Any) -> None:
            self.options = options
            self.messages = _Messages()

    return _module(
        "anthropic",
        "A fake of the anthropic SDK for the documentation's examples.",
        APIError=APIError,
        APIStatusError=APIStatusError,
        RateLimitError=RateLimitError,
        AsyncAnthropic=AsyncAnthropic,
    )


def _genai_modules(providers: FakeProviders) -> dict[str, types.ModuleType]:
    class APIError(Exception):
        def __init__(self, code: int, response_json: Any, response: Any = None) -> None:
            self.code = code
            self.details = response_json
            self.response = response
            error = response_json.get("error", {}) if isinstance(response_json, dict) else {}
            self.status = error.get("status")
            self.message = error.get("message")
            super().__init__(f"{code} {self.status}. {response_json}")

    class ClientError(APIError):
        pass

    class ServerError(APIError):
        pass

    class GenerateContentConfig:
        def __init__(self, **fields: Any) -> None:
            self.__dict__.update(fields)

        def __getattr__(self, name: str) -> None:
            return None

    class _Models:
        async def generate_content(self, *, model: str, contents: Any, config: Any = None) -> Any:
            return providers.gemini_response(
                {"model": model, "contents": contents, "config": config}
            )

        async def count_tokens(self, *, model: str, contents: Any, config: Any = None) -> Any:
            return types.SimpleNamespace(total_tokens=_prompt_tokens(contents))

    class _Aio:
        def __init__(self) -> None:
            self.models = _Models()

    class Client:
        def __init__(self, **options: Any) -> None:
            self.options = options
            self.aio = _Aio()

    errors = _module(
        "google.genai.errors", APIError=APIError, ClientError=ClientError, ServerError=ServerError
    )
    gtypes = _module(
        "google.genai.types",
        GenerateContentConfig=GenerateContentConfig,
        HttpOptions=GenerateContentConfig,  # the same shape: fields given, None for others
    )
    genai = _module("google.genai", Client=Client, errors=errors, types=gtypes)
    return {"google.genai": genai, "google.genai.errors": errors, "google.genai.types": gtypes}


def install(monkeypatch: pytest.MonkeyPatch) -> FakeProviders:
    """Point the SDKs at the fakes for one test; ``monkeypatch`` undoes it afterwards."""
    providers = FakeProviders()
    monkeypatch.setattr(openai, "AsyncOpenAI", providers.openai_client)
    monkeypatch.setitem(sys.modules, "anthropic", _anthropic_module(providers))
    google = _google_namespace(monkeypatch)
    for name, module in _genai_modules(providers).items():
        monkeypatch.setitem(sys.modules, name, module)
    monkeypatch.setattr(google, "genai", sys.modules["google.genai"], raising=False)
    return providers


def _google_namespace(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """The ``google`` namespace package: the installed one, or an empty stand-in."""
    try:
        return importlib.import_module("google")
    except ImportError:
        google = types.ModuleType("google")
        google.__path__ = []
        monkeypatch.setitem(sys.modules, "google", google)
        return google
