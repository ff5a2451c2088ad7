"""BucketGroup: limiters by name, from code, a dict or a TOML file; shared limits taken
atomically; bounded memory for many keys. Async tests run under virtual time."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

import tokenbucket as tb
from tests.conftest import backend_params
from tests.virtual._support import TOL, now, settle_while_one_waits

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["trio-mockclock", "asyncio-looptime"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    return backend_params(request.param)


DOCSTRING_EXAMPLE = {
    "gpt-4o": {"requests_per_minute": 5000, "tokens_per_minute": 800_000, "max_concurrency": 64},
    "claude-sonnet": {
        "requests_per_minute": 50,
        "input_tokens_per_minute": 40_000,
        "output_tokens_per_minute": 8_000,
    },
}


# --- building a group -----------------------------------------------------------------


def test_from_dict_builds_the_docstring_example() -> None:
    limits = tb.BucketGroup.from_dict(DOCSTRING_EXAMPLE)
    assert sorted(limits.names()) == ["claude-sonnet", "gpt-4o"]
    assert len(limits) == 2
    gpt = limits["gpt-4o"]
    assert gpt.rates == {
        "requests": (tb.per_minute(5000),),
        "tokens": (tb.per_minute(800_000),),
    }
    assert gpt.max_concurrency == 64
    claude = limits["claude-sonnet"]
    assert claude.dimensions == ("requests", "input_tokens", "output_tokens")
    assert claude.rates["output_tokens"] == (tb.per_minute(8_000),)
    assert claude.max_concurrency is None
    assert limits["gpt-4o"] is gpt  # the same limiter every time
    assert "gpt-4o" in limits
    assert "o3" not in limits
    assert set(limits) == {"gpt-4o", "claude-sonnet"}


def test_from_dict_burst_tables_several_rates_and_options() -> None:
    limits = tb.BucketGroup.from_dict(
        {
            "m": {
                "tokens_per_minute": {"limit": 600, "burst": 100},
                "tokens_per_day": 10_000,
                "requests_per_second": "5/second",
                "allow_debt": True,
            }
        }
    )
    assert limits["m"].rates == {
        "tokens": (tb.per_minute(600, burst=100), tb.per_day(10_000)),
        "requests": (tb.per_second(5),),
    }
    # allow_debt: more than a rate allows goes through once, instead of raising.
    limits["m"].acquire(tokens=50_000)


def test_from_dict_and_toml_take_an_adaptive_cap(tmp_path: Path) -> None:
    limits = tb.BucketGroup.from_dict(
        {
            "a": {"requests_per_second": 5, "max_concurrency": "adaptive"},
            "b": {"max_concurrency": {"adaptive": {"initial": 8, "max": 64, "policy": "aimd"}}},
        }
    )
    a, b = limits["a"]._controller, limits["b"]._controller
    assert a is not None
    assert a.config == tb.adaptive()
    assert b is not None
    assert b.config == tb.adaptive(initial=8, max=64, policy="aimd")
    assert limits["b"].max_concurrency == 8
    path = tmp_path / "limits.toml"
    path.write_text(
        '[limits."gpt-4o"]\ntokens_per_minute = 1000\n'
        "max_concurrency = { adaptive = { initial = 4, min = 2 } }\n"
    )
    made = tb.BucketGroup.from_toml(path)["gpt-4o"]._controller
    assert made is not None
    assert made.config == tb.adaptive(initial=4, min=2)
    for wrong, error in (
        ("adaptiv", tb.ArgumentTypeError),
        ({"adaptive": {"initial": 0}}, tb.InvalidArgumentError),
        ({"adaptive": {"tolerance": 9, "policy": "aimd"}}, tb.InvalidArgumentError),
        ({"adaptive": 3}, tb.InvalidArgumentError),
        ({"fixed": 3}, tb.InvalidArgumentError),
    ):
        with pytest.raises(error, match="max_concurrency"):
            tb.BucketGroup.from_dict({"m": {"max_concurrency": wrong}})


def test_from_toml(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text(
        """
[limits."gpt-4o"]
requests_per_minute = 5000
tokens_per_minute = 800_000
max_concurrency = 64

[limits.o3]
requests_per_minute = 500
tokens_per_minute = { limit = 30_000, burst = 3_000 }

[default]
requests_per_second = 10

[shared.org]
tokens_per_minute = 2_000_000
members = ["gpt-4o", "o3"]
""",
        encoding="utf-8",
    )
    limits = tb.BucketGroup.from_toml(path)
    assert sorted(limits.names()) == ["gpt-4o", "o3"]
    assert limits["gpt-4o"].max_concurrency == 64
    assert limits["gpt-4o"].rates == {
        "requests": (tb.per_minute(5000),),
        "tokens": (tb.per_minute(800_000), tb.per_minute(2_000_000)),
    }
    assert limits["o3"].rates["tokens"] == (
        tb.per_minute(30_000, burst=3_000),
        tb.per_minute(2_000_000),
    )
    someone = limits["someone-else"]
    assert someone.rates == {"requests": (tb.per_second(10),)}
    assert limits.names() == ["gpt-4o", "o3"]  # made from the default: not a name
    assert "someone-else" not in limits  # not in use yet
    assert limits["someone-else"] is someone  # still held here: the same one comes back


def test_from_toml_rejects_unknown_tables_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "limits.toml"
    path.write_text('[limit."gpt-4o"]\nrequests_per_minute = 5\n', encoding="utf-8")
    with pytest.raises(tb.InvalidArgumentError) as info:
        tb.BucketGroup.from_toml(path)
    assert "limit" in str(info.value)
    assert str(path) in str(info.value)


def test_from_code_and_its_checks() -> None:
    gpt = tb.Limiter(requests_per_minute=10)
    limits = tb.BucketGroup({"gpt": gpt})
    assert limits["gpt"] is gpt
    with pytest.raises(tb.ArgumentTypeError):
        tb.BucketGroup({"gpt": {"requests_per_minute": 10}})  # type: ignore[dict-item]
    with pytest.raises(tb.ArgumentTypeError):
        tb.BucketGroup({"": gpt})


def test_unknown_name_without_default_is_a_key_error_listing_the_names() -> None:
    limits = tb.BucketGroup.from_dict(DOCSTRING_EXAMPLE)
    with pytest.raises(KeyError) as info:
        limits["gpt-5"]
    message = str(info.value)
    assert "gpt-5" in message
    assert "gpt-4o" in message
    assert "claude-sonnet" in message
    with pytest.raises(KeyError):
        limits.acquire("gpt-5", tokens=1)
    assert len(limits) == 2


def test_default_covers_unknown_names_each_with_its_own_limiter() -> None:
    limits = tb.BucketGroup.from_dict(
        {"vip": {"requests_per_second": 100}}, default={"requests_per_second": 2}
    )
    alice = limits["alice"]
    assert limits["alice"] is alice
    assert limits["bob"] is not alice
    assert alice.rates == {"requests": (tb.per_second(2),)}
    assert limits["vip"].rates == {"requests": (tb.per_second(100),)}
    assert limits.names() == ["vip"]
    # Neither alice nor bob is in use: only vip counts, and alice, still held here, is
    # the one a lookup of her name gives.
    assert len(limits) == 1
    assert "held=1" in repr(limits)
    assert limits["alice"] is alice


@pytest.mark.parametrize(
    ("config", "extra", "error", "where"),
    [
        ({"a": {"tokens_per_fortnight": 5}}, {}, tb.InvalidArgumentError, "tokens_per_fortnight"),
        ({"a": {"tokens": 5}}, {}, tb.InvalidArgumentError, "'tokens'"),
        ({"a": {"tokens_per_minute": -5}}, {}, tb.InvalidArgumentError, "a.tokens_per_minute"),
        ({"a": {"tokens_per_minute": "5/s"}}, {}, tb.InvalidArgumentError, "a.tokens_per_minute"),
        ({"a": {"tokens_per_minute": True}}, {}, tb.ArgumentTypeError, "a.tokens_per_minute"),
        (
            {"a": {"tokens_per_minute": {"limit": 5, "brust": 1}}},
            {},
            tb.InvalidArgumentError,
            "a.tokens_per_minute",
        ),
        ({"a": {"max_concurrency": 0}}, {}, tb.InvalidArgumentError, "a:"),
        ({"a": 5}, {}, tb.ArgumentTypeError, "'a'"),
        (
            {"a": {"requests_per_minute": 5}},
            {"default": {"requests_per_eon": 5}},
            tb.InvalidArgumentError,
            "default",
        ),
        (
            {"a": {"requests_per_minute": 5}},
            {"shared": {"org": {"tokens_per_minute": 10, "members": ["a", "b"]}}},
            tb.InvalidArgumentError,
            "'b'",
        ),
        (
            {"a": {"requests_per_minute": 5}},
            {"shared": {"org": {"tokens_per_minute": 10}}},
            tb.InvalidArgumentError,
            "members",
        ),
        (
            {"a": {"requests_per_minute": 5}},
            {"shared": {"org": {"tokens_per_minute": -1, "members": ["a"]}}},
            tb.InvalidArgumentError,
            "shared['org'].tokens_per_minute",
        ),
        (
            {"a": {"requests_per_minute": 5}},
            {"shared": {"org": {"members": ["a"]}}},
            tb.InvalidArgumentError,
            "no rates",
        ),
    ],
)
def test_config_errors_say_where_they_are(
    config: dict[str, Any], extra: dict[str, Any], error: type[Exception], where: str
) -> None:
    with pytest.raises(error) as info:
        tb.BucketGroup.from_dict(config, **extra)
    assert isinstance(info.value, tb.TokenBucketError)
    assert where in str(info.value)


def test_an_unreadable_rate_string_says_where_it_is() -> None:
    with pytest.raises(tb.InvalidArgumentError) as info:
        tb.BucketGroup.from_dict({"a": {"tokens_per_minute": "lots"}})
    assert info.value.argument == "a.tokens_per_minute"
    assert "a.tokens_per_minute" in str(info.value)


def test_shared_errors_name_the_label() -> None:
    with pytest.raises(tb.InvalidArgumentError) as info:
        tb.BucketGroup.from_dict(
            {"a": {"requests_per_minute": 5}},
            shared={"org": {"tokens_per_minute": 10, "members": ["a", "ghost"]}},
        )
    assert "org" in str(info.value)
    assert "ghost" in str(info.value)


def test_an_unknown_name_is_a_library_error_and_a_key_error() -> None:
    group = tb.BucketGroup.from_dict({"a": {"requests_per_second": 1}})
    with pytest.raises(tb.UnknownNameError) as caught:
        group["b"]
    assert isinstance(caught.value, KeyError)
    assert isinstance(caught.value, tb.TokenBucketError)
    assert "'a'" in str(caught.value)


def test_a_member_listed_twice_is_refused() -> None:
    with pytest.raises(tb.InvalidArgumentError, match="twice"):
        tb.BucketGroup.from_dict(
            {"a": {"requests_per_second": 1}},
            shared={"org": {"tokens_per_second": 10, "members": ["a", "a"]}},
        )


# --- shared limits --------------------------------------------------------------------


def shared_group() -> tb.BucketGroup:
    return tb.BucketGroup.from_dict(
        {"a": {"requests_per_second": 100}, "b": {"requests_per_second": 100}},
        shared={"org": {"tokens_per_second": 10, "members": ["a", "b"]}},
    )


async def test_a_shared_limit_holds_across_its_members() -> None:
    limits = shared_group()
    start = now()
    grants: list[tuple[str, float, float]] = []

    async def call(name: str, tokens: float) -> None:
        async with limits.acquire(name, tokens=tokens):
            grants.append((name, now() - start, tokens))

    async with anyio.create_task_group() as tg:
        for i in range(30):
            tg.start_soon(call, "ab"[i % 2], float(1 + i % 4))
            if i % 3 == 0:
                await anyio.sleep(0.1)
    assert len(grants) == 30
    assert {name for name, _, _ in grants} == {"a", "b"}
    # Every rolling second holds at most 10 tokens, whichever name took them.
    log = sorted((t, tokens) for _, t, tokens in grants)
    for i, (t0, _) in enumerate(log):
        assert sum(x for t, x in log[i:] if t < t0 + 1 - 1e-6) <= 10


async def test_a_refund_on_one_member_lets_the_other_in_at_once() -> None:
    limits = shared_group()
    await settle_while_one_waits(
        limits.acquire("a", tokens=10), limits.acquire("b", tokens=5), 0.25, tokens=2
    )
    # a's own limit is untouched by b's call; the pool holds 2 + 5.
    assert limits["a"].statistics().available == {"requests": 99, "tokens": 3}
    assert limits["b"].statistics().available == {"requests": 99, "tokens": 3}


@pytest.mark.parametrize("b_used_first", [True, False], ids=["b-used-first", "b-unused"])
async def test_a_shared_limit_frees_on_time_for_a_member_used_later(b_used_first: bool) -> None:
    # Whether or not b was used before a drained the pool, it frees at 1 s, for b too.
    limits = shared_group()
    start = now()
    if b_used_first:
        async with limits.acquire("b", tokens=0):
            pass
    async with limits.acquire("a", tokens=10):
        pass
    await anyio.sleep(0.5)
    async with limits.acquire("b", tokens=5):
        assert now() - start == pytest.approx(1, abs=TOL)


async def test_a_shared_limit_is_taken_with_the_members_own_limits_atomically() -> None:
    limits = tb.BucketGroup.from_dict(
        {"a": {"tokens_per_second": 4}, "b": {"tokens_per_second": 100}},
        shared={"org": {"tokens_per_second": 10, "members": ["a", "b"]}},
    )
    async with limits.acquire("b", tokens=0):
        pass
    start = now()
    async with limits.acquire("a", tokens=4):
        pass
    # a's own limit is spent; a waiter on a holds none of the pool meanwhile.
    times: list[tuple[str, float]] = []

    async def call(name: str, tokens: float) -> None:
        async with limits.acquire(name, tokens=tokens):
            times.append((name, now() - start))

    async with anyio.create_task_group() as tg:
        tg.start_soon(call, "a", 3)
        await anyio.wait_all_tasks_blocked()
        assert limits["b"].statistics().available["tokens"] == 6
        tg.start_soon(call, "b", 6)
    assert sorted(times) == [("a", pytest.approx(1, abs=TOL)), ("b", 0.0)]
    with pytest.raises(tb.AmountExceedsLimitError):
        limits.acquire("b", tokens=11)  # more than the pool could ever grant


# --- bounded memory -------------------------------------------------------------------


async def test_memory_stays_bounded_with_many_keys() -> None:
    limits = tb.BucketGroup(default={"requests_per_second": 10})
    largest = 0
    for second in range(100):
        for i in range(1_000):
            async with limits.acquire(f"key-{second}-{i}"):
                pass
            largest = max(largest, len(limits))
        await anyio.sleep(1)
    assert largest < 5_000
    assert len(limits) < 5_000
    # A forgotten key comes back as new: its full limit at once.
    start = now()
    for _ in range(10):
        async with limits.acquire("key-0-0"):
            pass
    assert now() == start


async def test_a_key_is_not_forgotten_while_its_window_holds_grants() -> None:
    limits = tb.BucketGroup(default={"requests_per_minute": 2})
    start = now()
    for _ in range(2):
        async with limits.acquire("alice"):
            pass
    # Many other keys, each used once, over 30 s: alice's window is still full.
    for second in range(30):
        for i in range(100):
            async with limits.acquire(f"k-{second}-{i}"):
                pass
        await anyio.sleep(1)
    with pytest.raises(tb.AcquireTimeoutError):
        async with limits.acquire("alice", timeout=0):
            pass  # pragma: no cover
    async with limits.acquire("alice"):
        assert now() - start == pytest.approx(60, abs=TOL)


async def test_a_paused_key_is_not_forgotten() -> None:
    limits = tb.BucketGroup(default={"requests_per_second": 100})
    limits["alice"].pause(3_000)
    for second in range(5):
        for i in range(600):
            async with limits.acquire(f"k-{second}-{i}"):
                pass
        await anyio.sleep(1)
    assert limits["alice"].statistics().paused_until is not None


async def test_a_key_with_a_slot_in_use_is_not_forgotten() -> None:
    limits = tb.BucketGroup(default={"requests_per_second": 10, "max_concurrency": 1})
    release = anyio.Event()

    async def hold() -> None:
        async with limits.acquire("busy"):
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        busy = limits["busy"]
        await churn(limits, seconds=3)
        assert limits["busy"] is busy
        assert busy.statistics().in_flight == 1
        release.set()


async def churn(limits: tb.BucketGroup, *, seconds: int) -> None:
    """Use 1,500 new keys a second for ``seconds``: enough to make the group sweep."""
    for second in range(seconds):
        for i in range(1_500):
            async with limits.acquire(f"churn-{now()}-{second}-{i}"):
                pass
        await anyio.sleep(1)


async def test_a_key_with_an_open_lease_is_not_forgotten() -> None:
    limits = tb.BucketGroup(default={"tokens_per_minute": 1_000})
    start = now()
    async with limits.acquire("alice", tokens=100) as lease:
        alice = limits["alice"]
        await anyio.sleep(61)  # a long call: its grant left the window
        await churn(limits, seconds=1)
        lease.settle(tokens=1_000)
    async with limits.acquire("alice", tokens=200):
        assert now() - start == pytest.approx(122, abs=TOL)
    assert limits["alice"] is alice


async def test_memory_follows_the_keys_in_use_after_a_peak() -> None:
    limits = tb.BucketGroup(default={"requests_per_minute": 100})
    for i in range(40_000):  # a peak: 40,000 keys, each used once
        async with limits.acquire(f"peak-{i}"):
            pass
    assert len(limits) == 40_000  # every window still holds its grant
    await anyio.sleep(180)  # a few quiet minutes: every window has emptied
    for _ in range(3):  # a little traffic on one key
        async with limits.acquire("after"):
            pass
    held = len(limits._dynamic)
    assert held < 100, held  # forgotten without any full sweep or len()
    assert len(limits) == 1
    assert "peak-0" not in limits
    assert list(limits) == ["after"]


async def test_a_key_in_use_survives_the_tidying() -> None:
    limits = tb.BucketGroup(default={"requests_per_minute": 2})
    async with limits.acquire("alice"):
        pass
    alice = limits["alice"]
    for i in range(5_000):
        async with limits.acquire(f"k-{i}"):
            pass
    assert limits["alice"] is alice  # its window still holds a grant
    assert "alice" in limits
