"""The adaptive concurrency policies, fed scripted outcomes on an explicit clock."""

from __future__ import annotations

import asyncio
import builtins
import sys

import pytest

import tokenbucket as tb
from tokenbucket._adaptive import Controller, dropped_by
from tokenbucket._core.adaptive import AIMD, Gradient, Policy
from tokenbucket._loop import now as now_on_clock


def windows(
    policy: Policy,
    count: int,
    *,
    rtt: float = 0.1,
    in_flight: int | None = None,
    dropped: bool = False,
    start: float = 0.0,
) -> tuple[float, list[str | None]]:
    """Feed ``count`` full windows of calls of latency ``rtt`` (holding the limit, unless
    ``in_flight``), one call every ``rtt / 10`` s, each window's calls started after the
    window before ended; the clock after, and the reasons."""
    now, said = start, []
    for _ in range(count):
        now += rtt
        for _ in range(policy.window):
            now += rtt / 10
            held = policy.current if in_flight is None else in_flight
            reason = policy.sample(now, rtt, held, dropped)
        said.append(reason)
    return now, said


def test_a_window_moves_the_limit_once() -> None:
    policy = AIMD(4, 1, 100)
    for _ in range(9):
        assert policy.sample(1.0, 0.1, 4, False) is None
    assert policy.current == 4
    assert policy.sample(1.0, 0.1, 4, False) == "grow"
    assert policy.current == 8


def test_a_window_with_a_drop_ends_after_max_window_seconds_too() -> None:
    policy = AIMD(4, 1, 100, max_window=1.0)
    assert policy.sample(10.0, 0.1, 4, False) is None
    assert policy.sample(11.0, 0.1, 4, False) is None  # no drop: it waits for ten calls
    assert policy.sample(11.5, 0.1, 4, True) == "drop"  # a drop: acted on at once


def test_aimd_starts_slow_then_grows_by_one_and_backs_off_on_a_drop() -> None:
    policy = AIMD(4, 1, 1000)
    now, said = windows(policy, 3)
    assert said == ["grow"] * 3
    assert policy.current == 32  # doubled per window
    now, said = windows(policy, 1, dropped=True, start=now)
    assert said == ["drop"]
    assert policy.current == 16  # the whole window dropped: by half (else by 0.9)
    windows(policy, 2, start=now + 1)
    assert policy.limit == pytest.approx(18.0)  # one more per window after a drop


def test_a_burst_of_drops_lowers_the_limit_once() -> None:
    policy = AIMD(100, 1, 1000)
    # Calls that all started before the first drop was seen end dropped, window after
    # window: only the first window lowers the limit (the others leave it).
    now = 10.0
    for _ in range(5):
        for _ in range(10):
            now += 0.01
            policy.sample(now, rtt=5.0, in_flight=100, dropped=True)
    assert policy.current == 50  # (every call dropped: by half)
    # A call that started after the cut and is dropped lowers it again.
    for _ in range(10):
        now += 0.01
        policy.sample(now, rtt=0.01, in_flight=90, dropped=True)
    assert policy.current == 25


def test_a_limit_that_does_not_bind_does_not_grow() -> None:
    for policy in (AIMD(40, 1, 1000), Gradient(40, 1, 1000)):
        _, said = windows(policy, 20, in_flight=19)  # under half of it
        assert said == [None] * 20
        assert policy.current == 40


def test_the_bounds_hold() -> None:
    policy = AIMD(4, 2, 10)
    windows(policy, 10)
    assert policy.current == 10
    now = 100.0
    for _ in range(60):
        now, _ = windows(policy, 1, dropped=True, start=now + 1)
    assert policy.current == 2
    assert AIMD(0, 3, 10).current == 3  # an initial below the minimum
    assert Gradient(50, 1, 20).current == 20  # above the maximum


def test_gradient_starts_slow_while_the_latency_holds() -> None:
    policy = Gradient(4, 1, 1000)
    _, said = windows(policy, 3, rtt=0.1)
    assert said == ["grow"] * 3
    assert policy.current == 32


def test_gradient_shrinks_when_the_latency_rises_past_its_tolerance() -> None:
    policy = Gradient(100, 1, 1000)
    now, _ = windows(policy, 1, rtt=0.1)  # slow start: 200
    assert policy.current == 200
    # Three times the long-term latency: the gradient is at its floor, 0.5.
    now, said = windows(policy, 1, rtt=0.3, start=now)
    assert said == ["latency"]
    # 200 x 0.8 + (200 x 0.5 x 1.1) x 0.2
    assert policy.limit == pytest.approx(182.0, rel=1e-3)
    # Within the tolerance again: it grows by the queue allowance, smoothed.
    windows(policy, 5, rtt=0.1, start=now)
    before = policy.limit
    _, said = windows(policy, 1, rtt=0.11, start=now + 10)
    assert said == ["grow"]
    assert policy.limit == pytest.approx(before * 1.02)  # 10 % more, smoothed


def test_gradient_follows_a_falling_latency_down() -> None:
    policy = Gradient(10, 1, 1000)
    now, _ = windows(policy, 2, rtt=1.0)
    assert policy.base_latency == pytest.approx(1.0)
    now, _ = windows(policy, 1, rtt=0.1, start=now)
    assert policy.base_latency == pytest.approx(0.82)  # a fifth of the way per window
    windows(policy, 20, rtt=0.1, start=now)
    assert policy.base_latency == pytest.approx(0.1, abs=0.01)


def test_a_probe_learns_a_latency_that_rose_for_good() -> None:
    """The server got slower whatever the load: 0.3 s a call instead of 0.1. The limit
    shrinks, taking it for queueing, until a probe at half the limit finds the latency
    without load is 0.3 s now; then it grows again."""
    policy = Gradient(100, 1, 1000, probe_every=30.0)
    now, _ = windows(policy, 1, rtt=0.1)  # (slow start: 200)
    now, said = windows(policy, 20, rtt=0.3, start=now)
    assert set(said) == {"latency"}
    shrunk = policy.limit
    assert shrunk < 100
    now, said = windows(policy, 1, rtt=0.3, start=now + 30.0)  # the probe's time
    assert said == ["probe"]
    assert policy.limit == pytest.approx(shrunk / 2)
    # Calls that started before the probe are not its samples.
    assert policy.sample(now + 0.01, 1.0, 10, False) is None
    now, said = windows(policy, 1, rtt=0.3, start=now + 0.3)
    assert said == ["probed"]
    assert policy.base_latency == pytest.approx(0.3)
    assert policy.limit == pytest.approx(shrunk)
    _, said = windows(policy, 5, rtt=0.3, start=now)
    assert set(said) == {"grow"}


def test_a_drop_ends_a_probe_and_lowers_the_limit_it_would_restore() -> None:
    policy = Gradient(100, 1, 1000, probe_every=1.0)
    now, _ = windows(policy, 1, rtt=0.1)
    now, said = windows(policy, 1, rtt=0.1, start=now + 5.0)
    assert said == ["probe"]
    _, said = windows(policy, 1, rtt=0.1, dropped=True, start=now + 0.1)
    assert said == ["drop"]
    assert policy.limit == pytest.approx(100.0)  # 200, the whole window dropped: halved


def serve(policy: Policy, windows: int) -> tuple[list[int], list[float], int]:
    """A server of 50 workers, each call 0.1 s of service: more calls in flight queue
    (the latency grows with them), and past 100 in flight each call is refused at once.
    A client that always has more to send holds the limit. The limit per window, the
    latency of each call served, and the windows that lowered the limit for a drop,
    over the second half of the run."""
    workers, service, bound = 50, 0.1, 100
    now, limits, served, drops = 0.0, [], [], 0
    for w in range(windows):
        reason = None
        for _ in range(policy.window):
            held = policy.current
            dropped = held > bound
            rtt = 0.001 if dropped else service * max(1.0, held / workers)
            now += rtt / held
            reason = policy.sample(now, rtt, held, dropped)
            if w >= windows // 2 and not dropped:
                served.append(rtt)
        if w >= windows // 2:
            limits.append(policy.current)
            drops += reason == "drop"
    return limits, served, drops


def test_gradient_finds_the_knee_of_a_queueing_server() -> None:
    limits, served, drops = serve(Gradient(4, 1, 1000), 3000)
    assert drops == 0
    # Every worker busy (but while probing), the queue short: the latency within
    # 1.6x the latency without load.
    assert sum(limits) / len(limits) >= 50
    assert max(served) <= 0.16


def test_aimd_finds_the_servers_bound_and_stays_under_it() -> None:
    limits, _, drops = serve(AIMD(4, 1, 1000), 3000)
    # Loss-based: it fills the server's queue, and probes its bound now and then.
    assert min(limits) >= 40  # (a window of 503s halves it)
    assert max(limits) <= 101
    assert drops <= len(limits) / 10


def test_loops_on_the_monotonic_clock_share_it() -> None:
    """Two asyncio runs (or threads, or a run and threads) time leases on one clock:
    their samples never restart the policy's timing."""

    async def clock() -> object:
        return now_on_clock()[0]

    assert asyncio.run(clock()) is None
    assert asyncio.run(clock()) is None
    assert now_on_clock()[0] is None


def test_a_clock_change_that_ends_a_probe_is_a_change() -> None:
    controller = Controller(tb.adaptive(initial=40, probe_every=1.0), None, 0.0)
    policy = controller.policy
    assert isinstance(policy, Gradient)
    policy._probed = -100.0  # (a probe is due)
    now = 0.0
    for _ in range(10):
        now += 0.01
        change = controller.sample(None, now, 0.001, 40, False)
    assert change is not None
    assert change.reason == "probe"
    assert controller.limit == 20  # halved for the probe
    change = controller.sample("another loop", 5.0, 0.001, 1, False)
    assert change is not None
    assert change.limit == 40  # another clock: the probe is over, the limit restored


class _Status(Exception):
    def __init__(self, **attributes: object) -> None:
        self.__dict__.update(attributes)


class _Response:
    def __init__(self, status_code: int) -> None:
        self.status_code = status_code


class _Broken(Exception):
    @property
    def response(self) -> object:
        raise RuntimeError("no response")


class Timeout(OSError):  # (as requests names its timeouts: OSErrors)
    pass


class ReadTimeout(Timeout):
    pass


@pytest.mark.parametrize(
    ("error", "dropped"),
    [
        (None, False),
        (TimeoutError(), True),
        (ConnectionResetError(), True),
        (ReadTimeout(), True),
        (tb.AcquireTimeoutError("ours"), False),
        (tb.BackendUnavailableError("ours"), False),
        (_Status(status_code=503), True),
        (_Status(status=429), True),
        (_Status(code=500), True),
        (_Status(code=7, response=_Response(503)), True),
        (_Status(status_code=404), False),
        (_Status(response=_Response(200)), False),
        (_Broken(), False),
        (ValueError(), False),
        (GeneratorExit(), False),
    ],
)
def test_what_a_drop_is(error: BaseException | None, dropped: bool) -> None:
    assert dropped_by(error) is dropped


@pytest.mark.skipif(sys.version_info < (3, 11), reason="ExceptionGroup is 3.11's")
def test_a_group_of_errors_is_a_drop_if_one_is() -> None:
    group = getattr(builtins, "BaseExceptionGroup")  # noqa: B009 (3.11's)
    assert dropped_by(group("two", [ValueError(), TimeoutError()]))
    assert not dropped_by(group("two", [ValueError(), KeyError()]))
