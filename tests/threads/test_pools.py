"""Group members that share a limit (a pool, ``shared=``) used at once by threads and by
event loops in other threads: the shared limit holds over all of its members, waiters
of one member are let in as soon as another gives capacity back, and the members
become shared together, on one lock."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import looptime
import pytest
import trio

import tokenbucket as tb
from tokenbucket._memory import MemoryStore
from tokenbucket._threads import SharedQueue

from ._support import in_child, window_conforms
from .test_shared import WAIT, in_thread, loop_in_thread, submit, until


class PoolLog:
    """Every grant of any member: (instant, what it took of the shared dimension)."""

    def __init__(self) -> None:
        self.grants: list[tuple[float, float]] = []


class _Recording:
    def __init__(self, multi: Any, log: PoolLog, index: int) -> None:
        self._multi = multi
        self._log = log
        self._index = index

    def try_take(self, request: Any, now: float) -> bool:
        granted = bool(self._multi.try_take(request, now))
        if granted:
            self._log.grants.append((now, request.amounts[self._index]))
        return granted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._multi, name)

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            object.__setattr__(self, name, value)
        else:  # e.g. the store taking the meters a grant freed
            setattr(self._multi, name, value)


def recorded(log: PoolLog, *limiters: tb.Limiter, dim: str = "tokens") -> None:
    for limiter in limiters:
        store: Any = limiter._store
        proxy = _Recording(store._multi, log, limiter.dimensions.index(dim))
        store._multi = proxy
        store._waiters.state = proxy


def pooled(org: Any, key: str = "tokens_per_second") -> tb.BucketGroup:
    member = {"requests_per_second": 100_000}
    return tb.BucketGroup.from_dict(
        {"a": dict(member), "b": dict(member), "c": dict(member)},
        shared={"org": {key: org, "members": ["a", "b"]}},
    )


def queues(group: tb.BucketGroup, *names: str) -> list[Any]:
    return [group[name]._store._waiters for name in names]  # type: ignore[attr-defined]


def test_threads_and_loops_share_a_pool_over_its_members() -> None:
    group = pooled(2_000)  # tokens per second, a window, taken 100 at a time
    log = PoolLog()
    recorded(log, group["a"], group["b"])

    def blocking(i: int) -> None:
        with group.acquire_blocking("ab"[i % 2], tokens=100, timeout=WAIT):
            pass

    async def tasks(name: str) -> None:
        async def one() -> None:
            async with group.acquire(name, tokens=100, timeout=WAIT):
                await asyncio.sleep(0)

        await asyncio.gather(*(one() for _ in range(10)))

    with loop_in_thread() as first, loop_in_thread() as second:
        futures = [submit(first, tasks("a")), submit(second, tasks("b"))]
        with ThreadPoolExecutor(8) as pool:
            list(pool.map(blocking, range(20)))
        for future in futures:
            future.result(WAIT)
    assert len(log.grants) == 40  # 4,000 tokens: a second and more of the pool
    window_conforms(log, 2_000, 1.0)
    a, b, c = queues(group, "a", "b", "c")
    assert isinstance(a, SharedQueue)
    assert isinstance(b, SharedQueue)
    assert a.lock is b.lock  # one lock for the members of one pool
    assert not isinstance(c, SharedQueue)  # a member outside it is left alone
    for name in "ab":
        stats = group[name].statistics()
        assert (stats.in_flight, stats.waiters) == (0, 0)


def test_members_become_shared_together_on_one_lock() -> None:
    group = pooled(1_000)
    with group.acquire_blocking("a", tokens=1):  # only a, and from a thread
        pass
    a, b = queues(group, "a", "b")
    assert isinstance(a, SharedQueue)
    assert isinstance(b, SharedQueue)
    assert a.lock is b.lock


def test_members_used_from_a_loop_become_shared_by_its_thread() -> None:
    group = pooled(1_000)

    async def use() -> None:
        async with group.acquire("a", tokens=1), group.acquire("b", tokens=1):
            pass

    with loop_in_thread() as loop:
        submit(loop, use()).result(WAIT)
        a, b = queues(group, "a", "b")
        assert not isinstance(a, SharedQueue)  # one loop: no lock
        assert a._thread == b._thread != threading.get_ident()
        # A thread now uses b: the loop serving both switches them, together.
        with group.acquire_blocking("b", tokens=1, timeout=WAIT):
            pass
        assert isinstance(a, SharedQueue)
        assert isinstance(b, SharedQueue)
        assert a.lock is b.lock
        submit(loop, use()).result(WAIT)  # and the loop goes on using them


def test_a_member_used_from_another_loop_moves_its_companions_with_it() -> None:
    group = pooled(1_000)

    async def use(name: str) -> None:
        async with group.acquire(name, tokens=1):
            pass

    asyncio.run(use("a"))
    asyncio.run(use("b"))  # a new loop: b binds to it, and a moves with it
    a, b = queues(group, "a", "b")
    assert a.key is b.key is not None


def test_a_waiter_of_one_member_is_let_in_when_another_gives_back() -> None:
    # A bucket of 100 that takes an hour to refill: only a refund can let b in.
    group = pooled(tb.Rate(100, 3600, burst=100), "tokens_per_hour")
    context = group["a"].acquire_blocking(tokens=100, timeout=WAIT)
    lease = context.__enter__()
    got: list[str] = []

    def wait_on_b() -> None:
        with group.acquire_blocking("b", tokens=100, timeout=WAIT):
            got.append("b")

    waiter = in_thread(wait_on_b)
    until(lambda: group["b"].statistics().waiters == 1)
    lease.settle(tokens=0)  # all of it given back: b's waiter fits at once
    waiter.join(WAIT)
    context.__exit__(None, None, None)
    assert got == ["b"]


def test_a_member_waiting_first_is_not_overtaken_by_another() -> None:
    group = pooled(tb.Rate(100, 1, burst=100))
    order: list[str] = []
    with group.acquire_blocking("a", tokens=100, timeout=WAIT):  # the pool is empty
        pass

    def take(name: str, amount: float) -> None:
        with group.acquire_blocking(name, tokens=amount, timeout=WAIT):
            order.append(name)

    first = in_thread(lambda: take("a", 80))
    until(lambda: group["a"].statistics().waiters == 1)
    second = in_thread(lambda: take("b", 10))  # would fit long before a's 80
    until(lambda: group["b"].statistics().waiters == 1)
    first.join(WAIT)
    second.join(WAIT)
    assert order == ["a", "b"]


def test_a_pool_with_waiters_on_a_virtual_clock_is_not_shared() -> None:
    group = pooled(tb.Rate(10, 1, burst=10))

    async def main() -> None:
        async with group.acquire("a", tokens=10):
            pass

        async def wait_on_b() -> None:
            async with group.acquire("b", tokens=10):
                pass

        task = asyncio.ensure_future(wait_on_b())
        await asyncio.sleep(0)  # b waits on the loop's virtual clock

        def from_a_thread() -> None:
            with group.acquire_blocking("a", tokens=1, timeout=1.0):
                pass

        with pytest.raises(RuntimeError, match=r"time\.monotonic"):
            await asyncio.to_thread(from_a_thread)
        await task  # and is served there as before

    loop = looptime.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def slow_pool() -> tb.BucketGroup:
    """A shared bucket of 100 tokens that takes an hour to refill: in a test, only what
    is there counts."""
    return pooled(tb.Rate(100, 3600, burst=100), "tokens_per_hour")


def park_a_claimant_of_a_in_a_closed_loop(group: tb.BucketGroup) -> None:
    """60 of the pool taken; a task of ``a`` waits for 100 (it heads a's queue and
    claims the pool), and its loop is closed with it parked."""
    loop = asyncio.new_event_loop()

    async def main() -> None:
        async with group.acquire("a", tokens=60):
            pass

        async def wait() -> None:
            async with group.acquire("a", tokens=100):
                pass  # pragma: no cover - never granted

        task = loop.create_task(wait())
        await asyncio.sleep(0)
        assert not task.done()
        assert group["a"].statistics().waiters == 1

    loop.run_until_complete(main())
    loop.close()


@pytest.mark.filterwarnings("ignore:coroutine .* was never awaited")
@pytest.mark.parametrize("where", ["a thread", "a new loop"])
def test_a_claimant_dropped_with_its_closed_loop_claims_nothing_any_more(where: str) -> None:
    group = slow_pool()
    park_a_claimant_of_a_in_a_closed_loop(group)
    # 40 are left: 10 fit at once, for b and for a.
    if where == "a thread":
        with group.acquire_blocking("b", tokens=10, timeout=WAIT):
            pass
        with group.acquire_blocking("a", tokens=10, timeout=WAIT):
            pass
    else:

        async def use() -> None:
            async with group.acquire("b", tokens=10, timeout=WAIT):
                pass
            async with group.acquire("a", tokens=10, timeout=WAIT):
                pass

        asyncio.run(use())
    assert group["b"].statistics().available["tokens"] == pytest.approx(20, abs=0.1)


def test_a_child_process_after_fork_keeps_no_claim_of_its_parents_waiters() -> None:
    group = slow_pool()
    with group.acquire_blocking("a", tokens=60, timeout=WAIT):
        pass

    def claim() -> None:  # waits until its timeout, heading a's queue: claims the pool
        with pytest.raises(tb.AcquireTimeoutError):
            group.acquire_blocking("a", tokens=100, timeout=1.0).__enter__()

    parent = in_thread(claim)
    until(lambda: group["a"].statistics().waiters == 1)

    def in_the_child() -> None:  # the claimant's thread stayed in the parent
        with group.acquire_blocking("b", tokens=10, timeout=2.0):
            pass

    code = in_child(in_the_child)
    parent.join(WAIT)
    assert code == 0


def test_a_waiter_of_one_member_granted_as_its_loop_closed_gives_back_to_the_other() -> None:
    group = slow_pool()
    context = group["a"].acquire_blocking(tokens=100, timeout=WAIT)
    lease = context.__enter__()  # the whole pool
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever)
    thread.start()

    async def wait_on_b() -> None:
        async with group.acquire("b", tokens=100):
            pass

    future = asyncio.run_coroutine_threadsafe(wait_on_b(), loop)
    until(lambda: group["b"].statistics().waiters == 1)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(WAIT)
    loop.close()  # closed with b's waiter parked: never to run
    lease.settle(tokens=0)  # all back: b's waiter is granted, and cannot use it
    context.__exit__(None, None, None)
    future.cancel()
    # What b's lost waiter was granted went back to the pool, for a.
    with group.acquire_blocking("a", tokens=100, timeout=WAIT):
        pass


def test_no_member_is_used_before_every_member_is_moved_onto_the_shared_clock(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    group = pooled(1_000)
    a, _ = queues(group, "a", "b")
    events: list[str] = []
    on_bind = MemoryStore.on_bind

    def slow_on_bind(self: MemoryStore, now: float, moved: bool) -> None:
        if isinstance(self._waiters, SharedQueue):  # the switch: made slow on purpose
            events.append("moving")
            time.sleep(0.1)
            on_bind(self, now, moved)
            events.append("moved")
        else:
            on_bind(self, now, moved)

    monkeypatch.setattr(MemoryStore, "on_bind", slow_on_bind)

    def taker() -> None:  # as soon as a member is switched, a loop in a thread takes
        until(lambda: isinstance(a, SharedQueue))

        async def take() -> None:
            async with group.acquire("a", tokens=1, timeout=WAIT):
                events.append("granted")

        asyncio.run(take())

    async def main() -> None:
        async with group.acquire("a", tokens=1):  # both bound to this trio run
            pass
        thread = in_thread(taker)
        await trio.to_thread.run_sync(
            lambda: group.acquire_blocking("b", tokens=1, timeout=WAIT).__enter__()
        )
        await trio.to_thread.run_sync(thread.join, WAIT)

    trio.run(main)
    assert events == ["moving", "moved", "moving", "moved", "granted"]
