"""The scripts' KEYS and ARGV: ``_protocol`` against each ``.lua`` file, and on Redis.

Three layers. The header comment of each script is parsed and must name the fields of
``_protocol``'s layout, in order (and the script must read ARGV with those strides).
The encoders' output is decoded by a reader driven by the *parsed header* alone, without
Redis, and must give back what was encoded (the batch renumbering included). Last, each
script is called on the real Redis with encoded arguments, and its reply must have the
shape the decoders expect.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from redis import Redis as SyncRedis
from tests.redis._support import ROUNDING, server_time
from tokenbucket._core import BucketState
from tokenbucket._redis import _protocol, _scripts
from tokenbucket._redis._protocol import (
    NO_SLOT,
    PAST_DEADLINE,
    RESERVED,
    SERVER_TIME,
    SLACK_MS,
    STALE,
    WRONG_TYPE,
    Group,
    Layout,
    MeterSpec,
    Reply,
    Reservation,
    Shape,
)

if TYPE_CHECKING:
    import redis.asyncio as aioredis

    from tests.redis._support import RecordingBackend

SCRIPTS = sorted(_protocol.LAYOUTS)
PRELUDES = ("clock", "log", "give", "rates")


def lua(name: str) -> str:
    return (resources.files("tokenbucket._redis") / "lua" / f"{name}.lua").read_text("utf-8")


# -- the headers ------------------------------------------------------------------------------

_KEYS = re.compile(r"^-- KEYS: (?P<names>.+)$")
_ARGV = re.compile(
    r"^-- ARGV(?: per (?P<unit>\w+) \((?P<count>\w+)\)| (?P<then>then))?: (?P<names>.+)$"
)
_FIELD = re.compile(r"^--   (?P<name>\S+) {2,}(?P<text>\S.*)$")


@dataclass
class Header:
    layout: Layout
    described: dict[str, str]


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(","))


def parse_header(text: str) -> Header:
    """The layout that a script's leading comment describes, and its field texts."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("--"):
            break
        comment.append(line)
    keys: tuple[str, ...] = ()
    head: tuple[str, ...] = ()
    tail: tuple[str, ...] = ()
    groups: list[Group] = []
    described: dict[str, str] = {}
    for line in comment:
        if match := _KEYS.match(line):
            keys = _names(match["names"])
        elif match := _ARGV.match(line):
            if match["unit"]:
                groups.append(Group(match["unit"], match["count"], _names(match["names"])))
            elif match["then"]:
                tail = _names(match["names"])
            else:
                head = _names(match["names"])
        elif (match := _FIELD.match(line)) and keys:
            assert match["name"] not in described, f"{match['name']} described twice"
            described[match["name"]] = match["text"]
    indexes = tuple(name for name, text in described.items() if text.startswith("index in KEYS"))
    layout = Layout(keys=keys, head=head, groups=tuple(groups), tail=tail, indexes=indexes)
    return Header(layout, described)


def _fields(layout: Layout) -> list[str]:
    return [*layout.head, *(f for g in layout.groups for f in g.fields), *layout.tail]


def _body(name: str) -> str:
    """The script without its comments."""
    return "\n".join(line.partition("--")[0] for line in lua(name).splitlines())


def test_the_scripts_are_the_files_and_the_preludes() -> None:
    files = {path.name for path in (resources.files("tokenbucket._redis") / "lua").iterdir()}
    assert files == {f"{name}.lua" for name in (*SCRIPTS, *PRELUDES)}
    assert set(_scripts.PRELUDES) == set(SCRIPTS)


@pytest.mark.parametrize("name", SCRIPTS)
def test_header_names_the_layout(name: str) -> None:
    header = parse_header(lua(name))
    layout = _protocol.LAYOUTS[name]
    assert header.layout == layout
    # Every key and field is described, nothing else is, and no field is named twice.
    fields = _fields(layout)
    assert len(set(fields)) == len(fields)
    assert set(header.described) == {*layout.keys, *fields}
    # A nested group is counted by a field of the group before it; others by the head.
    for before, group in zip((None, *layout.groups), layout.groups, strict=False):
        assert group.count in (*layout.head, *(before.fields if before else ()))


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_reads_argv_as_the_layout_says(name: str) -> None:
    layout = _protocol.LAYOUTS[name]
    body = _body(name)
    clock = "clock" in _scripts.PRELUDES[name]
    # The head by fixed index (ARGV[1], `now`, is clock.lua's when the script has it).
    literal = {int(i) for i in re.findall(r"ARGV\[(\d+)\]", body)}
    assert clock == (layout.head[:1] == ("now",))
    assert literal | ({1} if clock else set()) == set(range(1, len(layout.head) + 1))
    # The groups and the tail from a cursor that starts after the head and moves by
    # each group's stride once it has read every field of that group.
    advances = list(re.finditer(r"pos = pos \+ (\d+)", body))
    assert [int(m[1]) for m in advances] == [g.stride for g in layout.groups]
    starts = re.findall(r"local pos = (\d+)", body)
    assert starts == ([str(len(layout.head) + 1)] if layout.groups else [])
    edges = [0, *(m.end() for m in advances), len(body)]
    for i, size in enumerate([*(g.stride for g in layout.groups), len(layout.tail)]):
        part = body[edges[i] : edges[i + 1]]
        offsets = {int(k or 0) for k in re.findall(r"ARGV\[pos(?: \+ (\d+))?\]", part)}
        assert offsets == set(range(size)), (name, i)
    # The fixed keys: those before "..." by index, one after it as the last key.
    fixed = {int(i) for i in re.findall(r"KEYS\[(\d+)\]", body)}
    lead = layout.keys.index("...") if "..." in layout.keys else len(layout.keys)
    assert fixed == set(range(1, lead + 1))
    assert ("KEYS[#KEYS]" in body) == (lead < len(layout.keys) - 1)


def test_the_clock_is_written_once() -> None:
    assert "redis.call('TIME')" in lua("clock")
    for name in (*SCRIPTS, "log", "give"):
        assert "TIME" not in _body(name), name
    for name in SCRIPTS:
        sent = _scripts.source(name)
        assert sent.count("redis.call('TIME')") == ("clock" in _scripts.PRELUDES[name])
        assert sent.endswith(lua(name))


# -- encoding, read back by the headers ----------------------------------------------------


def read(name: str, keys: list[str], args: list[Any]) -> dict[str, Any]:
    """``args`` read as the script's header says: its fields by name, each group as a
    list under ``"<unit>[]"``, index fields replaced by the keys they name."""
    layout = parse_header(lua(name)).layout
    pos = 0
    used: set[int] = set()

    def fields(names: tuple[str, ...]) -> dict[str, Any]:
        nonlocal pos
        out = dict(zip(names, args[pos : pos + len(names)], strict=False))
        assert len(out) == len(names), "ARGV ends early"
        pos += len(names)
        for field in layout.indexes:
            if field in out:
                index = int(out[field])
                if index:
                    used.add(index)
                out[field] = keys[index - 1] if index else ""
        return out

    def groups(level: int, count: int) -> list[dict[str, Any]]:
        items = []
        for _ in range(count):
            item = fields(layout.groups[level].fields)
            inner = level + 1
            if inner < len(layout.groups) and layout.groups[inner].count in item:
                inner_group = layout.groups[inner]
                item[inner_group.unit + "[]"] = groups(inner, int(item[inner_group.count]))
            items.append(item)
        return items

    out = fields(layout.head)
    for level, group in enumerate(layout.groups):
        if group.count in layout.head:  # not nested: counted by the head
            out[group.unit + "[]"] = groups(level, int(out[group.count]))
    out.update(fields(layout.tail))
    assert pos == len(args), "ARGV has more than the layout"
    # Fixed keys, by name; every other key is named by an index field.
    lead = layout.keys.index("...") if "..." in layout.keys else len(layout.keys)
    trail = layout.keys[lead + 1 :] if "..." in layout.keys else ()
    for i, key in enumerate(layout.keys[:lead]):
        out[key] = keys[i]
        used.add(i + 1)
    if trail and len(keys) > len(used):
        for i, key in enumerate(trail, start=len(keys) - len(trail)):
            out[key] = keys[i]
            used.add(i + 1)
    assert used == set(range(1, len(keys) + 1)), "a key that nothing names"
    return out


def _spec(meter: MeterSpec) -> dict[str, Any]:
    return {"kind": meter.kind, "key": meter.key, "p1": repr(meter.p1), "p2": repr(meter.p2)}


def _meter(meter: MeterSpec, amount: float, member: str) -> dict[str, Any]:
    return {**_spec(meter), "amount": repr(amount), "member": member}


_numbers = st.floats(min_value=0.001, max_value=1e6, allow_nan=False)
_meter_specs = st.builds(
    MeterSpec,
    kind=st.sampled_from(["b", "w"]),
    key=st.sampled_from(["{p:a}:0", "{p:a}:1", "{p:a}:2", "{p:a}:pause"]),
    p1=_numbers,
    p2=_numbers,
)
_shapes = st.builds(
    Shape,
    meters=st.lists(_meter_specs, min_size=1, max_size=4).map(tuple),
    pause_key=st.sampled_from(["", "{p:a}:pause"]),
    slots_key=st.sampled_from(["", "{p:a}:slots", "{p:a}:0"]),
    slot_max=st.integers(0, 5),
    rates_key=st.sampled_from(["", "{p:a}:rates"]),
    version=st.sampled_from(["", "u1"]),
)


@st.composite
def _requests(draw: st.DrawFn, shapes: list[Shape]) -> tuple[Shape, list[float], float | None]:
    shape = draw(st.sampled_from(shapes))
    size = len(shape.meters)
    amounts = draw(st.lists(_numbers, min_size=size, max_size=size))
    return shape, amounts, draw(st.none() | st.floats(min_value=0, max_value=100))


@st.composite
def _batches(draw: st.DrawFn) -> list[tuple[Shape, list[float], float | None]]:
    shapes = draw(st.lists(_shapes, min_size=1, max_size=3))
    return draw(st.lists(_requests(shapes), min_size=1, max_size=6))


@settings(max_examples=200, deadline=None)
@given(_batches(), st.sampled_from([SERVER_TIME, "12.5"]), st.sampled_from([300.0, 0.5]))
def test_a_batch_reads_back_as_encoded(
    requests: list[tuple[Shape, list[float], float | None]], now: str, lease_ttl: float
) -> None:
    keys, args = _protocol.encode_batch(now, "c1", requests, lease_ttl)
    assert len(keys) == len(set(keys))  # each key once
    got = read("reserve", keys, args)
    assert (got["now"], got["slack"], got["count"]) == (now, SLACK_MS, len(requests))
    assert (got["call_key"], got["call"], got["record_ttl"], got["undo"]) == (
        "{p:a}:call:c1",
        "c1",
        _protocol.RECORD_TTL_MS,
        0,
    )
    # Undoing is the same call, with the undo flag set.
    undone = read("reserve", keys, _protocol.undo(args))
    assert undone == {**got, "undo": 1}
    # Each shape once, in the order of first use; the requests name theirs.
    shapes = list({id(shape): shape for shape, _, _ in requests}.values())
    assert got["shapes"] == len(shapes)
    for sent, shape in zip(got["shape[]"], shapes, strict=True):
        assert sent == {
            "meters": len(shape.meters),
            "pause": shape.pause_key,
            "slots": shape.slots_key,
            "slot_max": shape.slot_max,
            "lease_ttl": lease_ttl,
            "rates": shape.rates_key,
            "version": shape.version,
            "meter[]": [_spec(m) for m in shape.meters],
        }
    for sent, (shape, amounts, left) in zip(got["request[]"], requests, strict=True):
        assert shapes[sent["shape"] - 1] is shape
        assert sent["deadline"] == (-1 if left is None else left)
        assert [float(a) for a in sent["amounts"].split(" ")] == amounts


def test_each_shape_and_key_is_sent_once() -> None:
    a = MeterSpec("b", "{p:a}:0", 2.0, 5.0)
    b = MeterSpec("w", "{p:a}:1", 10.0, 1.0)
    first = Shape((a,), "{p:a}:pause")
    second = Shape((b, a), "", "{p:a}:slots", 3, "{p:a}:rates", "u2")
    requests = [(first, [1.0], None), (second, [1.0, 2.0], 0.25), (first, [0.5], None)]
    keys, args = _protocol.encode_batch(SERVER_TIME, "c1", requests, 300.0)
    assert _protocol.call_key(first.tag, "c1") == "{p:a}:call:c1"
    assert keys == [
        "{p:a}:call:c1", "{p:a}:pause", "{p:a}:0", "{p:a}:slots", "{p:a}:rates", "{p:a}:1"
    ]  # fmt: skip
    assert args == [
        "", SLACK_MS, _protocol.RECORD_TTL_MS, 0, "c1", 2, 3,
        1, 2, 0, 0, 300.0, 0, "",
        "b", 3, "2.0", "5.0",
        2, 0, 4, 3, 300.0, 5, "u2",
        "w", 6, "10.0", "1.0",
        "b", 3, "2.0", "5.0",
        1, -1, "1.0",
        2, 0.25, "1.0 2.0",
        1, -1, "0.5",
    ]  # fmt: skip
    # Request r of the call is named so, in Redis and here.
    assert [_protocol.member("c1", i) for i in range(3)] == ["c1.1", "c1.2", "c1.3"]


_RESERVATION = Reservation(
    meters=(MeterSpec("b", "{p:a}:0", 2.0, 5.0), MeterSpec("w", "{p:a}:1", 10.0, 60.0)),
    amounts=(1.0, 3.5),
    member="m1",
    at=1700000000.25,
    lease="lease-1",
    slots_key="{p:a}:slots",
    rates_key="{p:a}:rates",
    version="v1",
)
RATES = ("{p:a}:rates", "v1")


_SLOTS = ("{p:a}:slots", *RATES)


def test_give_backs_read_back_as_encoded() -> None:
    other = MeterSpec("w", "{p:a}:2", 5.0, 1.0)
    reservations = [
        _RESERVATION,
        _RESERVATION._replace(member="m2", lease="", at=1700000001.5),
        Reservation((_RESERVATION.meters[1], other), (2.0, 0.5), "m3", 1.25, "m3", *_SLOTS),
        Reservation((), (), "m4", 2.5, "m4", *_SLOTS),  # a lease alone
    ]
    keys, args = _protocol.encode_give_backs(SERVER_TIME, reservations, 300.0)
    assert len(keys) == len(set(keys))  # each key once
    got = read("cancel", keys, args)
    sent = got.pop("reservation[]")
    assert got == {"now": "", "wake_ttl": 300_000, "count": 4}
    wake = _protocol.wake_key("{p:a}:slots")
    for item, reservation in zip(sent, reservations, strict=True):
        assert item.pop("meter[]") == [
            _meter(m, a, reservation.member)
            for m, a in zip(reservation.meters, reservation.amounts, strict=True)
        ]
        held = bool(reservation.lease)
        assert item == {
            "t": repr(reservation.at),
            "meters": len(reservation.meters),
            "slots": "{p:a}:slots" if held else "",
            "wake": wake if held else "",
            "lease": reservation.lease,
        }


def test_a_settle_reads_back_as_encoded() -> None:
    keys, args = _protocol.encode_adjust("12.5", "c1", _RESERVATION, [0.5, 7.0])
    got = read("adjust", keys, args)
    assert got.pop("meter[]") == [
        {**_meter(m, a, "m1"), "new": repr(new), "t": repr(_RESERVATION.at)}
        for m, a, new in zip(_RESERVATION.meters, _RESERVATION.amounts, [0.5, 7.0], strict=True)
    ]
    assert got == {
        "now": "12.5",
        "slack": SLACK_MS,
        "record_ttl": _protocol.RECORD_TTL_MS,
        "version": "v1",
        "meters": 2,
        "call_key": "{p:a}:call:c1",
        "rates_key": "{p:a}:rates",
    }


def test_a_charge_reads_back_as_encoded() -> None:
    meters = _RESERVATION.meters
    grants = [(0.25, (1.0, 2.0))]
    keys, args = _protocol.encode_charge("12.5", "c1", meters, [4.0, 0.0], grants, RATES)
    got = read("charge", keys, args)
    assert got.pop("meter[]") == [
        {**_spec(m), "owed": repr(owed)} for m, owed in zip(meters, [4.0, 0.0], strict=True)
    ]
    assert got.pop("grant[]") == [{"age": "0.25", "amounts": "1.0 2.0"}]
    assert got == {
        "now": "12.5",
        "slack": SLACK_MS,
        "record_ttl": _protocol.RECORD_TTL_MS,
        "call": "c1",
        "call_key": "{p:a}:call:c1",
        "rates_key": "{p:a}:rates",
        "version": "v1",
        "meters": 2,
        "grants": 1,
    }


@pytest.mark.parametrize("pause", [None, 1.5])
def test_feedback_reads_back_as_encoded(pause: float | None) -> None:
    clamps = [
        (m, 4.0, 30.0, refill) for m, refill in zip(_RESERVATION.meters, [None, 2.5], strict=True)
    ]
    keys, args = _protocol.encode_feedback(SERVER_TIME, "{p:a}:pause", pause, clamps, RATES)
    got = read("feedback", keys, args)
    meters = got.pop("meter[]")
    fields = ("kind", "key", "remaining", "reset", "refill")
    assert [{k: v for k, v in m.items() if k in fields} for m in meters] == [
        {"kind": m.kind, "key": m.key, "remaining": "4.0", "reset": "30.0", "refill": refill}
        for m, refill in zip(_RESERVATION.meters, [0, "2.5"], strict=True)
    ]
    assert got == {
        "now": "",
        "slack": SLACK_MS,
        "pause": -1 if pause is None else pause,
        "meters": 2,
        "pause_key": "{p:a}:pause",
        "rates_key": "{p:a}:rates",
        "version": "v1",
    }


def test_a_release_reads_back_as_encoded() -> None:
    keys, args = _protocol.encode_release("{p:a}:slots", ["lease-1", "lease-2"], 300.0)
    got = read("release", keys, args)
    assert got == {
        "count": 2,
        "lease[]": [{"lease": "lease-1"}, {"lease": "lease-2"}],
        "wake_ttl": 300000,
        "slots_key": "{p:a}:slots",
        "wake_key": _protocol.wake_key("{p:a}:slots"),
    }


def test_an_update_reads_back_as_encoded() -> None:
    bucket, window = _RESERVATION.meters
    changes = [(bucket, MeterSpec("b", bucket.key, 3.0, 9.0), 180.0), (window, window, 10.0)]
    cap = ("cap:4", 2, 4)
    keys, args = _protocol.encode_update(
        "12.5", "v2", "{p:a}:rates", changes, cap, "{p:a}:slots", 300.0
    )
    got = read("update", keys, args)
    assert got.pop("meter[]") == [
        {**_spec(bucket), "new_p1": "3.0", "new_p2": "9.0", "amount": "180.0"},
        {**_spec(window), "new_p1": "10.0", "new_p2": "60.0", "amount": "10.0"},
    ]
    assert got == {
        "now": "12.5",
        "slack": SLACK_MS,
        "version": "v2",
        "cap_field": "cap:4",
        "cap": 2,
        "was": 4,
        "wake": _protocol.wake_key("{p:a}:slots"),
        "wake_ttl": 300_000,
        "meters": 2,
        "rates_key": "{p:a}:rates",
    }
    _, args = _protocol.encode_update("12.5", "v3", "{p:a}:rates", [], None, "", 300.0)
    assert args[3:7] == ["", 0, 0, 0]  # the cap is not changed


def test_replies_decode() -> None:
    keys = ["{p:a}:call:c1", "{p:a}:pause", "{p:a}:0"]
    reply = b"1700000000.25 1 0.5 0 2 3 3"
    assert _protocol.decode_replies(reply, keys) == [
        Reply(RESERVED, 0.5, 1700000000.25),
        Reply(PAST_DEADLINE, 2.0, 1700000000.25),
        Reply(WRONG_TYPE, 0.0, 0.0, "{p:a}:0"),
    ]
    assert _protocol.decode_replies(reply.decode(), keys) == _protocol.decode_replies(reply, keys)


# -- each script on Redis, through the encoders ----------------------------------------------


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


async def _call(backend: RecordingBackend, name: str, keys: list[str], args: list[Any]) -> Any:
    return await backend._script(name, keys, args)


async def _reserve(
    backend: RecordingBackend, requests: list[tuple[Shape, list[float], float | None]]
) -> tuple[str, list[Reply]]:
    """The call's id and its replies."""
    call = uuid.uuid4().hex
    keys, args = _protocol.encode_batch(SERVER_TIME, call, requests, 300.0)
    raw = await _call(backend, "reserve", keys, args)
    # One string: now, then a status and a number per request.
    assert isinstance(raw, bytes)
    assert len(raw.split()) == 1 + 2 * len(requests)
    return call, _protocol.decode_replies(raw, keys)


def _meters(backend: RecordingBackend) -> tuple[MeterSpec, MeterSpec]:
    return (
        MeterSpec("b", backend.key("proto", "bucket"), 1.0, 1.0),
        MeterSpec("w", backend.key("proto", "window"), 1.0, 60.0),
    )


def _shape(meters: tuple[MeterSpec, ...], slots_key: str = "") -> Shape:
    return Shape(meters, meters[0].key + ":pause", slots_key, 1)


async def _reserved(
    backend: RecordingBackend, meters: tuple[MeterSpec, ...], slots_key: str = ""
) -> Reservation:
    """A reservation made now of 1 on each of ``meters``."""
    call, (reply,) = await _reserve(
        backend, [(_shape(meters, slots_key), [1.0] * len(meters), None)]
    )
    assert reply.status == RESERVED
    member = _protocol.member(call, 0)
    lease = member if slots_key else ""
    rates = backend.key("proto", "rates")
    return Reservation(meters, (1.0,) * len(meters), member, reply.now, lease, slots_key, rates, "")


@pytest.mark.asyncio
async def test_reserve_replies_per_request(
    redis_backend: RecordingBackend, admin: aioredis.Redis
) -> None:
    meters = _meters(redis_backend)
    slots = redis_backend.key("proto", "slots")
    before = await server_time(admin)
    with_slot = _shape(meters, slots)
    call, (first, second, third) = await _reserve(
        redis_backend,
        [
            (with_slot, [1.0, 1.0], None),  # reserved now
            (_shape(meters), [1.0, 1.0], 0.5),  # not within 0.5 s: the window is full
            (_shape(meters[:1], slots), [1.0], None),  # the one slot is taken
        ],
    )
    assert first.status == RESERVED
    assert first.wait == 0
    assert before - ROUNDING <= first.now <= await server_time(admin) + ROUNDING
    assert second.status == PAST_DEADLINE
    assert second.wait == pytest.approx(60.0, abs=ROUNDING)
    assert third.status == NO_SLOT
    assert third.now + third.wait == pytest.approx(first.now + 300.0, abs=ROUNDING)
    # The first request's id names its window entry, its bucket's latest and its lease.
    member = _protocol.member(call, 0)
    assert await admin.zrange(slots, 0, -1) == [member]
    assert await admin.get(meters[0].key + ":last") == member
    assert await admin.zrange(meters[1].key, 0, -1) == [f"{member}:1"]
    # A key holding something else is named, and nothing is taken.
    await admin.rpush(redis_backend.key("proto", "list"), "x")
    other = MeterSpec("b", redis_backend.key("proto", "list"), 1.0, 1.0)
    _, (wrong,) = await _reserve(redis_backend, [(_shape((other,)), [1.0], None)])
    assert wrong == Reply(WRONG_TYPE, 0.0, 0.0, other.key)


@pytest.mark.asyncio
async def test_cancel_replies_with_the_meters_given_back(
    redis_backend: RecordingBackend, admin: aioredis.Redis
) -> None:
    meters = _meters(redis_backend)
    slots = redis_backend.key("proto", "slots")
    first = await _reserved(redis_backend, meters, slots)
    await admin.zadd(slots, {"lease-2": await server_time(admin) + 300})  # another holder
    second = await _reserved(redis_backend, meters[1:])  # the window's, without a lease
    keys, args = _protocol.encode_give_backs(SERVER_TIME, [first, second], 300.0)
    # The bucket's (its latest) and both window entries.
    assert await _call(redis_backend, "cancel", keys, args) == 3
    assert await admin.zrange(slots, 0, -1) == ["lease-2"]
    assert await admin.zcard(meters[1].key) == 0
    assert await admin.llen(_protocol.wake_key(slots)) == 1  # a wake per lease removed
    assert 0 < await admin.pttl(_protocol.wake_key(slots)) <= 300_000
    # Sent again (its reply lost), it gives nothing back twice, and wakes no one.
    assert await _call(redis_backend, "cancel", keys, args) == 0
    assert await admin.llen(_protocol.wake_key(slots)) == 1
    # A wake key holding something else is left alone; the lease is still removed.
    await admin.zrem(slots, "lease-2")
    third = await _reserved(redis_backend, meters[1:], slots)
    await admin.delete(_protocol.wake_key(slots))
    await admin.set(_protocol.wake_key(slots), "not a list")
    keys, args = _protocol.encode_give_backs(SERVER_TIME, [third], 300.0)
    assert await _call(redis_backend, "cancel", keys, args) == 1
    assert await admin.zcard(slots) == 0
    assert await admin.get(_protocol.wake_key(slots)) in ("not a list", b"not a list")


@pytest.mark.asyncio
async def test_adjust_replies_1(redis_backend: RecordingBackend, admin: aioredis.Redis) -> None:
    meters = _meters(redis_backend)
    reservation = await _reserved(redis_backend, meters)
    keys, args = _protocol.encode_adjust(SERVER_TIME, "c1", reservation, [3.0, 0.25])
    assert await _call(redis_backend, "adjust", keys, args) == 1
    entries = await admin.zrange(meters[1].key, 0, -1)
    assert [str(entry).rpartition(":")[2] for entry in entries] == ["0.25"]
    tat = await admin.get(meters[0].key)
    assert 0 < await admin.pttl(keys[0]) <= _protocol.RECORD_TTL_MS
    # Sent again (its reply lost), it replies 0 and changes nothing again.
    assert await _call(redis_backend, "adjust", keys, args) == 0
    assert await admin.zrange(meters[1].key, 0, -1) == entries
    assert await admin.get(meters[0].key) == tat


@pytest.mark.asyncio
async def test_charge_replies_1_once(
    redis_backend: RecordingBackend, admin: aioredis.Redis
) -> None:
    bucket, window = _meters(redis_backend)  # 1/s, burst 1; 1 in 60 s
    before = await server_time(admin)
    grants = [(0.5, (0.0, 1.0)), (120.0, (0.0, 1.0))]  # the second has left the window
    rates = (redis_backend.key("proto", "rates"), "")
    keys, args = _protocol.encode_charge(
        SERVER_TIME, "c1", (bucket, window), [2.0, 0.0], grants, rates
    )
    assert await _call(redis_backend, "charge", keys, args) == 1
    after = await server_time(admin)
    # The bucket owes 2 at 1/s: its schedule is 2 s from now; the window holds one grant.
    tat = float(str(await admin.get(bucket.key)))
    assert before + 2.0 - ROUNDING <= tat <= after + 2.0 + ROUNDING
    assert await admin.zrange(window.key, 0, -1) == ["c1.1:1"]
    score = float(str(await admin.zscore(window.key, "c1.1:1")))
    assert before - 0.5 - ROUNDING <= score <= after - 0.5 + ROUNDING
    # Sent again (its reply lost), it charges nothing.
    assert await _call(redis_backend, "charge", keys, args) == 0
    assert float(str(await admin.get(bucket.key))) == tat
    assert await admin.zcard(window.key) == 1


@pytest.mark.asyncio
async def test_feedback_replies_1(redis_backend: RecordingBackend, admin: aioredis.Redis) -> None:
    meters = _meters(redis_backend)
    pause_key = redis_backend.key("proto", "pause")
    keys, args = _protocol.encode_feedback(
        SERVER_TIME,
        pause_key,
        2.0,
        [(meters[0], 0.0, 5.0, None), (meters[1], 0.0, 5.0, None)],
        (redis_backend.key("proto", "rates"), ""),
    )
    before = await server_time(admin)
    assert await _call(redis_backend, "feedback", keys, args) == 1
    paused = float(str(await admin.get(pause_key)))
    assert before + 2.0 - ROUNDING <= paused <= await server_time(admin) + 2.0 + ROUNDING
    empty = float(str(await admin.get(meters[0].key)))  # the bucket's schedule
    assert empty >= before + 1.0 - ROUNDING
    assert await admin.zcard(meters[1].key) == 1  # the window is full


@pytest.mark.asyncio
async def test_release_replies_with_the_lease_removed(
    redis_backend: RecordingBackend, admin: aioredis.Redis
) -> None:
    meters = _meters(redis_backend)
    slots = redis_backend.key("proto", "slots")
    reservation = await _reserved(redis_backend, meters[:1], slots)
    await admin.zadd(slots, {"lease-2": await server_time(admin) + 300})  # another holder
    keys, args = _protocol.encode_release(slots, [reservation.lease, "lease-2"], 300.0)
    assert await _call(redis_backend, "release", keys, args) == 2
    assert await _call(redis_backend, "release", keys, args) == 0
    assert await admin.zcard(slots) == 0
    assert await admin.llen(_protocol.wake_key(slots)) == 4  # a wake per lease sent
    assert 0 < await admin.pttl(_protocol.wake_key(slots)) <= 300_000
    # A wake key holding something else is left alone; the slots are still released.
    await admin.zadd(slots, {"lease-3": await server_time(admin) + 300})
    await admin.delete(_protocol.wake_key(slots))
    await admin.set(_protocol.wake_key(slots), "not a list")
    keys, args = _protocol.encode_release(slots, ["lease-3"], 300.0)
    assert await _call(redis_backend, "release", keys, args) == 1
    assert await admin.get(_protocol.wake_key(slots)) in ("not a list", b"not a list")


@pytest.mark.asyncio
async def test_update_converts_a_bucket_and_names_the_version(
    redis_backend: RecordingBackend, admin: aioredis.Redis
) -> None:
    bucket = MeterSpec("b", redis_backend.key("proto", "bucket"), 1.0, 10.0)
    rates = redis_backend.key("proto", "rates")
    slots = redis_backend.key("proto", "slots")
    await admin.set(bucket.key, "1004.0")  # at 1000: 4 of 10 in use, 6 on hand
    await admin.set(bucket.key + ":last", "m1")
    raised = MeterSpec("b", bucket.key, 2.0, 20.0)
    changes = [(bucket, raised, 40.0)]
    keys, args = _protocol.encode_update("1000.0", "u1", rates, changes, None, "", 300.0)
    flat = [_text(part) for part in await _call(redis_backend, "update", keys, args)]
    held = dict(zip(flat[::2], flat[1::2], strict=True))
    assert held == await admin.hgetall(rates) == {bucket.key: "2 20 40.0", "v": "u1"}
    # 6 on hand kept: 14 of 20 in use, at 2 a second.
    assert float(str(await admin.get(bucket.key))) == pytest.approx(1007.0)
    assert await admin.get(bucket.key + ":last") is None  # never given back at the new rate
    # Sent again (its reply lost): nothing changes.
    await _call(redis_backend, "update", keys, args)
    assert float(str(await admin.get(bucket.key))) == pytest.approx(1007.0)
    # Sent with the parameters before the first update: the hash's are used. 6 on hand
    # at most 5 now: full, nothing in use. A cap's raise wakes as many who wait for a slot.
    lowered = MeterSpec("b", bucket.key, 2.0, 5.0)
    keys, args = _protocol.encode_update(
        "1000.0", "u2", rates, [(bucket, lowered, 120.0)], ("cap:3", 5, 3), slots, 300.0
    )
    await _call(redis_backend, "update", keys, args)
    assert await admin.get(bucket.key) is None
    assert await admin.hgetall(rates) == {bucket.key: "2 5 120.0", "cap:3": "5", "v": "u2"}
    assert await admin.llen(_protocol.wake_key(slots)) == 2
    assert 0 < await admin.pttl(_protocol.wake_key(slots)) <= 300_000
    # Lowered (from the hash's 5, whatever was sent), it frees no slot: no wake.
    await admin.delete(_protocol.wake_key(slots))
    keys, args = _protocol.encode_update("1000.0", "u3", rates, [], ("cap:3", 4, 3), slots, 300.0)
    await _call(redis_backend, "update", keys, args)
    assert await admin.llen(_protocol.wake_key(slots)) == 0


@pytest.mark.asyncio
async def test_a_raised_window_holds_back_what_a_report_held(
    redis_backend: RecordingBackend, admin: aioredis.Redis
) -> None:
    window = MeterSpec("w", redis_backend.key("proto", "window"), 100.0, 60.0)
    rates = (redis_backend.key("proto", "rates"), "")
    pause = redis_backend.key("proto", "pause")
    # The server says nothing is left for 30 s: 100 held back, until then.
    keys, args = _protocol.encode_feedback(
        "1000.0", pause, None, [(window, 0.0, 30.0, None)], rates
    )
    await _call(redis_backend, "feedback", keys, args)
    assert float(str(await admin.get(window.key + ":held"))) == 970.0
    raised = MeterSpec("w", window.key, 1000.0, 60.0)
    keys, args = _protocol.encode_update(
        "1000.5", "u1", rates[0], [(window, raised, 1000.0)], None, "", 300.0
    )
    await _call(redis_backend, "update", keys, args)
    # The raise is held back as long: the window admits nothing more until 1030.
    assert await admin.zscore(window.key, "fuu1:900") == 970.0
    bucket_shape = Shape((raised,), "", "", 0, rates[0], "u1")
    keys, args = _protocol.encode_batch("1000.5", "c9", [(bucket_shape, [1.0], None)], 300.0)
    (reply,) = _protocol.decode_replies(await _call(redis_backend, "reserve", keys, args), keys)
    assert reply.status == RESERVED
    assert reply.wait == pytest.approx(29.5)


@pytest.mark.asyncio
async def test_reserve_takes_nothing_for_another_version(
    redis_backend: RecordingBackend, admin: aioredis.Redis
) -> None:
    meters = _meters(redis_backend)
    rates = redis_backend.key("proto", "rates")
    shape = Shape(meters, "", "", 0, rates, "")
    _, (reply,) = await _reserve(redis_backend, [(shape, [1.0, 1.0], None)])
    assert reply.status == RESERVED  # no hash: no version
    await admin.hset(rates, "v", "u1")
    _, (stale, fresh) = await _reserve(
        redis_backend,
        [(shape, [1.0, 1.0], None), (Shape(meters, "", "", 0, rates, "u1"), [1.0, 0.0], None)],
    )
    assert stale.status == STALE
    assert fresh.status == RESERVED
    assert await admin.zcard(meters[1].key) == 1  # the stale request took nothing
    # A rates key holding something else is named, as a meter's would be.
    await admin.delete(rates)
    await admin.set(rates, "x")
    _, (wrong,) = await _reserve(redis_backend, [(shape, [1.0, 1.0], None)])
    assert wrong == Reply(WRONG_TYPE, 0.0, 0.0, rates)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    rate=st.floats(0.1, 100.0),
    capacity=st.floats(1.0, 1000.0),
    taken=st.floats(0.0, 2.0),  # of the capacity, in use (above 1: in debt)
    new_rate=st.floats(0.1, 100.0),
    new_capacity=st.floats(1.0, 1000.0),
)
def test_update_keeps_a_buckets_level_as_the_core_does(
    redis_url: str,
    prefix: str,
    rate: float,
    capacity: float,
    taken: float,
    new_rate: float,
    new_capacity: float,
) -> None:
    """update.lua and ``BucketState.retune`` agree: the level on hand is kept, down to
    the new capacity (debt too), and comes back at the new rate."""
    now = 1_000_000.0
    core = BucketState(rate, capacity, now)
    core.charge(taken * capacity, now)
    bucket = MeterSpec("b", f"{{{prefix}}}:{uuid.uuid4().hex}", rate, capacity)
    new = MeterSpec("b", bucket.key, new_rate, new_capacity)
    client = SyncRedis.from_url(redis_url, decode_responses=True)
    try:
        client.set(bucket.key, repr(now + taken * capacity / rate))  # as reserve.lua keeps it
        keys, args = _protocol.encode_update(
            repr(now), "u1", f"{{{prefix}}}:rates", [(bucket, new, 1)], None, "", 300.0
        )
        client.eval(_scripts.source("update"), len(keys), *keys, *args)
        held = client.get(bucket.key)
    finally:
        client.close()
    core.retune(new_rate, new_capacity, now)
    tat = now if held is None else float(held)
    for later in (now, now + 0.5, now + 5.0):
        level = new_capacity - max(0.0, tat - later) * new_rate
        assert level == pytest.approx(core.level(later), rel=1e-6, abs=1e-6 * new_capacity)
