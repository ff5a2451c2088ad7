"""Token usage as the LLM providers report it, read from objects and from JSON alike.

One reader for the ``usage`` of an OpenAI chat completion (``prompt_tokens``,
``completion_tokens``, ``total_tokens``), of the OpenAI Responses API and Anthropic
(``input_tokens``, ``output_tokens``) and of Gemini's ``usageMetadata``
(``promptTokenCount``, ``candidatesTokenCount``, ``thoughtsTokenCount``,
``totalTokenCount``). The decorator reads SDK objects (attributes), the transport reads
parsed JSON (keys): both go through :func:`read_usage` with their own getter.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping
from typing import Final

__all__ = ["Getter", "item", "read_usage"]

Getter = Callable[[object, str], object]


def item(value: object, key: str) -> object:
    """``value[key]`` for a JSON object, else ``None``."""
    if type(value) is dict:  # what JSON parses to: no ABC check
        return value.get(key)
    return value.get(key) if isinstance(value, Mapping) else None


def _count(value: object) -> float | None:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else None


# The keys of each provider's usage: what the prompt took, what was produced, and both.
_FAMILIES: Final = (
    ("prompt_tokens", "completion_tokens", "total_tokens"),  # OpenAI chat
    ("input_tokens", "output_tokens", "total_tokens"),  # Responses API, Anthropic
    ("promptTokenCount", "candidatesTokenCount", "totalTokenCount"),  # Gemini
)


def read_usage(usage: object, get: Getter) -> dict[str, float]:
    """What ``usage`` says, as ``input_tokens``, ``output_tokens`` and ``tokens``.

    Only what is reported is returned (an Anthropic ``message_start`` event reports input
    tokens before the output is known); an empty dict when nothing is.
    """
    if usage is None:
        return {}
    # A JSON object's own get (for the JSON getter), else the getter's.
    value = usage.get if get is item and type(usage) is dict else functools.partial(get, usage)
    found: dict[str, float] = {}
    for given, produced, whole in _FAMILIES:
        prompt = value(given)
        prompt = float(prompt) if type(prompt) is int else _count(prompt)  # (ints: no call)
        completion = value(produced)
        completion = float(completion) if type(completion) is int else _count(completion)
        if prompt is None and completion is None:
            continue
        if prompt is not None:
            # Anthropic's input_tokens leave out what the call wrote to its prompt cache,
            # which counts toward its input-tokens-per-minute limit (cache reads do not).
            written = value("cache_creation_input_tokens")
            found["input_tokens"] = prompt + (_count(written) or 0.0)
        if completion is not None:
            thoughts = value("thoughtsTokenCount")  # Gemini's reasoning
            found["output_tokens"] = completion + (_count(thoughts) or 0.0)
        total = value(whole)
        total = float(total) if type(total) is int else _count(total)
        if total is not None:
            found["tokens"] = total
        elif prompt is not None and completion is not None:
            found["tokens"] = found["input_tokens"] + found["output_tokens"]
        break
    return found
