"""SlidingWindow: at most ``limit`` units in any window of ``window`` seconds."""

from __future__ import annotations

from typing import TYPE_CHECKING

from . import _validate
from ._core import WindowLog
from ._rate import Rate
from ._single import SingleLimiter

if TYPE_CHECKING:
    from ._backend import Backend

__all__ = ["SlidingWindow"]


class SlidingWindow(SingleLimiter):
    """An exact sliding window: at most ``limit`` units in any ``window`` seconds.

    Every grant is logged with its instant and leaves the window ``window`` seconds
    later, so the guarantee holds for every window ``[s, s + window)``, not only for
    fixed or estimated ones. Memory is proportional to the number of distinct grant
    instants inside the window.

    >>> import tokenbucket as tb
    >>> window = tb.SlidingWindow(limit=15, window=60)

    Args:
        limit: the most units granted in any window, and so the largest single
            ``acquire``.
        window: the window's length in seconds.

    A limiter may be created anywhere (at import time too) and is bound to the event
    loop that first uses it; it is not thread-safe.
    """

    __slots__ = ("_log",)

    _LIMIT_NAME = "window's limit"

    def __init__(
        self,
        limit: float,
        window: float,
        *,
        backend: Backend | None = None,
        key: str | None = None,
    ) -> None:
        size = _validate.real(limit, "limit")
        length = _validate.real(window, "window")
        self._log = WindowLog(size, length)
        super().__init__(self._log, Rate(size, length), backend, key)

    @property
    def limit(self) -> float:
        """The most units granted in any window."""
        return self._log.limit

    @property
    def window(self) -> float:
        """The window's length in seconds."""
        return self._log.window

    def __repr__(self) -> str:
        return self._repr(f"limit={self.limit:.6g} window={self.window:.6g}s")
