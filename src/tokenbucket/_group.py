"""BucketGroup: limiters by name (per model, per user, per API key)."""

from __future__ import annotations

import os
import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any, Final, cast

from ._adaptive import Adaptive, adaptive
from ._config import UNITS, split_key, to_rate
from ._core import Meter
from ._errors import ArgumentTypeError, InvalidArgumentError, UnknownNameError
from ._limiter import Limiter
from ._rate import Rate

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Mapping

    from ._backend import Backend
    from ._events import LimiterEvent
    from ._lease import BlockingLeaseContext, LeaseContext

__all__ = ["BucketGroup"]

_SWEEP_MIN: Final = 1024
# Every _TIDY_EVERY lookups of a default-made limiter, the oldest ones are looked at:
# those at rest are forgotten, until _TIDY_BUSY busy ones have been passed over.
_TIDY_EVERY: Final = 64
_TIDY_BUSY: Final = 4
_LIMITER_KEYS: Final = ("max_concurrency", "allow_debt")


class BucketGroup:
    """Named limiters: one per model, or per user or API key.

    >>> import tokenbucket as tb
    >>> limits = tb.BucketGroup.from_dict({
    ...     "gpt-4o": {"requests_per_minute": 5000, "tokens_per_minute": 800_000,
    ...                "max_concurrency": 64},
    ...     "claude-sonnet": {"requests_per_minute": 50,
    ...                       "input_tokens_per_minute": 40_000,
    ...                       "output_tokens_per_minute": 8_000},
    ... })
    >>> sorted(limits.names())
    ['claude-sonnet', 'gpt-4o']

    ``async with limits.acquire("gpt-4o", tokens=n) as lease:`` takes every limit of
    that name at once (see :meth:`Limiter.acquire`).

    Names that are not configured get their own limiter built from ``default`` on first
    use, or raise :class:`KeyError` listing the known names when there is no default.
    Limiters made from the default are forgotten once they are at rest (nobody waiting,
    nothing in flight, every meter back to full), which is exactly when a new one would
    behave the same, so a group used per user or per key keeps memory in proportion to
    the keys active within the longest period, not to every key ever seen, after a peak
    too: the oldest are looked at as the group is used. A forgotten limiter that some
    code still holds is the one a later lookup of its name returns, so a name never has
    two. ``len(group)``, ``in`` and iteration count the limiters in use.

    A *shared* limit is one meter used by several names (say one organisation-wide
    token pool over several models); it is taken atomically with each name's own limits.
    """

    __slots__ = (
        "_backend",
        "_default",
        "_dynamic",
        "_fixed",
        "_key",
        "_listeners",
        "_lock",
        "_lookups",
        "_made",
        "_resting",
        "_shared",
        "_sweep_at",
    )

    def __init__(
        self,
        limiters: Mapping[str, Limiter] | None = None,
        *,
        default: Mapping[str, Any] | None = None,
        backend: Backend | None = None,
        key: str | None = None,
    ) -> None:
        """``backend``/``key``: keep the state of limiters made from the default (and
        those :meth:`from_dict` makes) in Redis, under ``key``."""
        if (backend is None) != (key is None):
            raise InvalidArgumentError("key", "pass backend= and key= together")
        self._backend = backend
        self._key = key
        self._fixed: dict[str, Limiter] = {}
        for name, limiter in (limiters or {}).items():
            if not isinstance(limiter, Limiter):
                raise ArgumentTypeError(
                    "limiters",
                    f"limiters[{name!r}] must be a Limiter, not {type(limiter).__name__}",
                )
            self._fixed[_check_name(name)] = limiter
            if limiter._name is None:  # a member is known by its name everywhere
                limiter._name = name
        self._default: dict[str, Any] | None = None
        if default is not None:
            _limiter_from_config(default, "default")  # validate now, not on first use
            self._default = dict(default)
        self._dynamic: dict[str, Limiter] = {}
        self._shared: dict[str, list[Meter]] = {}
        self._sweep_at = _SWEEP_MIN
        self._lookups = 0
        # Forgotten limiters someone may still hold: looked up again, they come back
        # rather than a second limiter being made for the same name.
        self._resting: weakref.WeakValueDictionary[str, Limiter] = weakref.WeakValueDictionary()
        # Held to make, forget or bring back a limiter: two threads asking for a new name
        # at once get the same one.
        self._lock = threading.RLock()
        self._listeners: list[Callable[[LimiterEvent], object]] = []  # see subscribe
        self._made: list[Callable[[str, Limiter], object]] = []  # see _on_member

    @classmethod
    def from_dict(
        cls,
        config: Mapping[str, Mapping[str, Any]],
        *,
        default: Mapping[str, Any] | None = None,
        shared: Mapping[str, Mapping[str, Any]] | None = None,
        backend: Backend | None = None,
        key: str | None = None,
    ) -> BucketGroup:
        """Build a group from plain data (as read from JSON, YAML or TOML).

        ``config`` maps each name to its limits: keys ``<dimension>_per_<unit>`` (unit:
        second, minute, hour, day) with a number, or a table ``{limit = N, burst = B}``
        to opt in to a burst; and optionally ``max_concurrency`` and ``allow_debt``.
        ``default`` is the same for names not listed. ``shared`` maps a label to limits
        plus ``members``, the names that share them::

            shared={"org": {"tokens_per_minute": 2_000_000, "members": ["gpt-4o", "o3"]}}

        Raises:
            InvalidArgumentError, ArgumentTypeError: an unknown key or a bad value,
                naming where it is.
        """
        if not _is_mapping(config):
            raise ArgumentTypeError("config", "config must map names to their limits")
        limiters = {
            _check_name(name): _limiter_from_config(
                entry, name, name=name, backend=backend, key=_member_key(key, name)
            )
            for name, entry in config.items()
        }
        group = cls(limiters, default=default, backend=backend, key=key)
        for label, entry in (shared or {}).items():
            if not _is_mapping(entry):
                raise ArgumentTypeError(label, f"shared[{label!r}] must be a table of limits")
            members = entry.get("members")
            if (
                not isinstance(members, (list, tuple))
                or not members
                or not all(isinstance(m, str) for m in members)
            ):
                raise InvalidArgumentError(
                    label, f"shared[{label!r}] needs 'members': a list of the names sharing it"
                )
            unknown = [m for m in members if m not in limiters]
            if unknown:
                raise InvalidArgumentError(
                    label, f"shared[{label!r}] names {unknown}, which are not configured"
                )
            rates = {k: v for k, v in entry.items() if k != "members"}
            group.share(label, members, **rates)
        return group

    @classmethod
    def from_toml(
        cls,
        path: str | os.PathLike[str],
        *,
        backend: Backend | None = None,
        key: str | None = None,
    ) -> BucketGroup:
        """Build a group from a TOML file.

        ``[limits."gpt-4o"]`` tables per name, an optional ``[default]`` table and
        ``[shared.<label>]`` tables, with the keys of :meth:`from_dict`::

            [limits."gpt-4o"]
            requests_per_minute = 5000
            tokens_per_minute = 800_000
            max_concurrency = 64

            [shared.org]
            tokens_per_minute = 2_000_000
            members = ["gpt-4o"]
        """
        if sys.version_info >= (3, 11):
            import tomllib
        else:  # pragma: no cover - Python 3.10
            import tomli as tomllib
        with open(path, "rb") as file:
            data = tomllib.load(file)
        unknown = sorted(set(data) - {"limits", "default", "shared"})
        if unknown:
            raise InvalidArgumentError(
                "path",
                f"{os.fspath(path)}: unknown tables {unknown}; expected limits, default, shared",
            )
        return cls.from_dict(
            data.get("limits", {}),
            default=data.get("default"),
            shared=data.get("shared"),
            backend=backend,
            key=key,
        )

    def share(self, label: str, members: list[str] | tuple[str, ...], **rates: Any) -> None:
        """Add a limit shared by ``members`` (configured names): ``<dimension>_per_<unit>=N``.

        Each member then takes it atomically with its own limits; the dimension must be
        one the member has or is new to it.
        """
        if label in self._shared:
            raise InvalidArgumentError("label", f"a shared limit {label!r} already exists")
        meters: list[Meter] = []
        for key, value in rates.items():
            dim, unit = split_key(key)
            meters.append(Meter(dim, _config_rate(value, unit, f"shared[{label!r}].{key}")))
        if not meters:
            raise InvalidArgumentError(label, f"shared[{label!r}] has no rates")
        if len(set(members)) != len(members):
            raise InvalidArgumentError(label, f"shared[{label!r}] lists a member twice")
        for name in members:
            if name not in self._fixed:
                raise InvalidArgumentError(label, f"{name!r} is not a configured name")
            if self._fixed[name]._in_use():
                raise InvalidArgumentError(
                    label, f"{name!r} is already in use; share limits before using them"
                )
        pools = {meter: ("shared", label, str(i)) for i, meter in enumerate(meters)}
        for name in members:
            self._fixed[name]._adopt(meters, pools)
        self._shared[label] = meters

    def acquire(self, name: str, *, timeout: float | None = None, **amounts: float) -> LeaseContext:
        """``async with group.acquire("gpt-4o", tokens=n) as lease:``; see
        :meth:`Limiter.acquire`."""
        return self[name].acquire(timeout=timeout, **amounts)

    def acquire_blocking(
        self, name: str, *, timeout: float | None = None, **amounts: float
    ) -> BlockingLeaseContext:
        """``with group.acquire_blocking("gpt-4o", tokens=n) as lease:`` in a thread; see
        :meth:`Limiter.acquire_blocking`."""
        return self[name].acquire_blocking(timeout=timeout, **amounts)

    def __getitem__(self, name: str) -> Limiter:
        """The limiter of ``name`` (made from the default on first use)."""
        limiter = self._fixed.get(name)
        if limiter is not None:
            return limiter
        limiter = self._dynamic.get(name)
        if limiter is not None:
            self._lookups += 1
            if self._lookups >= _TIDY_EVERY:
                with self._lock:
                    self._tidy()
            return limiter
        if self._default is None:
            raise UnknownNameError(
                f"no limits for {name!r}; known names: {sorted(self._fixed)} "
                "(give the group a default to cover other names)"
            )
        _check_name(name)
        with self._lock:
            return self._make(name, self._default)

    def _make(self, name: str, default: Mapping[str, Any]) -> Limiter:
        """The limiter of a name not among the configured ones (under the lock)."""
        limiter = self._dynamic.get(name)
        if limiter is not None:  # another thread made it first
            return limiter
        limiter = self._resting.pop(name, None)
        if limiter is not None:  # forgotten, but still held somewhere: the same one
            self._dynamic[name] = limiter
            return limiter
        if len(self._dynamic) >= self._sweep_at:
            self._sweep()
        else:
            self._tidy()
        limiter = _limiter_from_config(
            default,
            "default",
            name=name,
            backend=self._backend,
            key=_member_key(self._key, name),
        )
        for listener in self._listeners:
            limiter.subscribe(listener)
        for made in self._made:
            made(name, limiter)
        self._dynamic[name] = limiter
        return limiter

    def reset(self, name: str) -> None:
        """Forget what the limiter of ``name`` granted: :meth:`Limiter.reset`. A name
        with no limiter in use (none made from the default yet, or one forgotten) has
        nothing to forget.

        Raises:
            UnknownNameError: ``name`` is not configured and the group has no default.
        """
        limiter = self._fixed.get(name)
        if limiter is None:
            with self._lock:
                limiter = self._dynamic.get(name) or self._resting.get(name)
            if limiter is None:
                if self._default is None:
                    raise UnknownNameError(
                        f"no limits for {name!r}; known names: {sorted(self._fixed)}"
                    )
                return
        limiter.reset()

    def subscribe(self, listener: Callable[[LimiterEvent], object]) -> Callable[[], None]:
        """:meth:`Limiter.subscribe` on every limiter of the group: those configured,
        those made from the default so far and those made later (an event's ``limiter``
        is the member's name). Returns a function that unsubscribes it from all."""
        if not callable(listener):
            raise ArgumentTypeError(
                "listener", f"listener must be callable, not {type(listener).__name__}"
            )
        with self._lock:
            self._listeners.append(listener)
            for _, member in self._members():
                member.subscribe(listener)

        def unsubscribe() -> None:
            with self._lock:
                if listener in self._listeners:
                    self._listeners.remove(listener)
                    for _, member in self._members():
                        member._unsubscribe(listener)

        return unsubscribe

    def _members(self) -> list[tuple[str, Limiter]]:
        """Every limiter of the group that may be used, with its name in the group."""
        with self._lock:
            return [*self._fixed.items(), *self._dynamic.items(), *self._resting.items()]

    def _on_member(self, made: Callable[[str, Limiter], object], *, remove: bool = False) -> None:
        """Call ``made(name, limiter)`` for each limiter made from the default from now on
        (under the group's lock); or stop."""
        with self._lock:
            if not remove:
                self._made.append(made)
            elif made in self._made:
                self._made.remove(made)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is configured or has a live limiter made from the default."""
        if name in self._fixed:
            return True
        limiter = self._dynamic.get(name)  # type: ignore[call-overload]
        return limiter is not None and not limiter._at_rest()

    def __len__(self) -> int:
        """Limiters held: the configured ones, and those made from the default that are
        in use (idle ones are forgotten as the group is used, oldest first)."""
        with self._lock:
            self._tidy()
            return len(self._fixed) + len(self._dynamic)

    def __iter__(self) -> Iterator[str]:
        """The configured names, then those of limiters made from the default in use."""
        with self._lock:
            self._tidy()
            dynamic = list(self._dynamic)
        yield from self._fixed
        yield from dynamic

    def names(self) -> list[str]:
        """The configured names (not those made from the default)."""
        return list(self._fixed)

    def _sweep(self) -> None:
        """Forget every limiter made from the default that is at rest."""
        kept: dict[str, Limiter] = {}
        for name, limiter in self._dynamic.items():
            if limiter._at_rest():
                self._resting[name] = limiter
            else:
                kept[name] = limiter
        self._dynamic = kept
        self._sweep_at = max(_SWEEP_MIN, 2 * len(self._dynamic))
        self._lookups = 0

    def _tidy(self) -> None:
        """Forget the oldest limiters made from the default while they are at rest;
        move the busy ones to the back. Each limiter is forgotten once, so this costs
        O(1) per lookup amortised, and memory follows the keys in use after a peak too."""
        self._lookups = 0
        dynamic = self._dynamic
        busy = 0
        for _ in range(len(dynamic)):
            name = next(iter(dynamic))
            limiter = dynamic.pop(name)
            if limiter._at_rest():
                self._resting[name] = limiter
            else:
                dynamic[name] = limiter
                busy += 1
                if busy >= _TIDY_BUSY:
                    return

    def __repr__(self) -> str:
        default = ", default" if self._default is not None else ""
        return f"<BucketGroup {sorted(self._fixed)}{default} held={len(self)}>"


def _is_mapping(value: object) -> bool:
    return hasattr(value, "items") and hasattr(value, "get")


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name:
        raise ArgumentTypeError("name", f"names must be non-empty strings, got {name!r}")
    return name


def _config_rate(value: object, unit: str, where: str) -> Rate:
    if _is_mapping(value):
        table: Mapping[str, Any] = value  # type: ignore[assignment]
        unknown = sorted(set(table) - {"limit", "burst"})
        if unknown or "limit" not in table:
            raise InvalidArgumentError(
                where, f"{where}: expected a number or a table {{limit = N, burst = B}}"
            )
        try:
            return Rate(table["limit"], UNITS[unit], burst=table.get("burst"))
        except (InvalidArgumentError, ArgumentTypeError) as exc:
            raise type(exc)(where, f"{where}: {exc}") from None
    if isinstance(value, (Rate, str)):
        try:
            rate = to_rate(value, where)
        except InvalidArgumentError as exc:
            raise InvalidArgumentError(where, f"{where}: {exc}") from None
        if rate.period != UNITS[unit]:
            raise InvalidArgumentError(where, f"{where}: the rate's period is not one {unit}")
        return rate
    try:
        return Rate(value, UNITS[unit])  # type: ignore[arg-type]
    except (InvalidArgumentError, ArgumentTypeError) as exc:
        raise type(exc)(where, f"{where}: {exc}") from None


def _member_key(key: str | None, name: str) -> str | None:
    # One hash tag (the group's key) for every member, so shared limits work on a cluster:
    # the key's parts, kept apart (a backend names each part on its own).
    parts = None if key is None else (key, name)
    return cast("str | None", parts)


def _adaptive_from_config(value: object, where: str) -> Adaptive:
    """``max_concurrency = "adaptive"``, or ``{ adaptive = { initial = 16, ... } }``
    (the keywords of :func:`adaptive`)."""
    if value == "adaptive":
        return adaptive()
    table: Mapping[str, Any] = value  # type: ignore[assignment]
    inner = table.get("adaptive")
    if set(table) != {"adaptive"} or not (inner is True or _is_mapping(inner)):
        raise InvalidArgumentError(
            where,
            f'{where} must be a number, "adaptive" or {{ adaptive = {{ initial = 16, '
            f"min = 1, max = 512 }} }}, not {value!r}",
        )
    keywords: Mapping[str, Any] = {} if inner is True else inner  # type: ignore[assignment]
    try:
        return adaptive(**keywords)
    except (InvalidArgumentError, ArgumentTypeError) as exc:
        raise type(exc)(exc.argument, f"{where}.adaptive: {exc}") from None


def _limiter_from_config(
    entry: object,
    where: str,
    *,
    name: str | None = None,
    backend: Backend | None = None,
    key: str | None = None,
) -> Limiter:
    if not _is_mapping(entry):
        raise ArgumentTypeError(where, f"the limits of {where!r} must be a table")
    table: Mapping[str, Any] = entry  # type: ignore[assignment]
    limits: dict[str, list[Rate]] = {}
    options: dict[str, Any] = {}
    for entry_key, value in table.items():
        if entry_key in _LIMITER_KEYS:
            if entry_key == "max_concurrency" and (value == "adaptive" or _is_mapping(value)):
                value = _adaptive_from_config(value, f"{where}.max_concurrency")
            options[entry_key] = value
            continue
        try:
            dim, unit = split_key(entry_key)
        except InvalidArgumentError:
            raise InvalidArgumentError(
                entry_key,
                f"{where}: unknown key {entry_key!r}; expected <dimension>_per_<unit> "
                "(second, minute, hour, day), max_concurrency or allow_debt",
            ) from None
        limits.setdefault(dim, []).append(_config_rate(value, unit, f"{where}.{entry_key}"))
    try:
        return Limiter(limits, name=name, backend=backend, key=key, **options)
    except (InvalidArgumentError, ArgumentTypeError) as exc:
        raise type(exc)(exc.argument, f"{where}: {exc}") from None
