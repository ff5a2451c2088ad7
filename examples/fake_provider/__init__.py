"""A local, OpenAI-compatible chat server that enforces rate limits the way providers do.

It plays the provider in ``examples/llm_demo.py``: the ``openai`` SDK talks to it through
``AsyncOpenAI(base_url=server.base_url)``, and it answers with 200s, 429s and the rate-limit
headers OpenAI sends. It also speaks Anthropic's Messages API, with Anthropic's headers,
errors and stream events, on the same limits: ``AsyncAnthropic(base_url=server.url)``.
It deliberately does not use ``tokenbucket``: it is an independent implementation of the
provider's side, standard library only. ``provider`` is the pure
accounting (see its docstring), ``http`` the protocol, ``server`` runs it::

    with LLMServer(rpm=600, tpm=60_000, period=6.0, latency=(0.05, 0.2), seed=0) as server:
        client = AsyncOpenAI(base_url=server.base_url, api_key="local")
        ...
        print(server.stats())
"""

from .provider import (
    DEFAULT_MAX_TOKENS,
    Admitted,
    ChatRequest,
    Provider,
    Refused,
    ServerStats,
    estimate_prompt_tokens,
    format_duration,
    format_rfc3339,
)
from .server import LLMServer

__all__ = [
    "DEFAULT_MAX_TOKENS",
    "Admitted",
    "ChatRequest",
    "LLMServer",
    "Provider",
    "Refused",
    "ServerStats",
    "estimate_prompt_tokens",
    "format_duration",
    "format_rfc3339",
]
