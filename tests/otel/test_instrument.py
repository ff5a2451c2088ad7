"""tb.instrument: OpenTelemetry metrics of a limiter and of a group, read with the SDK's
in-memory reader, under virtual time (the figures are exact)."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anyio
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import tokenbucket as tb

pytestmark = pytest.mark.anyio


@pytest.fixture(params=["trio-mockclock", "asyncio-looptime"])
def anyio_backend(request: pytest.FixtureRequest) -> tuple[str, dict[str, Any]]:
    from tests.conftest import backend_params

    return backend_params(request.param)


def reader_and_provider() -> tuple[InMemoryMetricReader, MeterProvider]:
    reader = InMemoryMetricReader()
    return reader, MeterProvider(metric_readers=[reader])


def points(reader: InMemoryMetricReader) -> dict[str, list[tuple[dict[str, Any], Any]]]:
    """Every data point by metric name: (attributes, value or histogram point)."""
    data = reader.get_metrics_data()
    found: dict[str, list[tuple[dict[str, Any], Any]]] = {}
    if data is None:
        return found
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "tokenbucket"
            for metric in scope.metrics:
                for point in metric.data.data_points:
                    value = getattr(point, "value", point)
                    found.setdefault(metric.name, []).append((dict(point.attributes or {}), value))
    return found


async def test_a_limiter_reports_admissions_waits_and_pauses() -> None:
    reader, provider = reader_and_provider()
    limiter = tb.Limiter(
        requests_per_second=tb.per_second(1, burst=2), tokens_per_minute=100_000, name="gpt"
    )
    handle = tb.instrument(limiter, meter_provider=provider)
    for _ in range(4):  # two at once, then waits of 1 s each
        async with limiter.acquire(tokens=500) as lease:
            lease.settle(tokens=200)
    limiter.feedback({"retry-after": "30"}, status=429)
    seen = points(reader)
    gpt = {"tokenbucket.limiter": "gpt"}
    assert seen["tokenbucket.admitted"] == [(gpt, 4)]
    assert seen["tokenbucket.waited"] == [(gpt, 2)]
    assert seen["tokenbucket.wait.time"][0][1] == pytest.approx(2.0, abs=1e-4)
    assert seen["tokenbucket.rejections"] == [(gpt, 1)]
    assert seen["tokenbucket.pauses"] == [(gpt, 1)]
    assert sorted(
        (a["tokenbucket.dimension"], v) for a, v in seen["tokenbucket.admitted.units"]
    ) == [("requests", 4.0), ("tokens", 2000.0)]
    assert sorted(
        (a["tokenbucket.dimension"], v) for a, v in seen["tokenbucket.refunded.units"]
    ) == [("requests", 0.0), ("tokens", 1200.0)]
    assert seen["tokenbucket.paused"] == [(gpt, 1)]
    assert seen["tokenbucket.queue.length"] == [(gpt, 0)]
    assert seen["tokenbucket.in_flight"] == [(gpt, 0)]
    assert "tokenbucket.concurrency.limit" not in seen  # (no cap)
    [(attributes, histogram)] = seen["tokenbucket.wait.duration"]
    assert attributes == {**gpt, "tokenbucket.binding": "requests 1/second burst 2"}
    assert histogram.count == 2
    assert histogram.sum == pytest.approx(2.0, abs=1e-4)
    assert list(histogram.explicit_bounds) == list(tb.LimiterCounters.WAIT_BOUNDS[1:-1])
    handle.close()
    async with limiter.acquire(tokens=1):
        pass
    assert "tokenbucket.admitted" not in points(reader)  # closed: nothing observed


async def test_queue_length_and_in_flight_while_busy() -> None:
    reader, provider = reader_and_provider()
    limiter = tb.Limiter(requests_per_second=1000, max_concurrency=1, name="one")
    tb.instrument(limiter, meter_provider=provider)
    release = anyio.Event()

    async def hold() -> None:
        async with limiter.acquire():
            await release.wait()

    async with anyio.create_task_group() as tg:
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        tg.start_soon(hold)
        await anyio.wait_all_tasks_blocked()
        seen = points(reader)
        assert seen["tokenbucket.in_flight"] == [({"tokenbucket.limiter": "one"}, 1)]
        assert seen["tokenbucket.queue.length"] == [({"tokenbucket.limiter": "one"}, 1)]
        assert seen["tokenbucket.concurrency.limit"] == [({"tokenbucket.limiter": "one"}, 1)]
        release.set()


async def test_an_adaptive_caps_moves_show_in_its_gauge() -> None:
    reader, provider = reader_and_provider()
    cap = tb.adaptive(initial=10, min=1, max=100, policy="aimd", window=1)
    limiter = tb.Limiter(max_concurrency=cap, name="llm")
    tb.instrument(limiter, meter_provider=provider)
    async with limiter.acquire() as lease:
        lease.feedback({}, status=503)
    assert points(reader)["tokenbucket.concurrency.limit"] == [({"tokenbucket.limiter": "llm"}, 5)]


async def test_a_group_reports_each_model_including_later_ones() -> None:
    reader, provider = reader_and_provider()
    group = tb.BucketGroup(
        {"gpt-4o": tb.Limiter(requests_per_second=tb.per_second(1, burst=1))},
        default={"requests_per_second": 10},
    )
    tb.instrument(group, name="llm", meter_provider=provider)
    for _ in range(2):
        async with group.acquire("gpt-4o"):
            pass
    async with group.acquire("o3"):  # made after instrument()
        pass
    seen = points(reader)
    admitted = {
        a["tokenbucket.model"]: (a["tokenbucket.limiter"], v)
        for a, v in seen["tokenbucket.admitted"]
    }
    assert admitted == {"gpt-4o": ("llm", 2), "o3": ("llm", 1)}
    [(attributes, histogram)] = seen["tokenbucket.wait.duration"]
    assert attributes["tokenbucket.model"] == "gpt-4o"
    assert histogram.count == 1


async def test_bad_arguments() -> None:
    with pytest.raises(tb.ArgumentTypeError):
        tb.instrument("limiter")  # type: ignore[arg-type]
    with pytest.raises(tb.ArgumentTypeError):
        tb.instrument(tb.Limiter(requests_per_second=1), name=3)  # type: ignore[arg-type]


def test_without_opentelemetry_the_library_imports_and_instrument_says_what_to_install() -> None:
    code = (
        "import sys; sys.modules['opentelemetry'] = None\n"
        "import tokenbucket as tb\n"
        "assert not any(m.startswith('opentelemetry') and sys.modules[m] for m in sys.modules)\n"
        "try:\n"
        "    tb.instrument(tb.Limiter(requests_per_second=1))\n"
        "except ImportError as error:\n"
        "    print(error)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "pip install 'tokenbucket-async[otel]'" in out.stdout


async def test_each_collection_reads_the_limiter_again() -> None:
    reader, provider = reader_and_provider()
    limiter = tb.Limiter(requests_per_second=1000, name="x")
    tb.instrument(limiter, meter_provider=provider)
    for expected in range(1, 4):  # collections a moment apart: none reuses the last
        async with limiter.acquire():
            pass
        assert points(reader)["tokenbucket.admitted"] == [({"tokenbucket.limiter": "x"}, expected)]
        assert points(reader)["tokenbucket.timeouts"] == [({"tokenbucket.limiter": "x"}, 0)]


async def test_two_targets_on_one_provider_are_both_reported_and_close_one_at_a_time() -> None:
    reader, provider = reader_and_provider()
    a, b = tb.Limiter(requests_per_second=100, name="a"), tb.Limiter(requests_per_second=100)
    first = tb.instrument(a, meter_provider=provider)
    second = tb.instrument(b, name="b", meter_provider=provider)
    for limiter in (a, b):
        async with limiter.acquire():
            pass

    def limiters() -> list[str]:
        seen = points(reader)["tokenbucket.admitted"]
        return sorted(attributes["tokenbucket.limiter"] for attributes, _ in seen)

    assert limiters() == ["a", "b"]
    first.close()
    assert limiters() == ["b"]
    again = tb.instrument(a, name="a again", meter_provider=provider)
    assert limiters() == ["a again", "b"]
    second.close()
    again.close()
    assert "tokenbucket.admitted" not in points(reader)


def test_a_group_is_read_while_threads_make_members_without_deadlock() -> None:
    import threading

    reader, provider = reader_and_provider()
    group = tb.BucketGroup(default={"requests_per_second": 10})
    tb.instrument(group, meter_provider=provider)
    stop = threading.Event()

    def make() -> None:
        for k in range(2000):
            group[f"m{k}"]
        stop.set()

    maker = threading.Thread(target=make)
    maker.start()
    while not stop.is_set():
        reader.get_metrics_data()
    maker.join(30)
    assert not maker.is_alive()


def test_instrumenting_keeps_no_forgotten_member_alive() -> None:
    import gc
    import weakref

    reader, provider = reader_and_provider()
    group = tb.BucketGroup(default={"requests_per_second": 10})
    tb.instrument(group, meter_provider=provider)
    refs = [weakref.ref(group[f"m{k}"]) for k in range(50)]
    group._sweep()  # every one is at rest: forgotten
    gc.collect()
    assert all(ref() is None for ref in refs)
    assert "tokenbucket.admitted" not in points(reader)
