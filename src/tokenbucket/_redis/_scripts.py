"""The Lua scripts: their sources, calling them by SHA, and what an outage does.

A script's source is its file under ``lua/`` after the preludes it uses: ``clock.lua``
(``now`` from ARGV[1], or the server's ``TIME``), ``log.lua`` (window logs) and
``give.lua`` (giving a reservation back). Each is
loaded once (``SCRIPT LOAD``) and called by SHA (``EVALSHA``); a server that lost it
(restarted, ``SCRIPT FLUSH``) answers NOSCRIPT and it is loaded again. Redis refusing a
script becomes :class:`BackendError`; Redis out of reach is retried or becomes
:class:`BackendUnavailableError`, as the backend's ``on_error`` says.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from importlib import resources
from typing import TYPE_CHECKING, Any, Final

from .._errors import BackendError, BackendUnavailableError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Mapping, Sequence

    import redis.asyncio as aioredis

    ScriptCall = Callable[[str, Sequence[str], Sequence[Any]], Awaitable[Any]]

__all__ = ["PRELUDES", "Scripts", "source", "with_policy"]

log = logging.getLogger("tokenbucket.redis")

# Each script, and the files that go before it (in this order).
PRELUDES: Final[Mapping[str, tuple[str, ...]]] = {
    "reserve": ("clock", "log", "give"),
    "cancel": ("clock", "log", "give"),
    "release": (),
    "adjust": ("clock", "log"),
    "feedback": ("clock", "log"),
}


@functools.cache
def _read(name: str) -> str:
    return (resources.files(__package__) / "lua" / f"{name}.lua").read_text(encoding="utf-8")


def source(name: str) -> str:
    """The text sent to Redis for the script ``name``: its preludes, then itself."""
    return "".join(_read(part) for part in (*PRELUDES[name], name))


class Scripts:
    """The scripts on one Redis: loaded on first use, called by SHA, and counted."""

    __slots__ = ("_sha", "client", "prefix", "round_trips")

    def __init__(self, client: aioredis.Redis, prefix: str) -> None:
        self.client = client
        self.prefix = prefix  # for messages
        self.round_trips = 0  # EVALSHA and SCRIPT LOAD calls made
        self._sha: dict[str, str] = {}

    async def call(self, name: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """EVALSHA ``name``, loading it on first use and again after NOSCRIPT."""
        from redis.exceptions import NoScriptError, ResponseError

        sha = self._sha.get(name)
        self.round_trips += 1
        try:
            if sha is None:
                raise NoScriptError("not loaded yet")
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except NoScriptError:
            sha = await self.client.script_load(source(name))
            self._sha[name] = sha
            self.round_trips += 1
            return await self.client.evalsha(sha, len(keys), *keys, *args)
        except ResponseError as exc:
            if "WRONGTYPE" in str(exc):
                raise BackendError(
                    f"a key under {self.prefix!r} holds a value of the wrong type ({exc}); "
                    "is another program using this prefix?"
                ) from exc
            raise BackendError(f"Redis refused the limiter's script: {exc}") from exc


async def with_policy(
    call: ScriptCall,
    name: str,
    keys: Sequence[str],
    args: Sequence[Any],
    *,
    on_error: str,
    max_backoff: float,
) -> Any:
    """``call(name, keys, args)`` under the failure policy: while Redis is out of reach,
    retry with exponential backoff (``"wait"``) or raise :class:`BackendUnavailableError`
    (``"raise"``, and ``"local"``: its caller limits locally)."""
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError

    delay = 0.05
    while True:
        try:
            return await call(name, keys, args)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # noqa: PERF203
            if on_error != "wait":
                raise BackendUnavailableError(f"Redis is unreachable: {exc}") from exc
            log.warning("Redis unreachable (%s); retrying in %.2f s", exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_backoff)
