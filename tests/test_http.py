"""The shared HTTP client: retries, Retry-After, rate limits, redaction, bounded concurrency."""

from __future__ import annotations

import random

import pytest

from fakes.pmc_server import FakeHttpServer
from medmax_cli.http import (
    HttpClient,
    HttpError,
    RateLimiter,
    RetryPolicy,
    bounded_map,
    parse_retry_after,
    redact_url,
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def server():
    with FakeHttpServer() as s:
        yield s


def make_client(clock: FakeClock | None = None, **kw) -> HttpClient:
    clock = clock or FakeClock()
    kw.setdefault("retry", RetryPolicy(attempts=4, backoff_base=0.001, backoff_max=0.01))
    return HttpClient(
        rates={"127.0.0.1": 0},
        clock=clock,
        sleep=clock.sleep,
        rng=random.Random(0),
        timeout=kw.pop("timeout", 5.0),
        **kw,
    )


def test_retries_429_honouring_retry_after_then_succeeds(server):
    server.route("/a", b"hello")
    server.fault("/a", ("status", 429, {"Retry-After": "7"}), ("status", 503))
    clock = FakeClock()
    with make_client(clock) as client:
        assert client.get_bytes(f"{server.base}/a") == b"hello"
    assert server.hits("/a") == 3
    assert clock.sleeps[0] == pytest.approx(7.0)  # Retry-After wins over the tiny backoff
    assert clock.sleeps[1] < 0.02


def test_retry_after_http_date():
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now=1445412480.0) == pytest.approx(10.0)
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None


def test_reset_truncated_and_slow_responses_are_retried(server):
    server.route("/b", b"x" * 5000)
    server.fault("/b", ("reset",), ("truncate",), ("slow", 1.5))
    with make_client(timeout=1.0) as client:
        assert client.get_bytes(f"{server.base}/b") == b"x" * 5000
        assert client.retries == 3
    assert server.hits("/b") == 4


def test_gives_up_with_a_clear_error_and_no_secret(server, monkeypatch):
    server.route("/c", b"never")
    server.fault("/c", *[("status", 500)] * 10)
    with make_client() as client:
        with pytest.raises(HttpError) as info:
            client.get(f"{server.base}/c", params={"api_key": "sekrit-value-123", "q": "x"})
    message = str(info.value)
    assert "sekrit" not in message and "api_key=***" in message and "/c" in message
    assert "HTTP 500" in message and info.value.status == 500
    assert server.hits("/c") == 4


def test_client_error_is_not_retried(server):
    with make_client() as client:
        with pytest.raises(HttpError) as info:
            client.get(f"{server.base}/missing")
    assert info.value.status == 404 and server.hits("/missing") == 1


def test_env_api_keys_are_scrubbed(monkeypatch):
    monkeypatch.setenv("NCBI_API_KEY", "abcd1234efgh")
    client = make_client()
    assert "abcd1234efgh" not in client.redact("http://x/y?tool=z&k=abcd1234efgh")
    client.close()
    assert redact_url("https://u:pw@h/p?token=t&x=1") == "https://h/p?token=***&x=1"


def test_user_agent_names_tool_and_contact(server, monkeypatch):
    server.route("/ua", b"ok")
    monkeypatch.setenv("MEDMAX_CONTACT", "someone@example.org")
    with make_client() as client:
        client.get(f"{server.base}/ua")
    agent = server.log[-1]["headers"]["User-Agent"]
    assert agent.startswith("medmax-cli/") and "mailto:someone@example.org" in agent


def test_post_json_round_trip(server):
    server.route("/v1/chat/completions", {"choices": [{"message": {"content": "hi"}}]})
    server.fault("/v1/chat/completions", ("status", 502))
    with make_client() as client:
        answer = client.post_json(
            f"{server.base}/v1/chat/completions", {"model": "m"}, headers={"Authorization": "Bearer k"}
        )
    assert answer["choices"][0]["message"]["content"] == "hi"
    assert server.log[-1]["body"] == b'{"model":"m"}'


def test_rate_limiter_spaces_requests_per_host():
    clock = FakeClock()
    limiter = RateLimiter({"ncbi.nlm.nih.gov": 3.0}, default=10.0, clock=clock, sleep=clock.sleep)
    for _ in range(7):
        limiter.acquire("eutils.ncbi.nlm.nih.gov")
    # first request free, six more at 3/s: 2 s of waiting in all
    assert sum(clock.sleeps) == pytest.approx(2.0)
    clock.sleeps.clear()
    limiter.acquire("www.ebi.ac.uk")  # another bucket: no wait
    assert clock.sleeps == []


def test_default_rates_follow_ncbi_key(monkeypatch):
    from medmax_cli.http import default_rates

    assert default_rates({})["ncbi.nlm.nih.gov"] == 3.0
    assert default_rates({"NCBI_API_KEY": "x"})["ncbi.nlm.nih.gov"] == 10.0


def test_bounded_map_keeps_order_and_errors():
    def fn(x: int) -> int:
        if x == 3:
            raise ValueError("three")
        return x * 10

    outcomes = bounded_map(fn, range(6), max_workers=3)
    assert [o.value for o in outcomes] == [0, 10, 20, None, 40, 50]
    assert isinstance(outcomes[3].error, ValueError)
