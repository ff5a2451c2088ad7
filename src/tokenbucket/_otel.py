"""OpenTelemetry metrics of limiters and groups: :func:`instrument`.

Theory of operation
-------------------
Everything but the wait-time histogram is *observed*: at each collection, the metrics
reader's callbacks read every instrumented limiter's counters (``statistics().counters``
from its stores, which any thread may read without making the limiter shared) and its
gauges. Nothing is added to the path of a grant. The histogram records each grant that
waited, from the task or thread that waited, once it is granted (a grant made at once is
counted by ``tokenbucket.admitted`` and never waits). A group's limiters made later from
its default are instrumented as they are made.

Only ``opentelemetry-api`` is needed (the ``otel`` extra); without it, :func:`instrument`
raises ``ImportError`` and nothing else changes. Without an SDK configured, the API's
meters do nothing.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from typing import TYPE_CHECKING, Any

from ._errors import ArgumentTypeError
from ._events import log
from ._group import BucketGroup
from ._limiter import Limiter
from ._statistics import WAIT_BOUNDS

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from ._statistics import LimiterCounters

__all__ = ["Instrumentation", "instrument"]

_SCOPE = "tokenbucket"
_FRESH = 0.05  # seconds a reading serves every instrument of a collection

# Observed counters: name, unit, description, the value in a limiter's counters.
_COUNTERS: tuple[tuple[str, str, str, Callable[[LimiterCounters], float]], ...] = (
    ("tokenbucket.admitted", "{request}", "Requests granted", lambda c: c.admitted),
    ("tokenbucket.waited", "{request}", "Requests granted after a wait", lambda c: c.waited),
    ("tokenbucket.wait.time", "s", "Seconds granted requests waited", lambda c: c.wait_seconds),
    ("tokenbucket.timeouts", "{request}", "Requests that gave up at their timeout",
     lambda c: c.timeouts),
    ("tokenbucket.cancellations", "{request}", "Requests cancelled while waiting",
     lambda c: c.cancellations),
    ("tokenbucket.rejections", "{response}", "Responses that said 429", lambda c: c.rejections),
    ("tokenbucket.pauses", "{pause}", "Pauses a server (or the application) asked for",
     lambda c: c.pauses),
    ("tokenbucket.corrections", "{report}", "Server reports that lowered a limit",
     lambda c: c.corrections),
)  # fmt: skip

# Observed counters per dimension: name, description, the values by dimension.
_UNITS: tuple[tuple[str, str, Callable[[LimiterCounters], Any]], ...] = (
    ("tokenbucket.admitted.units", "Units granted (as reserved)", lambda c: c.admitted_units),
    ("tokenbucket.refunded.units", "Units settling gave back", lambda c: c.refunded),
    ("tokenbucket.debt.units", "Units settling charged on top", lambda c: c.debt),
)

# Observed gauges: name, unit, description, the value's index in Store.gauges().
_GAUGES: tuple[tuple[str, str, str, int], ...] = (
    ("tokenbucket.queue.length", "{request}", "Requests waiting", 0),
    ("tokenbucket.in_flight", "{request}", "Leases holding a concurrency slot", 1),
    ("tokenbucket.paused", "1", "1 while a server's pause holds, else 0", 2),
    ("tokenbucket.concurrency.limit", "{request}", "The cap on calls in flight", 3),
)


Reading = tuple[dict[str, str], "LimiterCounters", tuple[int, int, bool, int | None]]


class _Hub:
    """The instruments of one meter provider, and every :class:`Instrumentation` reported
    through them (a provider keeps the first instruments of a name: a second
    ``instrument()`` on it adds its target to these)."""

    def __init__(self, meter: Any) -> None:
        from opentelemetry.metrics import CallbackOptions, Observation

        self._lock = threading.Lock()  # never held while calling into a limiter or group
        self._handles: list[Instrumentation] = []
        self._stamp = -math.inf
        self._reading: list[Reading] = []
        self.histogram = meter.create_histogram(
            "tokenbucket.wait.duration",
            unit="s",
            description="How long granted requests waited (those that waited)",
            **_advice(list(WAIT_BOUNDS[1:-1])),
        )

        def counter(read: Callable[[LimiterCounters], float], first: bool) -> Callable[..., Any]:
            def observe(options: CallbackOptions) -> Iterator[Any]:
                for attributes, counters, _ in self._read(fresh=first):
                    yield Observation(read(counters), attributes)

            return observe

        def units(read: Callable[[LimiterCounters], Any]) -> Callable[..., Any]:
            def observe(options: CallbackOptions) -> Iterator[Any]:
                for attributes, counters, _ in self._read():
                    for dim, value in read(counters).items():
                        yield Observation(value, {**attributes, "tokenbucket.dimension": dim})

            return observe

        def gauge(index: int) -> Callable[..., Any]:
            def observe(options: CallbackOptions) -> Iterator[Any]:
                for attributes, _, gauges in self._read():
                    value = gauges[index]
                    if value is not None:  # (a limiter without a cap has none)
                        yield Observation(int(value), attributes)

            return observe

        for k, (metric, unit, description, read) in enumerate(_COUNTERS):
            meter.create_observable_counter(
                metric, callbacks=[counter(read, k == 0)], unit=unit, description=description
            )
        for metric, description, read_units in _UNITS:
            meter.create_observable_counter(
                metric, callbacks=[units(read_units)], unit="{unit}", description=description
            )
        for metric, unit, description, index in _GAUGES:
            meter.create_observable_gauge(
                metric, callbacks=[gauge(index)], unit=unit, description=description
            )

    def add(self, handle: Instrumentation) -> None:
        with self._lock:
            self._handles.append(handle)
            self._stamp = -math.inf

    def remove(self, handle: Instrumentation) -> None:
        with self._lock:
            if handle in self._handles:
                self._handles.remove(handle)
            self._stamp = -math.inf

    def _read(self, *, fresh: bool = False) -> list[Reading]:
        """Each reported limiter's attributes, counters and gauges, read once for all the
        instruments of one collection: read again by the first instrument's callback
        (``fresh``; the SDK calls them in order), or when older than _FRESH seconds."""
        with self._lock:
            now = time.monotonic()
            if not fresh and now - self._stamp <= _FRESH:
                return self._reading
            handles = list(self._handles)
        # (Outside the lock: reading a group takes its lock, under which it may make a
        # member and attach it to a handle.)
        reading = [entry for handle in handles for entry in handle.read()]
        with self._lock:
            self._reading, self._stamp = reading, now
        return reading


class Instrumentation:
    """What :func:`instrument` set up; :meth:`close` takes it down."""

    def __init__(self, target: Limiter | BucketGroup, name: str | None, hub: _Hub) -> None:
        self._target = target
        self._name = name
        self._hub = hub
        self._lock = threading.Lock()  # never held while calling into a limiter or group
        self._closed = False
        # The limiters whose waits it records, and how: not kept alive by it (a group
        # forgets the limiters at rest it made from its default).
        self._observed: weakref.WeakKeyDictionary[Limiter, Callable[[float, str | None], None]]
        self._observed = weakref.WeakKeyDictionary()
        if isinstance(target, BucketGroup):
            target._on_member(self._attach)
            for model, member in target._members():
                self._attach(model, member)
        else:
            self._attach(None, target)
        hub.add(self)

    def _attributes(self, model: str | None, limiter: Limiter) -> dict[str, str]:
        attributes: dict[str, str] = {}
        if model is not None:  # a group's
            if self._name is not None:
                attributes["tokenbucket.limiter"] = self._name
            attributes["tokenbucket.model"] = model
        else:
            name = self._name if self._name is not None else limiter.name
            if name is not None:
                attributes["tokenbucket.limiter"] = name
        return attributes

    def read(self) -> list[Reading]:
        """Each of its limiters' attributes, counters and gauges, now."""
        target = self._target
        members: list[tuple[str | None, Limiter]] = (
            [*target._members()] if isinstance(target, BucketGroup) else [(None, target)]
        )
        return [(self._attributes(model, m), m._counters(), m._gauges()) for model, m in members]

    def _attach(self, model: str | None, limiter: Limiter) -> None:
        """Record ``limiter``'s waits in the histogram (``model``: its name in a group)."""
        histogram = self._hub.histogram
        attributes = self._attributes(model, limiter)

        def observe(seconds: float, binding: str | None) -> None:
            try:
                histogram.record(
                    seconds,
                    attributes
                    if binding is None
                    else {**attributes, "tokenbucket.binding": binding},
                )
            except Exception:  # a metrics SDK's fault never reaches the caller
                log.exception("could not record a wait in OpenTelemetry")

        with self._lock:
            if self._closed or limiter in self._observed:
                return
            self._observed[limiter] = observe
        limiter._observe_waits(observe)

    def close(self) -> None:
        """Stop reporting its limiters; they are as before :func:`instrument` (the
        instruments stay registered with their provider, for the next one)."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            observed = list(self._observed.items())
            self._observed.clear()
        self._hub.remove(self)
        if isinstance(self._target, BucketGroup):
            self._target._on_member(self._attach, remove=True)
        for limiter, observe in observed:
            limiter._observe_waits(observe, remove=True)


_HUBS: weakref.WeakKeyDictionary[Any, _Hub] = weakref.WeakKeyDictionary()
_HUBS_LOCK = threading.Lock()


def _hub(provider: Any) -> _Hub:
    """The hub of ``provider``, made on first use."""
    from . import __version__

    with _HUBS_LOCK:
        hub = _HUBS.get(provider)
        if hub is None:
            hub = _HUBS[provider] = _Hub(provider.get_meter(_SCOPE, __version__))
        return hub


def instrument(
    limits: Limiter | BucketGroup,
    *,
    name: str | None = None,
    meter_provider: Any = None,
) -> Instrumentation:
    """Report ``limits`` (a :class:`Limiter` or a :class:`BucketGroup`) as OpenTelemetry
    metrics, through ``opentelemetry-api`` (``pip install 'tokenbucket-async[otel]'``).

    Observed at each collection, at no cost to the limiters between collections:
    ``tokenbucket.admitted``, ``tokenbucket.waited``, ``tokenbucket.wait.time``,
    ``tokenbucket.timeouts``, ``tokenbucket.cancellations``, ``tokenbucket.rejections``
    (429s), ``tokenbucket.pauses``, ``tokenbucket.corrections`` (counters);
    ``tokenbucket.admitted.units``, ``tokenbucket.refunded.units``,
    ``tokenbucket.debt.units`` (counters per ``tokenbucket.dimension``);
    ``tokenbucket.queue.length``, ``tokenbucket.in_flight``, ``tokenbucket.paused`` and,
    for a limiter with ``max_concurrency``, ``tokenbucket.concurrency.limit`` (the cap:
    an adaptive one's moves show there) (gauges). Recorded as it happens:
    ``tokenbucket.wait.duration``, a histogram (in seconds) of the waits of the grants
    that waited, with the limit that bound them as ``tokenbucket.binding``.

    Attributes: ``tokenbucket.limiter`` (``name``, else the limiter's name) and, for a
    group's limiters, ``tokenbucket.model`` (the member's name; ``tokenbucket.limiter``
    is then ``name``, if given). A group's limiters made later from its default are
    reported from when they are made.

    Args:
        limits: what to report.
        name: the ``tokenbucket.limiter`` attribute.
        meter_provider: an OpenTelemetry ``MeterProvider``; by default the global one.

    Several limiters and groups may be instrumented on one provider (each call adds
    its target). The instrumentation does not keep a limiter alive: a group's limiters
    made from its default are reported while the group keeps them, and one made again
    after the group forgot it starts its counters from 0.

    Returns:
        An :class:`Instrumentation`; its ``close()`` stops the reporting.

    Raises:
        ImportError: ``opentelemetry-api`` is not installed.
        ArgumentTypeError: ``limits`` is neither a ``Limiter`` nor a ``BucketGroup``.
    """
    try:
        from opentelemetry import metrics
    except ImportError as error:
        raise ImportError(
            "tb.instrument needs opentelemetry-api: pip install 'tokenbucket-async[otel]'"
        ) from error
    if not isinstance(limits, (Limiter, BucketGroup)):
        raise ArgumentTypeError(
            "limits", f"limits must be a Limiter or a BucketGroup, not {type(limits).__name__}"
        )
    if name is not None and not isinstance(name, str):
        raise ArgumentTypeError("name", f"name must be a str, not {type(name).__name__}")
    provider = metrics.get_meter_provider() if meter_provider is None else meter_provider
    return Instrumentation(limits, name, _hub(provider))


def _advice(boundaries: list[float]) -> dict[str, Any]:
    """The histogram's bucket boundaries, as advice to the SDK (API 1.23 and later)."""
    import inspect

    from opentelemetry.metrics import Meter

    if (
        "explicit_bucket_boundaries_advisory"
        in inspect.signature(Meter.create_histogram).parameters
    ):
        return {"explicit_bucket_boundaries_advisory": boundaries}
    return {}
