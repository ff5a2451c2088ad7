"""Telling a limiter what a server answered, without ever breaking the caller's call.

Shared by the decorator (a 429 carried by an exception) and the transport (every
response): headers that do not parse, or a limiter that cannot take the report, become a
:class:`RateLimitHeaderWarning`, and a warning that the filters turn into an error is
dropped, so the caller's own result or exception is what they see.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from typing import TYPE_CHECKING

from ._headers import RateLimitHeaderWarning, ServerFeedback, parse_rate_limit_headers

if TYPE_CHECKING:
    from collections.abc import Iterable, Mapping

    from ._lease import Lease
    from ._limiter import Limiter

__all__ = ["report", "warn"]


def report(
    limiter: Limiter,
    headers: Mapping[str, str] | Iterable[tuple[str, str]] | ServerFeedback | None,
    status: int | None,
    what: str,
    *,
    stacklevel: int,
    retry_after: float | None = None,
    lease: Lease | None = None,
) -> None:
    """Fold ``headers`` (or what they say, read already: a :class:`ServerFeedback`) and
    ``status`` of the response ``what`` names into ``limiter``.

    ``retry_after`` is a delay the response gave elsewhere than in its headers (Gemini's
    ``RetryInfo`` in a 429 body): used when the headers give none. ``lease``: the one
    the response answers, if known (see :meth:`Lease.feedback`). Never raises.
    ``stacklevel`` counts from the caller of ``report``.
    """
    try:
        if isinstance(headers, ServerFeedback):  # read already
            info = headers
        else:
            info = parse_rate_limit_headers({} if headers is None else headers)
    except Exception as error:  # not headers, or a warning the filters made an error
        warn(f"ignored the rate-limit headers of {what}", error, stacklevel=stacklevel + 1)
        info = ServerFeedback(limits=(), retry_after=None)
    if retry_after is not None and info.retry_after is None:
        info = dataclasses.replace(info, retry_after=retry_after)
    try:
        if lease is None:
            limiter.feedback(info, status=status)
        else:
            lease.feedback(info, status=status)
    except Exception as error:
        warn(f"could not report {what} to the limiter", error, stacklevel=stacklevel + 1)


def warn(what: str, error: Exception, *, stacklevel: int) -> None:
    """Warn that ``what`` happened because of ``error``; ``stacklevel`` counts from the
    caller of ``warn``."""
    with contextlib.suppress(RateLimitHeaderWarning):  # the caller's result or error wins
        warnings.warn(
            f"{what}: {type(error).__name__}: {error}",
            RateLimitHeaderWarning,
            stacklevel=stacklevel + 1,
        )
