"""What the Lua scripts are sent and what they answer: KEYS and ARGV, written down once.

Pure: no I/O, no clock, no event loop. Each script's layout is a :class:`Layout` (the
same names as the KEYS/ARGV header comment at the top of its ``.lua`` file; a test
checks that they agree, and that each script reads ARGV with the strides given here).
The encoders build KEYS and ARGV in that order; :func:`encode_batch` joins the requests
of one reserve call, each shape and each key sent once.

ARGV is a flat list: a *head* of fixed fields, then *groups* repeated as many times as
a count field says (a group whose count field is in the group before it is nested in
it: the meters of each shape), then a *tail* of fixed fields. KEYS holds the fixed
keys a layout names and, at ``...``, the keys that ARGV's index fields point at (1-based,
as Lua counts; 0 means none).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, Final, Literal, NamedTuple

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = [
    "ADJUST",
    "CANCEL",
    "CHARGE",
    "FEEDBACK",
    "FORGET",
    "LAYOUTS",
    "NO_SLOT",
    "PAST_DEADLINE",
    "RECORD_TTL_MS",
    "RELEASE",
    "RESERVE",
    "RESERVED",
    "SERVER_TIME",
    "SLACK_MS",
    "STALE",
    "UPDATE",
    "WRONG_TYPE",
    "Group",
    "Layout",
    "MeterSpec",
    "Reply",
    "Reservation",
    "Shape",
    "call_key",
    "decode_replies",
    "encode_adjust",
    "encode_batch",
    "encode_charge",
    "encode_feedback",
    "encode_give_backs",
    "encode_release",
    "encode_update",
    "member",
    "undo",
    "wake_key",
]

SERVER_TIME: Final = ""  # the `now` argument that asks for the Redis server's TIME
SLACK_MS: Final = 1000  # keys outlive what they hold by this much
# The longest a reserve or settle call is remembered (so that sending it again charges
# nothing again, and undoing a reserve call works): the calls a backend retries or undoes
# are those whose reply was lost, sent again within this time.
RECORD_TTL_MS: Final = 60_000

# reserve.lua's statuses, per request.
PAST_DEADLINE: Final = 0  # nothing taken: the instant would pass the deadline
RESERVED: Final = 1
NO_SLOT: Final = 2  # nothing taken: ``wait`` is when the first lease expires
WRONG_TYPE: Final = 3  # nothing taken: a key holds something else
STALE: Final = 4  # nothing taken: the limiter's rates changed (see Shape.version)


@dataclass(frozen=True)
class Group:
    """Fields repeated once per unit (a request, a meter), ``count`` times."""

    unit: str
    count: str  # the field that says how many
    fields: tuple[str, ...]

    @property
    def stride(self) -> int:
        return len(self.fields)


@dataclass(frozen=True)
class Layout:
    """The KEYS and ARGV of one script (the names of its ``.lua`` header)."""

    keys: tuple[str, ...]  # fixed keys, and "..." where the indexed keys go
    head: tuple[str, ...]
    groups: tuple[Group, ...] = ()
    tail: tuple[str, ...] = ()
    indexes: tuple[str, ...] = ()  # fields that are 1-based indexes into KEYS


_METER: Final = ("kind", "key", "p1", "p2")  # every script's meter starts so

RESERVE: Final = Layout(
    keys=("call_key", "..."),
    head=("now", "slack", "record_ttl", "undo", "call", "shapes", "count"),
    groups=(
        Group(
            "shape",
            "shapes",
            ("meters", "pause", "slots", "slot_max", "lease_ttl", "rates", "version"),
        ),
        Group("meter", "meters", _METER),
        Group("request", "count", ("shape", "deadline", "amounts")),
    ),
    indexes=("pause", "slots", "rates", "key"),
)
CANCEL: Final = Layout(
    keys=("...",),
    head=("now", "wake_ttl", "count"),
    groups=(
        Group("reservation", "count", ("t", "meters", "slots", "wake", "lease")),
        Group("meter", "meters", (*_METER, "amount", "member")),
    ),
    indexes=("slots", "wake", "key"),
)
ADJUST: Final = Layout(
    keys=("call_key", "rates_key", "..."),
    head=("now", "slack", "record_ttl", "version", "meters"),
    groups=(Group("meter", "meters", (*_METER, "amount", "member", "new", "t")),),
    indexes=("key",),
)
FEEDBACK: Final = Layout(
    keys=("pause_key", "rates_key", "..."),
    head=("now", "slack", "version", "pause", "meters"),
    groups=(Group("meter", "meters", (*_METER, "remaining", "reset", "refill")),),
    indexes=("key",),
)
RELEASE: Final = Layout(
    keys=("slots_key", "wake_key"),
    head=("wake_ttl", "count"),
    groups=(Group("lease", "count", ("lease",)),),
)

CHARGE: Final = Layout(
    keys=("call_key", "rates_key", "..."),
    head=("now", "slack", "record_ttl", "call", "version", "meters", "grants"),
    groups=(
        Group("meter", "meters", (*_METER, "owed")),
        Group("grant", "grants", ("age", "amounts")),
    ),
    indexes=("key",),
)
FORGET: Final = Layout(keys=("...",), head=("count",))
UPDATE: Final = Layout(
    keys=("rates_key", "..."),
    head=("now", "slack", "version", "cap_field", "cap", "was", "wake", "wake_ttl", "meters"),
    groups=(Group("meter", "meters", (*_METER, "new_p1", "new_p2", "amount")),),
    indexes=("wake", "key"),
)

_UNDO: Final = RESERVE.head.index("undo")

LAYOUTS: Final = {
    "reserve": RESERVE,
    "cancel": CANCEL,
    "adjust": ADJUST,
    "feedback": FEEDBACK,
    "release": RELEASE,
    "charge": CHARGE,
    "forget": FORGET,
    "update": UPDATE,
}


@dataclass(frozen=True)
class MeterSpec:
    """One limit in Redis: ``kind`` ``"b"`` (bucket: ``p1`` rate, ``p2`` capacity) or
    ``"w"`` (window: ``p1`` limit, ``p2`` seconds)."""

    kind: Literal["b", "w"]
    key: str
    p1: float
    p2: float


@dataclass(frozen=True, eq=False)
class Shape:
    """What every request of one limiter sends alike: its meters, the key of its pause,
    its concurrency slots (``slots_key`` ``""``: none), and its rates hash with the
    version its parameters come from (``rates_key`` ``""``: none; see update.lua). A
    reserve call sends each shape once; its requests name it (compared by identity: make
    one per limiter)."""

    meters: tuple[MeterSpec, ...]
    pause_key: str = ""
    slots_key: str = ""
    slot_max: int = 0
    rates_key: str = ""
    version: str = ""

    @cached_property
    def tag(self) -> str:
        """The hash tag every key of the shape is under (``"{prefix:name"``)."""
        key = self.pause_key or self.slots_key or self.meters[0].key
        return key.partition("}")[0]


class Reservation(NamedTuple):
    """What a caller holds after ``reserve``: enough to give it back or settle it."""

    meters: tuple[MeterSpec, ...]
    amounts: tuple[float, ...]
    member: str  # the reservation's id: its window entries, its bucket's latest, its lease
    at: float  # the instant reserved, on the backend's clock
    lease: str  # concurrency lease id, or ""
    slots_key: str
    rates_key: str  # the limiter's rates hash, and the version its parameters come from
    version: str

    @property
    def tag(self) -> str:
        """The hash tag its keys are under (``""``: it holds nothing in Redis)."""
        key = self.meters[0].key if self.meters else self.slots_key
        return key.partition("}")[0]


class Reply(NamedTuple):
    """reserve.lua's answer to one request."""

    status: int  # RESERVED, PAST_DEADLINE, NO_SLOT, WRONG_TYPE or STALE
    wait: float  # seconds from ``now`` to the instant (0 for WRONG_TYPE)
    now: float  # the backend's clock when the script ran (0 for WRONG_TYPE)
    key: str = ""  # WRONG_TYPE: the key that holds something else


# -- reserve.lua ----------------------------------------------------------------------------


class _Keys(list[str]):
    """The KEYS of a call being encoded: each key once, named by its index from 1."""

    def __init__(self, *fixed: str) -> None:
        super().__init__(fixed)
        self._index = {key: i for i, key in enumerate(fixed, start=1)}

    def at(self, key: str) -> int:
        """``key``'s index, added at the end the first time."""
        found = self._index.get(key)
        if found is None:
            self.append(key)
            found = self._index[key] = len(self)
        return found


def call_key(tag: str, call: str) -> str:
    """The key that records the reserve or settle call ``call`` (an id unique to the
    call) whose keys are under the hash tag ``tag`` (:attr:`Shape.tag`)."""
    return f"{tag}}}:call:{call}"


def member(call: str, index: int) -> str:
    """The id reserve.lua gives the ``index``-th request (from 0) of the call ``call``."""
    return f"{call}.{index + 1}"


def encode_batch(
    now: str,
    call: str,
    requests: Sequence[tuple[Shape, Sequence[float], float | None]],
    lease_ttl: float,
) -> tuple[list[str], list[Any]]:
    """The KEYS and ARGV of the reserve call ``call`` (an id unique to it) for
    ``requests``: ``(shape, amounts, left)``, with ``left`` the seconds until the
    request's deadline (``None``: none). ``now`` is ``SERVER_TIME`` or the client's
    clock. Each shape and each key is sent once. The same KEYS and ARGV sent again are
    the same call: it is charged once."""
    keys = _Keys(call_key(requests[0][0].tag, call))
    at = keys.at
    numbers: dict[int, int] = {}  # id(shape) -> its number, from 1
    shaped: list[Any] = []
    asked: list[Any] = []
    for shape, amounts, left in requests:
        number = numbers.get(id(shape))
        if number is None:
            number = numbers[id(shape)] = len(numbers) + 1
            shaped += [
                len(shape.meters),
                at(shape.pause_key) if shape.pause_key else 0,
                at(shape.slots_key) if shape.slots_key else 0,
                shape.slot_max,
                lease_ttl,
                at(shape.rates_key) if shape.rates_key else 0,
                shape.version,
            ]
            for meter in shape.meters:
                shaped += [meter.kind, at(meter.key), repr(meter.p1), repr(meter.p2)]
        text = repr(amounts[0]) if len(amounts) == 1 else " ".join(map(repr, amounts))
        asked += [number, -1 if left is None else left, text]
    head = [now, SLACK_MS, RECORD_TTL_MS, 0, call, len(numbers), len(requests)]
    return keys, [*head, *shaped, *asked]


def undo(args: Sequence[Any]) -> list[Any]:
    """The ARGV that undoes the reserve call ``args`` (its KEYS stay the same): what it
    reserved is given back, or, if it has not run, it never will."""
    undone = list(args)
    undone[_UNDO] = 1
    return undone


def decode_replies(reply: str | bytes, keys: Sequence[str]) -> list[Reply]:
    """reserve.lua's answers to the call whose KEYS are ``keys``, one per request, in
    order."""
    parts = reply.split()
    now = float(parts[0])
    decoded: list[Reply] = []
    for i in range(1, len(parts), 2):
        status = int(parts[i])
        if status == WRONG_TYPE:
            decoded.append(Reply(status, 0.0, 0.0, keys[int(parts[i + 1]) - 1]))
        else:
            decoded.append(Reply(status, float(parts[i + 1]), now))
    return decoded


# -- cancel.lua, adjust.lua, feedback.lua, release.lua ------------------------------------------


def encode_give_backs(
    now: str, reservations: Sequence[Reservation], lease_ttl: float
) -> tuple[list[str], list[Any]]:
    """cancel.lua's KEYS and ARGV: give ``reservations`` back (their keys all under one
    hash tag), and wake a waiting process per lease removed. Each key is sent once. The
    same KEYS and ARGV sent again give nothing back twice."""
    keys = _Keys()
    at = keys.at
    args: list[Any] = [now, int(lease_ttl * 1000), len(reservations)]
    for reservation in reservations:
        lease = reservation.lease
        args += [repr(reservation.at), len(reservation.meters)]
        if lease:
            args += [at(reservation.slots_key), at(wake_key(reservation.slots_key)), lease]
        else:
            args += [0, 0, ""]
        for meter, amount in zip(reservation.meters, reservation.amounts, strict=True):
            args += [meter.kind, at(meter.key), repr(meter.p1), repr(meter.p2), repr(amount)]
            args.append(reservation.member)
    return keys, args


def encode_adjust(
    now: str, call: str, reservation: Reservation, new_amounts: Sequence[float]
) -> tuple[list[str], list[Any]]:
    """adjust.lua's KEYS and ARGV: ``reservation`` (with at least one meter) takes
    ``new_amounts`` instead, in the call ``call`` (an id unique to the call). The same
    KEYS and ARGV sent again are the same call: it settles once."""
    keys: list[str] = [call_key(reservation.tag, call), reservation.rates_key]
    args: list[Any] = [now, SLACK_MS, RECORD_TTL_MS, reservation.version, len(reservation.meters)]
    for meter, old, new in zip(reservation.meters, reservation.amounts, new_amounts, strict=True):
        keys.append(meter.key)
        args += [meter.kind, len(keys), repr(meter.p1), repr(meter.p2), repr(old)]
        args += [reservation.member, repr(new), repr(reservation.at)]
    return keys, args


def encode_charge(
    now: str,
    call: str,
    meters: Sequence[MeterSpec],
    owed: Sequence[float],
    grants: Sequence[tuple[float, Sequence[float]]],
    rates: tuple[str, str],
) -> tuple[list[str], list[Any]]:
    """charge.lua's KEYS and ARGV, for the call ``call`` (an id unique to it): each bucket
    of ``meters`` is charged what it is ``owed``, each window the ``grants``
    ``(seconds ago, amount per meter)`` still inside it; ``rates``: the limiter's rates
    hash and the version the parameters come from. The same KEYS and ARGV sent again
    are the same call: it charges once."""
    keys: list[str] = [call_key(meters[0].key.partition("}")[0], call), rates[0]]
    args: list[Any] = [now, SLACK_MS, RECORD_TTL_MS, call, rates[1], len(meters), len(grants)]
    for meter, debt in zip(meters, owed, strict=True):
        keys.append(meter.key)
        args += [meter.kind, len(keys), repr(meter.p1), repr(meter.p2), repr(debt)]
    for age, amounts in grants:
        args += [repr(age), " ".join(map(repr, amounts))]
    return keys, args


def encode_feedback(
    now: str,
    pause_key: str,
    pause: float | None,
    clamps: Sequence[tuple[MeterSpec, float, float, float | None]],
    rates: tuple[str, str],
) -> tuple[list[str], list[Any]]:
    """feedback.lua's KEYS and ARGV: pause ``pause`` seconds (``None``: no pause) and
    lower each meter to ``(remaining, reset, refill)`` (``refill``: the rate at which
    the server's capacity comes back, or ``None``); ``rates``: the limiter's rates hash
    and the version the parameters come from."""
    keys: list[str] = [pause_key, rates[0]]
    args: list[Any] = [now, SLACK_MS, rates[1], -1 if pause is None else pause, len(clamps)]
    for meter, remaining, reset, refill in clamps:
        keys.append(meter.key)
        args += [meter.kind, len(keys), repr(meter.p1), repr(meter.p2)]
        args += [repr(remaining), repr(reset), 0 if refill is None else repr(refill)]
    return keys, args


def encode_release(
    slots_key: str, leases: Sequence[str], lease_ttl: float
) -> tuple[list[str], list[Any]]:
    """release.lua's KEYS and ARGV: free the slots of ``leases`` (all held on
    ``slots_key``) and wake as many waiters."""
    return [slots_key, wake_key(slots_key)], [int(lease_ttl * 1000), len(leases), *leases]


def encode_update(
    now: str,
    version: str,
    rates_key: str,
    changes: Sequence[tuple[MeterSpec, MeterSpec, float]],
    cap: tuple[str, int, int] | None,
    slots_key: str,
    lease_ttl: float,
) -> tuple[list[str], list[Any]]:
    """update.lua's KEYS and ARGV, for the call whose id is ``version``: each
    ``(meter, new, amount)`` of ``changes`` takes ``new``'s parameters (``amount``: the
    new rate's amount per period), and the cap ``(field, value, value before)`` its
    value (a raise wakes the processes that wait for a slot of ``slots_key``)."""
    keys = _Keys(rates_key)
    field, value, was = cap if cap is not None else ("", 0, 0)
    wake = keys.at(wake_key(slots_key)) if cap is not None and slots_key else 0
    args: list[Any] = [now, SLACK_MS, version, field, value, was, wake, int(lease_ttl * 1000)]
    args.append(len(changes))
    for meter, new, amount in changes:
        args += [meter.kind, keys.at(meter.key), repr(meter.p1), repr(meter.p2)]
        args += [repr(new.p1), repr(new.p2), repr(amount)]
    return keys, args


def wake_key(slots_key: str) -> str:
    """The list a process waiting for a slot blocks on (``BLPOP``)."""
    return slots_key + ":wake"
