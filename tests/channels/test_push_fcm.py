"""The FCM push channel: the real pyfcm library over real sockets to a fake FCM v1 API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator

import google.auth.transport.requests
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.exceptions import RefreshError, TransportError

from channels.base import (
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    ProviderAccountError,
    RateLimited,
    RecordedRequest,
    SendReceipt,
    TransientChannelError,
    current_delivery,
)
from channels.push_fcm import MAX_PAYLOAD, SCOPE, FcmConfig, FcmPushChannel, payload_size
from tests.channels.fake_fcm import FakeCredentials, FakeFcm, auth_error, google_error, running_fake_fcm
from tests.conftest import free_port

PROJECT = "clarion-test"
DEVICE = "fGx1:APA91bH-device-token"


@pytest.fixture
def fcm() -> Iterator[FakeFcm]:
    with running_fake_fcm() as fake:
        yield fake


def channel(fake: FakeFcm, *, base_url: str | None = None, **kw: object) -> FcmPushChannel:
    config: dict = dict(project_id=PROJECT, credentials=FakeCredentials(fake), base_url=base_url or fake.url,
                        timeout=2.0)
    config.update(kw)
    return FcmPushChannel(FcmConfig(**config))


def push(**kw: object) -> OutboundMessage:
    fields: dict = dict(delivery_id=42, to=DEVICE, title="Двойные баллы", text="До пятницы за каждую покупку",
                        image_url="https://cdn.example/spring.png", link="clarion://offers/spring",
                        data={"campaign": "spring"})
    fields.update(kw)
    return OutboundMessage(**fields)


async def send_expecting(ch: FcmPushChannel, error: type[Exception], msg: OutboundMessage | None = None):
    with pytest.raises(error) as info:
        await ch.send(msg or push())
    await ch.aclose()
    return info.value


# --- sending --------------------------------------------------------------------------------------


async def test_fcm_gets_the_v1_message_with_our_bearer_token_and_we_get_its_name(fcm):
    ch = channel(fcm)
    receipt = await ch.send(push())
    await ch.aclose()
    [req] = fcm.requests
    assert req.path == f"/v1/projects/{PROJECT}/messages:send"
    assert req.headers["content-type"] == "application/json"
    assert req.bearer == fcm.issued[0]
    assert req.json == {"message": {
        "token": DEVICE,
        "notification": {"title": "Двойные баллы", "body": "До пятницы за каждую покупку",
                         "image": "https://cdn.example/spring.png"},
        "data": {"campaign": "spring", "link": "clarion://offers/spring"},
    }, "validate_only": False}
    assert receipt == SendReceipt(provider_message_id=fcm.names[0])
    assert receipt.provider_message_id.startswith(f"projects/{PROJECT}/messages/0:")


async def test_a_plain_push_has_only_its_body_and_no_data(fcm):
    ch = channel(fcm)
    await ch.send(push(title=None, image_url=None, link=None, data={}))
    await ch.aclose()
    assert fcm.requests[0].json["message"] == {"token": DEVICE, "notification": {"body": "До пятницы за каждую покупку"}}


async def test_the_deep_link_wins_over_a_link_in_the_data(fcm):
    ch = channel(fcm)
    await ch.send(push(data={"link": "https://old.example", "tier": "gold"}))
    await ch.aclose()
    assert fcm.requests[0].json["message"]["data"] == {"link": "clarion://offers/spring", "tier": "gold"}


async def test_the_configured_project_is_used_even_when_the_credentials_name_another(fcm):
    ch = channel(fcm, credentials=FakeCredentials(fcm, project_id="the-service-accounts-own-project"))
    await ch.send(push())
    await ch.aclose()
    assert fcm.requests[0].path == f"/v1/projects/{PROJECT}/messages:send"


@pytest.fixture(scope="module")
def service_account_info() -> dict:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    return {"type": "service_account", "project_id": "another-project", "private_key_id": "k1",
            "private_key": pem, "client_email": "clarion-push@another-project.iam.gserviceaccount.com",
            "client_id": "1"}


async def test_a_service_account_gets_a_messaging_scoped_token_from_its_token_uri(fcm, service_account_info):
    info = {**service_account_info, "token_uri": f"{fcm.url}/token"}
    ch = FcmPushChannel(FcmConfig(project_id=PROJECT, service_account_info=info, base_url=fcm.url, timeout=2.0))
    await ch.send(push())
    await ch.aclose()
    [grant] = fcm.token_requests
    assert grant["scope"] == SCOPE and grant["iss"] == info["client_email"]
    [req] = fcm.requests
    assert req.bearer == fcm.issued[0] and req.path == f"/v1/projects/{PROJECT}/messages:send"


def test_a_config_without_any_credentials_is_refused():
    with pytest.raises(ValueError):
        FcmPushChannel(FcmConfig(project_id=PROJECT))


async def test_concurrent_sends_each_get_their_own_name(fcm):
    ch = channel(fcm)
    receipts = await asyncio.gather(*(ch.send(push(delivery_id=i, to=f"device-{i}")) for i in range(8)))
    await ch.aclose()
    assert sorted(r.provider_message_id for r in receipts) == sorted(fcm.names)
    assert len(set(fcm.names)) == 8
    assert sorted(r.json["message"]["token"] for r in fcm.requests) == sorted(f"device-{i}" for i in range(8))
    assert all(r.bearer in fcm.issued for r in fcm.requests)


async def test_a_send_inside_a_running_event_loop_does_not_block_it(fcm):
    """pyfcm's own async helper runs a loop of its own and fails inside ours; the sync client in a thread
    works, and the loop keeps running while FCM takes its time."""
    fcm.then(delay=0.3)
    ch = channel(fcm)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    receipt = await ch.send(push())
    task.cancel()
    await ch.aclose()
    assert receipt.provider_message_id == fcm.names[0]
    assert ticks >= 10


# --- the 4096-byte limit and the data ---------------------------------------------------------------


def test_payload_size_counts_utf8_keys_and_values_of_the_notification_and_the_data():
    assert payload_size("Hi", "Body", None, {}) == len("title") + 2 + len("body") + 4
    assert payload_size(None, "я", "https://i", {"k": "v"}) == len("body") + 2 + len("image") + 9 + 2
    assert payload_size("", "", "", {}) == 0   # empty fields are not sent, so not counted


def message_of_size(size: int) -> OutboundMessage:
    base = payload_size("T", "B", None, {"link": "L", "pad": ""})
    return push(title="T", text="B", image_url=None, link="L", data={"pad": "x" * (size - base)})


async def test_a_payload_of_4096_bytes_goes_and_one_byte_more_is_refused_before_any_request(fcm):
    ch = channel(fcm)
    await ch.send(message_of_size(MAX_PAYLOAD))
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(message_of_size(MAX_PAYLOAD + 1))
    await ch.aclose()
    assert info.value.code == "payload_too_large" and not info.value.revoke_address
    assert len(fcm.requests) == 1


async def test_the_limit_is_in_bytes_not_characters(fcm):
    body = "я" * 2100                    # 2,100 characters, 4,200 bytes
    ch = channel(fcm)
    error = await send_expecting(ch, PermanentChannelError, push(title=None, image_url=None, link=None, data={},
                                                                 text=body))
    assert error.code == "payload_too_large" and fcm.requests == []


@pytest.mark.parametrize("data", [{"points": 100}, {"vip": True}, {"tags": ["a"]}, {1: "one"}])
async def test_non_string_data_is_refused_before_any_request(fcm, data):
    error = await send_expecting(channel(fcm), PermanentChannelError, push(data=data))
    assert error.code == "bad_payload" and fcm.requests == []


async def test_a_message_without_a_device_token_is_refused_before_any_request(fcm):
    error = await send_expecting(channel(fcm), PermanentChannelError, push(to="  "))
    assert error.code == "no_token" and fcm.requests == []


# --- FCM's error answers ----------------------------------------------------------------------------


@pytest.mark.parametrize(("fcm_code", "revoke"), [
    ("UNREGISTERED", True),             # the token is dead: the caller deletes it
    ("SENDER_ID_MISMATCH", True),       # the token belongs to another Firebase project
    ("INVALID_ARGUMENT", False),        # a bad message: the token stays
])
async def test_fcm_refusals_are_permanent_and_revoke_only_dead_or_foreign_tokens(fcm, fcm_code, revoke):
    fcm.then(error=fcm_code)
    error = await send_expecting(channel(fcm), PermanentChannelError)
    assert error.code == fcm_code and error.revoke_address is revoke
    assert isinstance(error.__cause__, Exception) and len(fcm.requests) == 1


async def test_a_400_with_only_a_bad_request_detail_is_invalid_argument(fcm):
    fcm.then(status=400, body=google_error(400, "INVALID_ARGUMENT", "Invalid value at 'message.data[0].value'",
                                           {"@type": "type.googleapis.com/google.rpc.BadRequest"}))
    error = await send_expecting(channel(fcm), PermanentChannelError)
    assert error.code == "INVALID_ARGUMENT" and not error.revoke_address


async def test_our_apns_or_web_push_credentials_refused_is_an_account_problem_not_the_members(fcm):
    fcm.then(error="THIRD_PARTY_AUTH_ERROR")
    error = await send_expecting(channel(fcm), ProviderAccountError)
    assert error.code == "THIRD_PARTY_AUTH_ERROR" and len(fcm.requests) == 1


@pytest.mark.parametrize(("status", "google_status"), [(403, "PERMISSION_DENIED"), (404, "NOT_FOUND")])
async def test_a_403_or_404_without_fcms_error_code_keeps_the_token(fcm, status, google_status):
    """pyfcm calls every 403 a sender mismatch and every 404 an unregistered token; a project whose FCM API
    is off, or a wrong project id, must not make us delete every member's token: it is the account's problem,
    and the message waits (nothing was sent)."""
    fcm.then(status=status, body=google_error(status, google_status, "denied"))
    error = await send_expecting(channel(fcm), ProviderAccountError)
    assert error.code == google_status and isinstance(error, TransientChannelError)


async def test_a_refused_oauth_token_is_an_account_configuration_error(fcm):
    fcm.then(status=401, body=auth_error())
    error = await send_expecting(channel(fcm), ProviderAccountError)
    assert error.code == "UNAUTHENTICATED" and "configuration" in str(error)


async def test_quota_exceeded_is_rate_limited_with_the_retry_after_header(fcm):
    fcm.then(error="QUOTA_EXCEEDED", headers={"Retry-After": "30"})
    fcm.then(error="QUOTA_EXCEEDED")
    ch = channel(fcm)
    with pytest.raises(RateLimited) as first:
        await ch.send(push())
    with pytest.raises(RateLimited) as second:
        await ch.send(push())
    await ch.aclose()
    assert first.value.retry_after == 30.0 and first.value.code == "QUOTA_EXCEEDED"
    assert second.value.retry_after is None


@pytest.mark.parametrize("fcm_code", ["UNAVAILABLE", "INTERNAL"])
async def test_unavailable_or_internal_with_retry_after_is_rate_limited(fcm, fcm_code):
    fcm.then(error=fcm_code, headers={"Retry-After": "5"})
    started = time.monotonic()
    error = await send_expecting(channel(fcm), RateLimited)
    assert error.retry_after == 5.0 and error.code == fcm_code
    assert time.monotonic() - started < 1.0  # pyfcm would have slept 5 s and posted again


@pytest.mark.parametrize("fcm_code", ["UNAVAILABLE", "INTERNAL"])
async def test_unavailable_or_internal_without_retry_after_is_transient(fcm, fcm_code):
    fcm.then(error=fcm_code)
    error = await send_expecting(channel(fcm), TransientChannelError)
    assert not isinstance(error, RateLimited) and error.code == fcm_code


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateway_error_in_front_of_fcm_is_in_doubt(fcm, status):
    fcm.then(status=status, body={"error": "gateway"})
    await send_expecting(channel(fcm), InDoubtChannelError)


async def test_a_success_without_a_message_name_is_in_doubt(fcm):
    fcm.then(status=200, body={})
    await send_expecting(channel(fcm), InDoubtChannelError)


@pytest.mark.parametrize("script", [
    dict(error="UNAVAILABLE"),
    dict(error="UNAVAILABLE", headers={"Retry-After": "1"}),
    dict(error="QUOTA_EXCEEDED", headers={"Retry-After": "1"}),
    dict(status=502, body={}),
    dict(hang_up=True),
], ids=["503", "503-retry-after", "429-retry-after", "502", "hang-up"])
async def test_exactly_one_request_per_send_whatever_the_answer(fcm, script):
    """pyfcm on its own resends after 502/503 and dropped connections (urllib3 Retry with POST allowed) and
    after sleeping any Retry-After; none of that may happen behind our back."""
    fcm.then(**script)
    fcm.then(hang_up=True)   # what a second attempt would get
    started = time.monotonic()
    ch = channel(fcm)
    with pytest.raises((TransientChannelError, InDoubtChannelError)):
        await ch.send(push())
    await ch.aclose()
    assert len(fcm.requests) == 1
    assert time.monotonic() - started < 0.9


async def test_an_expired_access_token_is_refreshed_and_the_message_sent_once_more(fcm):
    fcm.then(status=401, body=auth_error("ACCESS_TOKEN_EXPIRED"))
    ch = channel(fcm)
    receipt = await ch.send(push())
    await ch.aclose()
    refused, resent = fcm.requests
    assert resent.bearer != refused.bearer and resent.bearer == fcm.issued[-1]
    assert resent.json == refused.json and receipt.provider_message_id == fcm.names[0]


async def test_a_token_refused_as_expired_twice_is_not_sent_a_third_time(fcm):
    fcm.then(status=401, body=auth_error("ACCESS_TOKEN_EXPIRED"))
    fcm.then(status=401, body=auth_error("ACCESS_TOKEN_EXPIRED"))
    error = await send_expecting(channel(fcm), ProviderAccountError)
    assert error.code == "UNAUTHENTICATED" and len(fcm.requests) == 2


# --- no token, no answer ------------------------------------------------------------------------------


async def test_google_oauth_unreachable_is_transient_and_nothing_is_sent(fcm):
    credentials = FakeCredentials(fail=TransportError("connection refused"))
    error = await send_expecting(channel(fcm, credentials=credentials), TransientChannelError)
    assert error.code == "oauth_unavailable" and fcm.requests == []


async def test_google_refusing_our_key_is_an_account_configuration_error(fcm):
    credentials = FakeCredentials(fail=RefreshError("invalid_grant: Invalid JWT Signature."))
    error = await send_expecting(channel(fcm, credentials=credentials), ProviderAccountError)
    assert error.code == "oauth_refused" and "configuration" in str(error) and fcm.requests == []


async def test_nothing_listening_is_transient(fcm):
    error = await send_expecting(channel(fcm, base_url=f"http://127.0.0.1:{free_port()}"), TransientChannelError)
    assert not isinstance(error, RateLimited)


async def test_connection_closed_after_the_request_is_in_doubt_and_not_resent(fcm):
    fcm.then(hang_up=True)
    await send_expecting(channel(fcm), InDoubtChannelError)
    assert len(fcm.requests) == 1 and fcm.requests[0].json["message"]["token"] == DEVICE


async def test_read_timeout_is_in_doubt_and_not_resent(fcm):
    fcm.then(delay=0.6)
    started = time.monotonic()
    await send_expecting(channel(fcm, timeout=0.2), InDoubtChannelError)
    assert time.monotonic() - started < 0.55 and len(fcm.requests) == 1


# --- sandbox ----------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.deliveries: list[int | None] = []

    def record(self, request: RecordedRequest) -> str:
        self.requests.append(request)
        self.deliveries.append(current_delivery.get())
        return str(len(self.requests))


async def test_sandbox_records_the_exact_request_and_neither_fcm_nor_google_hears_of_it(fcm, monkeypatch):
    def no_oauth(*args: object, **kwargs: object) -> None:
        raise AssertionError("the sandbox asked Google for a token")

    monkeypatch.setattr(google.auth.transport.requests.Request, "__call__", no_oauth)
    recorder = _Recorder()
    ch = FcmPushChannel(FcmConfig(project_id=PROJECT, service_account_file="/nonexistent/service-account.json",
                                  base_url=fcm.url), sandbox_recorder=recorder)
    receipt = await ch.send(push(delivery_id=77))
    await ch.aclose()
    assert fcm.requests == [] and fcm.issued == []
    [rec] = recorder.requests
    assert rec.channel == "push" and rec.provider == "fcm" and rec.method == "POST"
    assert rec.url == f"{fcm.url}/v1/projects/{PROJECT}/messages:send"
    assert rec.headers["Authorization"] == "[redacted]" and rec.headers["Content-Type"] == "application/json"
    assert json.loads(rec.body) == {"message": {
        "token": DEVICE,
        "notification": {"title": "Двойные баллы", "body": "До пятницы за каждую покупку",
                         "image": "https://cdn.example/spring.png"},
        "data": {"campaign": "spring", "link": "clarion://offers/spring"},
    }, "validate_only": False}
    assert recorder.deliveries == [77]
    assert receipt.provider_message_id == f"projects/{PROJECT}/messages/sandbox-1"


async def test_sandbox_without_a_base_url_records_fcms_real_endpoint():
    recorder = _Recorder()
    ch = FcmPushChannel(FcmConfig(project_id=PROJECT), sandbox_recorder=recorder)
    await ch.send(push())
    await ch.aclose()
    assert recorder.requests[0].url == f"https://fcm.googleapis.com/v1/projects/{PROJECT}/messages:send"
