"""The fake provider's accounting at fixed instants: tables of ``now``, no server, no sleep.

Each table is a sequence of requests against one ``Provider``: the instant it arrives,
its ``max_tokens`` (its prompt is 40 characters, 10 tokens, so it is charged
``max_tokens + 10`` tokens) and what the provider must answer.
"""

from __future__ import annotations

import math
from dataclasses import FrozenInstanceError

import fake_provider
import pytest
from fake_provider.provider import Admitted, ChatRequest, Provider, Refused, ServerStats


def request(max_tokens: int = 100) -> ChatRequest:
    return ChatRequest("gpt-test", [{"role": "user", "content": "x" * 40}], max_tokens)


def remaining(answer: Admitted | Refused | dict[str, str]) -> tuple[str, str]:
    headers = answer if isinstance(answer, dict) else dict(answer.headers)
    return headers["x-ratelimit-remaining-requests"], headers["x-ratelimit-remaining-tokens"]


# (now, max_tokens, expected): "ok", or the limit that refuses and its retry_after.
Step = tuple[float, int, str | tuple[str, float]]

REQUEST_LIMIT: list[Step] = [  # 3 requests per 3 s: one comes back every second
    (0.0, 100, "ok"),
    (0.0, 100, "ok"),
    (0.0, 100, "ok"),
    (0.0, 100, ("requests", 1.0)),
    (0.5, 100, ("requests", 0.5)),
    (1.0, 100, "ok"),  # the refusals took nothing: exactly one request's worth came back
    (1.0, 100, ("requests", 1.0)),
    (2.5, 100, "ok"),
    (9.0, 100, "ok"),  # the bucket is full again, not fuller
    (9.0, 100, "ok"),
    (9.0, 100, "ok"),
    (9.0, 100, ("requests", 1.0)),
]
TOKEN_LIMIT: list[Step] = [  # 1,000 tokens per 10 s: 100 come back every second
    (0.0, 390, "ok"),
    (0.0, 390, "ok"),
    (0.0, 390, ("tokens", 2.0)),  # 200 left, 400 wanted
    (0.0, 190, "ok"),  # exactly what is left
    (0.0, 5000, ("tokens", math.inf)),  # more than the limit: never
    (0.5, 90, ("tokens", 0.5)),  # 50 back, 100 wanted
    (1.0, 90, "ok"),
]
LONGER_WAIT: list[Step] = [  # 2 requests and 100 tokens per 10 s
    (0.0, 90, "ok"),
    (0.0, 10, ("tokens", 2.0)),  # a request is left, but no tokens
    (2.0, 10, "ok"),
    (2.0, 10, ("requests", 3.0)),  # 0.4 requests (3 s to go) and 0 tokens (2 s to go)
    (4.0, 90, ("tokens", 8.0)),  # 0.8 requests (1 s to go) and 20 tokens (8 s to go)
]


@pytest.mark.parametrize(
    ("rpm", "tpm", "period", "steps"),
    [(3, 10**6, 3, REQUEST_LIMIT), (100, 1000, 10, TOKEN_LIMIT), (2, 100, 10, LONGER_WAIT)],
    ids=["requests", "tokens", "longer-wait"],
)
def test_admissions_and_refusals_at_fixed_instants(
    rpm: int, tpm: int, period: float, steps: list[Step]
) -> None:
    provider = Provider(rpm=rpm, tpm=tpm, period=period, now=0.0)
    for now, max_tokens, expected in steps:
        decision = provider.chat(request(max_tokens), now)
        if expected == "ok":
            assert isinstance(decision, Admitted), (now, max_tokens, decision)
        else:
            assert isinstance(decision, Refused), (now, max_tokens, decision)
            assert (decision.limit, decision.retry_after) == pytest.approx(expected)
    stats = provider.stats
    assert stats.requests_ok == sum(expected == "ok" for _, _, expected in steps)
    assert stats.requests_429 == len(steps) - stats.requests_ok
    charged = [max_tokens + 10 for _, max_tokens, expected in steps if expected == "ok"]
    assert stats.tokens_charged == sum(charged)
    assert (stats.first_request_at, stats.last_request_at) == (0.0, steps[-1][0])


HEADERS_AFTER_EACH_CHARGE = [  # 10 requests and 1,000 tokens per 60 s; 110 tokens a request
    (0.0, ("9", "890", "6s", "6.6s")),
    (3.0, ("8", "830", "9s", "10.2s")),  # 9.5 - 1 and 940 - 110
    (12.0, ("9", "870", "6s", "7.8s")),  # full again (10 and 980) before the charge
]


def test_rate_limit_headers_after_each_charge() -> None:
    provider = Provider(rpm=10, tpm=1000, period=60, now=0.0)
    names = ("remaining-requests", "remaining-tokens", "reset-requests", "reset-tokens")
    for now, expected in HEADERS_AFTER_EACH_CHARGE:
        headers = dict(provider.chat(request(), now).headers)
        assert headers["x-ratelimit-limit-requests"] == "10"
        assert headers["x-ratelimit-limit-tokens"] == "1000"
        assert tuple(headers[f"x-ratelimit-{name}"] for name in names) == expected, now


@pytest.mark.parametrize("now", [-5.0, 0.0, 60.0, 1e6])
def test_a_new_provider_is_full_at_any_instant(now: float) -> None:
    headers = dict(Provider(rpm=10, tpm=1000, period=60, now=0.0).headers(now))
    assert remaining(headers) == ("10", "1000")
    assert headers["x-ratelimit-reset-requests"] == headers["x-ratelimit-reset-tokens"] == "0s"


@pytest.mark.parametrize(
    ("wait", "retry_after", "retry_after_ms"),
    [(1.0, "1", "1000"), (0.5, "1", "500"), (2.0001, "3", "2001"), (0.0004, "1", "1")],
)
def test_retry_after_headers_round_up(wait: float, retry_after: str, retry_after_ms: str) -> None:
    provider = Provider(rpm=1, tpm=1000, period=10, now=0.0)
    provider.chat(request(), 0.0)
    refused = provider.chat(request(), 10.0 - wait)
    assert isinstance(refused, Refused)
    assert refused.limit == "requests"
    headers = dict(refused.headers)
    assert (headers["retry-after"], headers["retry-after-ms"]) == (retry_after, retry_after_ms)
    assert f"Please try again in {fake_provider.format_duration(wait)}." in refused.message


def test_refusal_messages_name_the_limit_like_openai() -> None:
    provider = Provider(rpm=3, tpm=1000, period=60, now=0.0)
    too_large = provider.chat(request(5000), 0.0)
    for _ in range(3):
        provider.chat(request(), 0.0)
    rate_limited = provider.chat(request(), 0.0)

    assert isinstance(too_large, Refused)
    assert too_large.message == (
        "Request too large for gpt-test on tokens per 60s (TPM): Limit 1000, Requested 5010. "
        "The input or output tokens must be reduced in order to run successfully."
    )
    assert not any(name.startswith("retry-after") for name, _ in too_large.headers)
    assert isinstance(rate_limited, Refused)
    assert rate_limited.message == (
        "Rate limit reached for gpt-test on requests per 60s (RPM): Limit 3, Used 3, "
        "Requested 1. Please try again in 20s."
    )
    assert remaining(rate_limited) == ("0", str(1000 - 3 * 110))


@pytest.mark.parametrize("count_usage", [False, True])
def test_count_usage_gives_the_unused_max_tokens_back(count_usage: bool) -> None:
    provider = Provider(rpm=100, tpm=1000, period=10, now=0.0, count_usage=count_usage)
    admitted = provider.chat(request(390), 0.0)  # charged 400 on arrival
    assert isinstance(admitted, Admitted)
    used = admitted.prompt_tokens + admitted.completion_tokens
    assert admitted.completion_tokens < 390
    assert remaining(admitted)[1] == str(1000 - (used if count_usage else 400))
    assert (provider.stats.tokens_charged, provider.stats.tokens_used) == (400, used)


@pytest.mark.parametrize("max_tokens", [1, 2, 3, 10, 100, 255, 256])
def test_completions_are_deterministic_and_at_least_half_of_max_tokens(max_tokens: int) -> None:
    completion = request(max_tokens).completion_tokens()
    assert math.ceil(max_tokens / 2) <= completion <= max_tokens
    assert request(max_tokens).completion_tokens() == completion
    provider = Provider(rpm=10, tpm=10**6, period=60, now=0.0)
    first, second = provider.chat(request(max_tokens), 0.0), provider.chat(request(max_tokens), 1)
    assert isinstance(first, Admitted)
    assert isinstance(second, Admitted)
    assert first.completion_tokens == second.completion_tokens == completion
    assert (first.prompt_tokens, first.serial, second.serial) == (10, 1, 2)


def test_stats_snapshots_reset_and_refill() -> None:
    provider = Provider(rpm=1, tpm=1000, period=60, now=1000.0)
    assert provider.stats == ServerStats()
    assert provider.stats.duration == 0.0
    admitted = provider.chat(request(), 1000.0)
    assert isinstance(provider.chat(request(), 1001.0), Refused)
    stats = provider.stats
    provider.reset_stats()
    assert provider.stats == ServerStats()
    provider.refill(1001.0)
    again = provider.chat(request(), 1001.0)

    assert isinstance(admitted, Admitted)
    assert (stats.requests_ok, stats.requests_429) == (1, 1)
    assert (stats.first_request_at, stats.last_request_at, stats.duration) == (1000, 1001, 1)
    assert stats.tokens_charged == 110
    assert stats.tokens_used == admitted.prompt_tokens + admitted.completion_tokens
    assert isinstance(again, Admitted)
    assert again.serial == 2, "serials go on across reset_stats()"
    assert provider.stats.first_request_at == 1001.0
    with pytest.raises(FrozenInstanceError):
        stats.requests_ok = 0  # type: ignore[misc]


def test_an_instant_before_the_last_change_neither_refills_nor_drains() -> None:
    provider = Provider(rpm=10, tpm=1000, period=60, now=0.0)
    provider.chat(request(), 30.0)
    assert provider.headers(20.0) == provider.headers(30.0)
    assert remaining(provider.chat(request(), 20.0)) == ("8", "780")


@pytest.mark.parametrize(
    ("limits", "match"),
    [
        ({"rpm": 0, "tpm": 10, "period": 1}, "rpm"),
        ({"rpm": True, "tpm": 10, "period": 1}, "rpm"),
        ({"rpm": 1, "tpm": -1, "period": 1}, "tpm"),
        ({"rpm": 1, "tpm": 1, "period": 0}, "period"),
        ({"rpm": 1, "tpm": 1, "period": math.inf}, "period"),
        ({"rpm": 1, "tpm": 1, "period": math.nan}, "period"),
    ],
)
def test_invalid_limits_are_rejected(limits: dict[str, float], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        Provider(**limits, now=0.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0, "0s"),
        (-1, "0s"),
        (0.0001, "1ms"),
        (0.0004, "1ms"),
        (0.12, "120ms"),
        (0.9999, "1s"),
        (1, "1s"),
        (1.5, "1.5s"),
        (6.6, "6.6s"),
        (59.9991, "1m0s"),
        (60, "1m0s"),
        (90.25, "1m30.25s"),
        (360, "6m0s"),
        (3600, "1h0m0s"),
        (3725.25, "1h2m5.25s"),
    ],
)
def test_durations_are_formatted_like_go(seconds: float, text: str) -> None:
    assert fake_provider.format_duration(seconds) == text


@pytest.mark.parametrize(
    ("contents", "tokens"),
    [
        ([], 0),
        (["abcd"], 1),
        (["abcde"], 2),
        (["abc", "de"], 2),  # ceil(5 / 4) over all messages, not 1 + 1
        (["abc", "de", None], 2),
        ([None], 0),
        ([[{"type": "text", "text": "hello"}]], 2),
        ([[{"type": "text", "text": "abcdefgh"}, {"type": "image_url", "image_url": {}}]], 2),
        (["é" * 8], 2),  # characters, not bytes
    ],
)
def test_prompt_token_estimate(contents: list[object], tokens: int) -> None:
    messages = [{"role": "user", "content": content} for content in contents]
    assert fake_provider.estimate_prompt_tokens(messages) == tokens


EPOCH = 1_700_000_000.0  # 2023-11-14T22:13:20Z


def test_anthropic_headers_are_the_same_buckets_with_rfc_3339_resets() -> None:
    provider = Provider(rpm=10, tpm=1000, period=60, now=0.0)
    provider.chat(request(), 0.0)  # the OpenAI route charges the same buckets
    answer = provider.messages(request(), 3.0, EPOCH + 3.0)
    assert isinstance(answer, Admitted)
    assert answer.headers == [
        ("anthropic-ratelimit-requests-limit", "10"),
        ("anthropic-ratelimit-requests-remaining", "8"),  # 9.5 - 1
        ("anthropic-ratelimit-requests-reset", "2023-11-14T22:13:32Z"),  # 9 s after 3.0
        ("anthropic-ratelimit-tokens-limit", "1000"),
        ("anthropic-ratelimit-tokens-remaining", "830"),  # 940 - 110
        ("anthropic-ratelimit-tokens-reset", "2023-11-14T22:13:33.2Z"),  # 10.2 s after 3.0
    ]
    full = dict(Provider(rpm=1, tpm=1, period=60, now=0.0).anthropic_headers(5.0, EPOCH))
    assert full["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:13:20Z", "full: now"
    assert provider.stats.requests_ok == 2


def test_anthropic_refusals_carry_retry_after_in_whole_seconds_only() -> None:
    provider = Provider(rpm=1, tpm=1000, period=10, now=0.0)
    too_large = provider.messages(request(5000), 0.0, EPOCH)
    assert isinstance(provider.messages(request(), 0.0, EPOCH), Admitted)
    refused = provider.messages(request(), 7.5, EPOCH + 7.5)

    assert isinstance(refused, Refused)
    assert refused.limit == "requests"
    assert refused.retry_after == pytest.approx(2.5)
    headers = dict(refused.headers)
    assert headers["retry-after"] == "3"
    assert "retry-after-ms" not in headers
    assert not any(name.startswith("x-ratelimit") for name in headers)
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert headers["anthropic-ratelimit-requests-reset"] == "2023-11-14T22:13:30Z"
    assert "exceed the rate limit for gpt-test of 1 requests per 10s" in refused.message
    assert "Please try again in 2.5s." in refused.message

    assert isinstance(too_large, Refused)
    assert (too_large.limit, too_large.retry_after) == ("tokens", math.inf)
    assert "retry-after" not in dict(too_large.headers), "it will never fit"
    assert "can never be admitted" in too_large.message
    assert (provider.stats.requests_ok, provider.stats.requests_429) == (1, 2)


@pytest.mark.parametrize(
    ("unix", "text"),
    [
        (0, "1970-01-01T00:00:00Z"),
        (EPOCH, "2023-11-14T22:13:20Z"),
        (EPOCH + 0.5, "2023-11-14T22:13:20.5Z"),
        (EPOCH + 0.33, "2023-11-14T22:13:20.33Z"),  # not .331: a float's error is no excess
        (EPOCH + 0.0101, "2023-11-14T22:13:20.011Z"),  # rounded up
        (EPOCH + 0.9999, "2023-11-14T22:13:21Z"),
        (EPOCH + 110 * 60 / 1000, "2023-11-14T22:13:26.6Z"),
    ],
)
def test_rfc_3339_times_round_up_to_milliseconds(unix: float, text: str) -> None:
    assert fake_provider.format_rfc3339(unix) == text


def test_anthropic_input_and_output_token_limits_are_buckets_of_their_own() -> None:
    provider = Provider(rpm=10, tpm=10_000, period=60, now=0.0, itpm=100, otpm=300)
    first = provider.messages(request(100), 0.0, EPOCH)  # 10 input, 100 output tokens
    assert isinstance(first, Admitted)
    headers = dict(first.headers)
    assert headers["anthropic-ratelimit-input-tokens-limit"] == "100"
    assert headers["anthropic-ratelimit-input-tokens-remaining"] == "90"
    assert headers["anthropic-ratelimit-input-tokens-reset"] == "2023-11-14T22:13:26Z"
    assert headers["anthropic-ratelimit-output-tokens-limit"] == "300"
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == "200"
    assert headers["anthropic-ratelimit-output-tokens-reset"] == "2023-11-14T22:13:40Z"
    assert headers["anthropic-ratelimit-tokens-remaining"] == "9890"

    long_output = provider.messages(request(250), 0.0, EPOCH)  # 50 output tokens short
    long_prompt = ChatRequest("gpt-test", [{"role": "user", "content": "x" * 400}], 10)
    refused_prompt = provider.messages(long_prompt, 0.0, EPOCH)  # 10 input tokens short
    assert isinstance(long_output, Refused)
    assert (long_output.limit, long_output.retry_after) == ("output_tokens", 10.0)
    assert "of 300 output tokens per 60s" in long_output.message
    assert isinstance(refused_prompt, Refused)
    assert refused_prompt.limit == "input_tokens"
    assert refused_prompt.retry_after == pytest.approx(6.0)
    assert dict(refused_prompt.headers)["retry-after"] == "6"

    openai_headers = dict(provider.chat(request(10), 0.0).headers)
    assert not any("input" in name or "output" in name for name in openai_headers)
    assert remaining(openai_headers) == ("8", str(9890 - 20))


def test_count_usage_gives_unused_output_back_to_the_output_limit_too() -> None:
    provider = Provider(rpm=10, tpm=10_000, period=60, now=0.0, otpm=300, count_usage=True)
    answer = provider.messages(request(100), 0.0, EPOCH)
    assert isinstance(answer, Admitted)
    headers = dict(answer.headers)
    assert headers["anthropic-ratelimit-output-tokens-remaining"] == str(
        300 - answer.completion_tokens
    )
    assert headers["anthropic-ratelimit-tokens-remaining"] == str(
        10_000 - 10 - answer.completion_tokens
    )


def test_invalid_input_and_output_limits_are_rejected() -> None:
    with pytest.raises(ValueError, match="itpm"):
        Provider(rpm=1, tpm=1, period=1, now=0.0, itpm=0)
    with pytest.raises(ValueError, match="otpm"):
        Provider(rpm=1, tpm=1, period=1, now=0.0, otpm=1.5)  # type: ignore[arg-type]
