"""Limits shared by many processes and hosts, with their state in Redis.

Theory of operation
-------------------
Every limit is a *meter* in Redis: a token bucket is a GCRA "theoretical arrival time"
(one string key), an exact sliding window is a sorted set of grants scored by their
instant. A request is *reserved* by one Lua script call (``reserve.lua``): the script
finds the earliest instant ``t`` at which every meter of the request admits it (never
before a reservation already made on those meters, so arrival at Redis defines the
order), charges all of them at ``t``, and returns ``t - now``; the caller sleeps exactly
that long, locally, and is admitted. Nobody polls. Time is the Redis server's ``TIME``
(or the client's clock, when configured), so hosts' clocks do not matter.

Requests of one process share round trips: while a script call is in flight, new
requests queue, and the next call carries all of them (one ``EVALSHA`` for the batch).
When the last reply showed that a limiter's next free instant is well in the future (its
limit is binding), new requests to it are held for a short while (``batch_delay``, at
most half the time left until that instant) before they are sent: they could not be
admitted earlier anyway, and requests arriving one by one at the admission rate then
share a round trip too.

A caller that leaves before its instant (cancelled, timed out) gives its reservation back
(``cancel.lua``) as far as it safely can. A concurrency cap holds slots as leases with an
expiry, so a crashed process cannot hold them forever; a released slot wakes one waiting
process through a list it blocks on (``BLPOP``), not by polling.

When Redis cannot be reached, the backend follows its ``on_error`` policy: ``"wait"``
(fail closed: retry with exponential backoff, logging each failure), ``"raise"``
(:class:`BackendUnavailableError`), or ``"local"`` (fail open: limit with an in-memory
limiter at ``local_share`` of the rates until Redis answers again).

The Redis backend runs on asyncio (redis-py's asyncio client); elsewhere (trio) the first
use raises :class:`BackendConfigurationError`. Its connections, queued requests and
background tasks belong to one loop: on another (successive ``asyncio.run()`` calls) they
are dropped and made anew, and ``asyncio.run`` closes the connections as it ends a loop.

Modules
-------
``_backend``  :class:`RedisBackend`: settings, key naming, one method per script call.
``_protocol`` the KEYS and ARGV of every script, written down once (pure).
``_scripts``  the scripts' sources (``lua/``, with the ``clock.lua`` and ``log.lua``
              preludes), EVALSHA with reload, and the failure policy.
``_batch``    reserve requests sharing calls: queued, held, one call per hash tag.
``_releases`` releases of slots and give-backs sharing calls: one in flight at a time.
``_tasks``    the background tasks ``aclose`` waits for.
``store``     :class:`RedisStore`, one limiter's side (``tokenbucket._backend.Store``).
"""

from __future__ import annotations

from .._errors import BackendConfigurationError, BackendError, BackendUnavailableError
from ._backend import RedisBackend, default_url
from ._protocol import MeterSpec, Reservation

__all__ = [
    "BackendConfigurationError",
    "BackendError",
    "BackendUnavailableError",
    "MeterSpec",
    "RedisBackend",
    "Reservation",
    "default_url",
]
