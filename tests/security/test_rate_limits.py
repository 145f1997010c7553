"""Rate limits on the public endpoints: token buckets per client address and per link token, 429 with
Retry-After once a bucket is empty, requests again once it refilled. A fake clock: nothing sleeps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine

from app.api.main import create_app
from app.api.ratelimit import Rate, TokenBuckets, client_key
from app.keys import create_key
from app.settings import Settings
from storage.tables import Role
from tests.conftest import free_port


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


# --- the bucket ----------------------------------------------------------------------------------------


def test_a_bucket_gives_its_burst_then_one_request_per_refill_interval() -> None:
    clock = Clock()
    buckets = TokenBuckets(Rate(per_s=0.5, burst=3), clock=clock)
    assert [buckets.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert buckets.take("a") == pytest.approx(2.0)            # one token every 2 s
    assert buckets.take("b") == 0.0                           # another key has its own bucket
    clock.now += 1.0
    assert buckets.take("a") == pytest.approx(1.0)            # a refused request took nothing
    clock.now += 1.0
    assert buckets.take("a") == 0.0
    assert buckets.take("a") == pytest.approx(2.0)
    clock.now += 3600
    assert [buckets.take("a") for _ in range(4)][-2:] == [0.0, pytest.approx(2.0)]   # full again, not more


def test_buckets_forget_the_least_recently_used_key_beyond_their_bound() -> None:
    buckets = TokenBuckets(Rate(per_s=1, burst=1), clock=Clock(), max_keys=3)
    for key in "abcd":
        buckets.take(key)
    assert len(buckets) == 3
    assert buckets.take("a") == 0.0            # "a" was forgotten: full again
    assert buckets.take("d") > 0               # "d" is still counted


@pytest.mark.parametrize(("host", "key"), [
    ("203.0.113.7", "203.0.113.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),           # one subscriber's /64 is one client
    ("::ffff:203.0.113.7", "203.0.113.7"),
    (None, "-"),
])
def test_clients_are_counted_by_address_and_ipv6_by_its_64(host: str | None, key: str) -> None:
    assert client_key(host) == key


# --- through the app -----------------------------------------------------------------------------------


LIMITS = {"rate_links_per_s": 0.5, "rate_links_burst": 3, "rate_tracking_per_s": 1.0, "rate_tracking_burst": 4,
          "rate_webhooks_per_s": 2.0, "rate_webhooks_burst": 5, "rate_token_per_s": 0.1, "rate_token_burst": 6}


@pytest.fixture
def app_and_clock(engine: Engine, tmp_path) -> Iterator[tuple[object, Clock]]:
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port(), **LIMITS), engine=engine)
    clock = Clock()
    app.state.rate_limits.set_clock(clock)
    yield app, clock


def client_at(app: object, ip: str) -> TestClient:
    return TestClient(app, client=(ip, 40000))  # type: ignore[arg-type]


def limited(prefix: str, by: str) -> float:
    group = {"/u/": "links", "/t/o/": "tracking", "/webhooks/": "webhooks"}[prefix]
    return REGISTRY.get_sample_value("clarion_http_rate_limited_total", {"group": group, "by": by}) or 0.0


@pytest.mark.parametrize(("method", "prefix", "burst", "interval", "retry_after", "kind"), [
    ("GET", "/u/", 3, 2.0, "2", "text/html"),                 # members' links: 0.5/s
    ("GET", "/t/o/", 4, 1.0, "1", "application/json"),        # tracking: 1/s
    ("POST", "/webhooks/", 5, 0.5, "1", "application/json"),  # webhooks: 2/s (Retry-After in whole seconds)
])
def test_a_client_over_its_limit_gets_429_with_retry_after_and_is_served_again_after_it(
        app_and_clock, method: str, prefix: str, burst: int, interval: float, retry_after: str,
        kind: str) -> None:
    app, clock = app_and_clock
    before = limited(prefix, "client")
    with client_at(app, "198.51.100.1") as client:
        paths = [f"{prefix}{'twilio/status' if prefix == '/webhooks/' else f'tok{i}'}" for i in range(burst + 1)]
        answers = [client.request(method, p) for p in paths]
        assert [a.status_code for a in answers[:-1]] == [answers[0].status_code] * burst
        assert answers[0].status_code in (403, 404)                  # what the route says to a bad request
        over = answers[-1]
        assert over.status_code == 429 and over.headers["retry-after"] == retry_after
        assert over.headers["content-type"].startswith(kind)
        assert over.headers["cache-control"] == "no-store"
        assert limited(prefix, "client") == before + 1
        with client_at(app, "198.51.100.2") as other:               # another address has its own budget
            assert other.request(method, paths[0]).status_code == answers[0].status_code
        clock.now += interval - 0.01
        assert client.request(method, paths[0]).status_code == 429
        clock.now += 0.01
        assert client.request(method, paths[0]).status_code == answers[0].status_code


def test_one_link_token_is_limited_whoever_asks_and_other_tokens_are_not(app_and_clock) -> None:
    app, clock = app_and_clock
    statuses = []
    for i in range(7):                                # 6 a token, from 7 addresses (2 each: under their 3)
        with client_at(app, f"192.0.2.{i}") as client:
            statuses.append(client.get("/t/c/same-token").status_code)
            assert client.get(f"/t/c/token-{i}").status_code == 404
    assert statuses == [404] * 6 + [429]
    with client_at(app, "192.0.2.99") as client:
        over = client.get("/t/c/same-token")
        assert over.status_code == 429 and over.headers["retry-after"] == "10"     # 0.1/s
        clock.now += 10
        assert client.get("/t/c/same-token").status_code == 404


def test_requests_with_a_key_and_the_probes_are_not_limited(app_and_clock, engine: Engine) -> None:
    app, _ = app_and_clock
    key = create_key(engine=engine, role=Role.core)
    with client_at(app, "198.51.100.3") as client:
        for _ in range(12):
            assert client.get("/api/v1/members/M1", params={"program": "none"},
                              headers={"Authorization": f"Bearer {key}"}).status_code == 404
            assert client.get("/healthz").status_code == 200


def test_limits_are_off_with_clarion_rate_limits_false(engine: Engine, tmp_path) -> None:
    app = create_app(Settings(var_dir=tmp_path, temporal_dev_port=free_port(), rate_limits=False, **LIMITS),
                     engine=engine)
    with client_at(app, "198.51.100.4") as client:
        assert {client.get("/u/x").status_code for _ in range(10)} == {404}


def test_the_defaults_let_a_busy_office_through_and_stop_a_flood() -> None:
    s = Settings()
    assert s.rate_limits and s.rate_links_burst >= 50 and s.rate_tracking_burst >= 200
    assert s.rate_webhooks_per_s >= 100          # a provider sends a callback or more per message sent
