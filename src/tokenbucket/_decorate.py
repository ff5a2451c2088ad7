"""Wrap an async client call in a limiter: cost from its arguments, usage from its result."""

from __future__ import annotations

import functools
import math
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, ParamSpec, TypeVar

from ._errors import ArgumentTypeError, InvalidArgumentError
from ._group import BucketGroup
from ._limiter import Limiter
from ._report import report, warn
from ._usage import read_usage

__all__ = ["chat_cost", "estimate_tokens", "rate_limited", "usage_of"]

P = ParamSpec("P")
R = TypeVar("R")

Cost = Callable[..., Mapping[str, float]]
Usage = Callable[[Any], Mapping[str, float] | None]

_MESSAGE_OVERHEAD = 4  # tokens a chat format adds around each message


def estimate_tokens(value: object) -> int:
    """A cheap, offline token estimate: about 4 characters per token.

    Accepts a string, a chat message (a mapping with ``content``), a list of them, or
    content parts (``{"type": "text", "text": ...}``); anything else counts 0. Real
    tokenizers differ by a few tens of percent; settle each lease with the real usage
    so estimates never accumulate. Plug in a better estimator (e.g. one built on
    ``tiktoken``) through :func:`chat_cost`.
    """
    if value is None:
        return 0
    if isinstance(value, str):
        return math.ceil(len(value) / 4)
    if type(value) is not list and isinstance(value, Mapping):  # (a list: no ABC check)
        if "content" in value:
            return _MESSAGE_OVERHEAD + estimate_tokens(value["content"])
        text = value.get("text")
        return estimate_tokens(text) if isinstance(text, str) else 0
    if isinstance(value, (list, tuple)):
        total = 0
        for item in value:
            # A message whose content is text, the usual item, counted here.
            content = item.get("content") if type(item) is dict else None
            if type(content) is str:
                total += _MESSAGE_OVERHEAD + math.ceil(len(content) / 4)
            else:
                total += estimate_tokens(item)
        return total
    return 0


def chat_cost(
    estimator: Callable[[object], float] = estimate_tokens, *, default_max_tokens: int = 1024
) -> Cost:
    """The cost of a chat-completion call, from its keyword arguments.

    Returns a function giving ``input_tokens`` (the estimate of ``messages`` and
    ``system``), ``output_tokens`` (``max_tokens`` or ``max_completion_tokens``, else
    ``default_max_tokens``) and ``tokens`` (their sum, which is how providers count a
    request against a tokens-per-minute limit before it runs).
    """

    def cost(*args: object, **kwargs: object) -> Mapping[str, float]:
        prompt = float(estimator(kwargs.get("messages"))) + float(estimator(kwargs.get("system")))
        out = kwargs.get("max_tokens") or kwargs.get("max_completion_tokens") or default_max_tokens
        output = float(out) if isinstance(out, (int, float)) else float(default_max_tokens)
        return {"tokens": prompt + output, "input_tokens": prompt, "output_tokens": output}

    return cost


def usage_of(result: object) -> Mapping[str, float] | None:
    """Read the token usage of an OpenAI or Anthropic response (``result.usage``).

    Returns ``tokens``, ``input_tokens`` and ``output_tokens``, or ``None`` when the
    result carries no usage.
    """
    found = read_usage(getattr(result, "usage", None), _attribute)
    return found if "input_tokens" in found and "output_tokens" in found else None


def _attribute(value: object, name: str) -> object:
    return getattr(value, name, None)


def rate_limited(
    limiter: Limiter | BucketGroup,
    *,
    cost: Cost | None = None,
    model: str | Callable[..., str] | None = None,
    usage: Usage | None = usage_of,
    timeout: float | None = None,
    retries: int = 0,
) -> Callable[[Callable[P, Awaitable[R]]], Callable[P, Coroutine[Any, Any, R]]]:
    """Limit every call of an async function.

    ::

        @tb.rate_limited(limits, cost=tb.chat_cost())
        async def chat(**kwargs):
            return await client.chat.completions.create(**kwargs)

    Each call acquires ``cost(*args, **kwargs)`` (amounts per dimension; those the
    limiter does not have are left out, so one cost function serves limiters of
    ``tokens`` and of ``input_tokens``/``output_tokens`` alike) in one await, runs the
    function inside the lease, and settles the lease with ``usage(result)`` when that
    returns something. With a :class:`BucketGroup`, ``model`` picks the limiter: a
    fixed name, a function of the call's arguments, or by default the call's ``model``
    keyword. An exception carrying an HTTP 429 response (as the ``openai``, ``anthropic``
    and ``httpx`` errors do) is reported to the limiter (``Retry-After`` and headers)
    before it propagates.

    With ``retries=N``, a call that raised such a 429 is made again, up to ``N`` more
    times: its lease ends (as for any exception), the 429 has paused the limiter, and the
    new call acquires its cost again, so it waits out the pause and its turn. When the
    retries are used up, the last 429 propagates. Other exceptions are never retried.
    Turn off the client's own retries when you use this (``max_retries=0``), or each of
    its retries happens inside one lease, unseen by the limiter.

    The function's own exception always propagates unchanged (the same object, with its
    traceback). Reporting it never replaces it: a response or headers that cannot be
    read give a :class:`RateLimitHeaderWarning` instead (a 429 whose headers cannot be
    read still pauses the limiter for one second), and under an ``"error"`` filter for
    that warning the warning is dropped rather than raised in its place.
    """
    if not isinstance(limiter, (Limiter, BucketGroup)):
        raise ArgumentTypeError(
            "limiter", f"limiter must be a Limiter or a BucketGroup, not {type(limiter).__name__}"
        )

    if isinstance(retries, bool) or not isinstance(retries, int):
        raise ArgumentTypeError("retries", f"retries must be an int, not {type(retries).__name__}")
    if retries < 0:
        raise InvalidArgumentError("retries", f"retries must be >= 0, not {retries}")

    def pick(args: tuple[object, ...], kwargs: Mapping[str, object]) -> Limiter:
        if isinstance(limiter, Limiter):
            return limiter
        if callable(model):
            return limiter[model(*args, **kwargs)]
        name = model if model is not None else kwargs.get("model")
        if not isinstance(name, str):
            raise ArgumentTypeError(
                "model", "pass model= to rate_limited, or call the function with model='...'"
            )
        return limiter[name]

    def decorate(function: Callable[P, Awaitable[R]]) -> Callable[P, Coroutine[Any, Any, R]]:
        @functools.wraps(function)
        async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            target = pick(args, kwargs)
            dims = target.dimensions
            amounts = {} if cost is None else dict(cost(*args, **kwargs))
            wanted = {k: v for k, v in amounts.items() if k in dims}
            attempt = 0
            while True:
                limited = False
                try:
                    async with target.acquire(timeout=timeout, **wanted) as lease:
                        try:
                            result = await function(*args, **kwargs)
                        except Exception as exc:
                            limited = _report_429(target, exc)
                            raise
                        actual = usage(result) if usage is not None else None
                        if actual:
                            known = {k: v for k, v in actual.items() if k in dims}
                            if known:
                                lease.settle(**known)
                        return result
                except Exception:
                    if not limited or attempt >= retries:
                        raise
                attempt += 1

        return wrapper

    return decorate


def _report_429(limiter: Limiter, exc: Exception) -> bool:
    """Report the HTTP 429 response ``exc`` carries, if any, to ``limiter``; never raise.

    Returns whether ``exc`` carried a 429 (reported, or warned about when its headers
    could not be read).

    Whatever goes wrong while reading the response or reporting it becomes a
    :class:`RateLimitHeaderWarning`, so that the caller's ``exc`` is what propagates.
    """
    what = type(exc).__name__
    try:
        response = getattr(exc, "response", None)
        status = getattr(response, "status_code", None) or getattr(exc, "status_code", None)
        if status != 429:
            return False
        headers = getattr(response, "headers", None)
    except Exception as error:
        warn(f"could not read the response of {what}", error, stacklevel=3)
        return False
    # stacklevel: report, _report_429, the wrapper, the caller
    report(limiter, headers, 429, f"{what} (HTTP 429)", stacklevel=3)
    return True
