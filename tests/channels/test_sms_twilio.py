"""The Twilio SMS channel: the real twilio library over real sockets to a fake Twilio API on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import socket
import threading
from collections.abc import Iterator

import pytest

from channels.base import (
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    RateLimited,
    SendReceipt,
    TransientChannelError,
)
from channels.sms_twilio import (
    InboundEvent,
    StatusEvent,
    TwilioConfig,
    TwilioSmsChannel,
    parse_inbound,
    parse_status,
    verify_signature,
)
from tests.channels.fake_twilio import FakeTwilio, running_fake_twilio
from tests.conftest import free_port

SID, TOKEN = "AC" + "0" * 32, "secret-token"
TO = "+14155552671"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as fake:
        yield fake


def channel(base_url: str, **kw: object) -> TwilioSmsChannel:
    config = dict(account_sid=SID, auth_token=TOKEN, sender="+15005550006",
                  status_callback="https://clarion.example/hooks/twilio/status", base_url=base_url, timeout=2.0)
    config.update(kw)
    return TwilioSmsChannel(TwilioConfig(**config))  # type: ignore[arg-type]


def sms(text: str = "Your points expire Friday", to: str = TO) -> OutboundMessage:
    return OutboundMessage(delivery_id=1, to=to, text=text)


# --- sending --------------------------------------------------------------------------------------


async def test_twilio_gets_the_form_body_with_basic_auth(twilio):
    ch = channel(twilio.url)
    receipt = await ch.send(sms("Привет, 100 баллов ждут вас"))
    await ch.aclose()
    assert isinstance(receipt, SendReceipt) and receipt.provider_message_id.startswith("SM")
    assert receipt.segments == 1 and receipt.encoding == "UCS-2"
    [req] = twilio.requests
    assert req.path == f"/2010-04-01/Accounts/{SID}/Messages.json"
    assert req.form == {"To": TO, "From": "+15005550006", "Body": "Привет, 100 баллов ждут вас",
                        "StatusCallback": "https://clarion.example/hooks/twilio/status"}
    assert req.basic_auth == (SID, TOKEN)


async def test_messaging_service_sender_goes_as_messaging_service_sid(twilio):
    ch = channel(twilio.url, sender="MG" + "1" * 32, status_callback=None)
    await ch.send(sms())
    await ch.aclose()
    assert twilio.requests[0].form == {"To": TO, "MessagingServiceSid": "MG" + "1" * 32,
                                       "Body": "Your points expire Friday"}


async def test_text_over_the_segment_limit_is_refused_before_any_request(twilio):
    ch = channel(twilio.url, max_segments=2)
    ok = await ch.send(sms("x" * 306))  # 2 GSM-7 parts of 153
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(sms("x" * 307))
    await ch.aclose()
    assert ok.segments == 2 and info.value.code == "too_many_segments"
    assert len(twilio.requests) == 1


@pytest.mark.parametrize("to", ["4155552671", "+1415555", "+999123", "not a number", ""])
async def test_invalid_number_is_permanent_and_nothing_is_sent(twilio, to):
    ch = channel(twilio.url)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(sms(to=to))
    await ch.aclose()
    assert info.value.code == "invalid_number" and twilio.requests == []


# --- Twilio's error answers ------------------------------------------------------------------------


async def test_unsubscribed_recipient_revokes_the_address(twilio):
    twilio.then(status=400, code=21610)
    ch = channel(twilio.url)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(sms())
    await ch.aclose()
    assert info.value.revoke_address and info.value.code == "21610"
    assert isinstance(info.value.__cause__, Exception)


@pytest.mark.parametrize("code", [21211, 21614, 21408])
async def test_refused_numbers_and_other_4xx_are_permanent_without_revoking(twilio, code):
    twilio.then(status=400, code=code)
    ch = channel(twilio.url)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(sms())
    await ch.aclose()
    assert not info.value.revoke_address and info.value.code == str(code)


async def test_429_is_rate_limited_with_retry_after(twilio):
    twilio.then(status=429, code=20429, headers={"Retry-After": "7"})
    twilio.then(status=429, code=20429)
    ch = channel(twilio.url)
    with pytest.raises(RateLimited) as first:
        await ch.send(sms())
    with pytest.raises(RateLimited) as second:
        await ch.send(sms())
    await ch.aclose()
    assert first.value.retry_after == 7.0 and first.value.code == "20429"
    assert second.value.retry_after is None


async def test_code_20429_is_rate_limited_whatever_the_status(twilio):
    twilio.then(status=400, code=20429)
    ch = channel(twilio.url)
    with pytest.raises(RateLimited):
        await ch.send(sms())
    await ch.aclose()


@pytest.mark.parametrize("status", [500, 503])
async def test_server_error_is_in_doubt(twilio, status):
    twilio.then(status=status, code=20500)
    ch = channel(twilio.url)
    with pytest.raises(InDoubtChannelError):
        await ch.send(sms())
    await ch.aclose()
    assert len(twilio.requests) == 1  # never resent by the library


# --- no answer ------------------------------------------------------------------------------------


async def test_connection_closed_after_the_request_is_in_doubt_and_not_resent(twilio):
    twilio.then(hang_up=True)
    ch = channel(twilio.url)
    with pytest.raises(InDoubtChannelError):
        await ch.send(sms())
    await ch.aclose()
    assert len(twilio.requests) == 1 and twilio.requests[0].form["To"] == TO


async def test_read_timeout_is_in_doubt(twilio):
    twilio.then(delay=1.0)
    ch = channel(twilio.url, timeout=0.2)
    with pytest.raises(InDoubtChannelError):
        await ch.send(sms())
    await ch.aclose()


async def test_raw_server_that_accepts_and_closes_is_in_doubt():
    """A bare socket server: takes the whole request, then closes without a status line."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    got = bytearray()

    def serve() -> None:
        conn, _ = server.accept()
        conn.settimeout(2)
        while b"Body=" not in got:
            chunk = conn.recv(65536)
            if not chunk:
                break
            got.extend(chunk)
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    ch = channel(f"http://127.0.0.1:{server.getsockname()[1]}")
    with pytest.raises(InDoubtChannelError):
        await ch.send(sms())
    await ch.aclose()
    thread.join(2)
    server.close()
    assert got.startswith(b"POST /2010-04-01/Accounts/")


async def test_nothing_listening_is_transient():
    ch = channel(f"http://127.0.0.1:{free_port()}")
    with pytest.raises(TransientChannelError) as info:
        await ch.send(sms())
    await ch.aclose()
    assert not isinstance(info.value, RateLimited)


async def test_concurrent_sends_each_get_their_own_receipt(twilio):
    ch = channel(twilio.url)
    receipts = await asyncio.gather(*(ch.send(sms(f"hello {i}")) for i in range(8)))
    await ch.aclose()
    assert len({r.provider_message_id for r in receipts}) == 8
    assert sorted(r.form["Body"] for r in twilio.requests) == sorted(f"hello {i}" for i in range(8))


# --- signatures -----------------------------------------------------------------------------------

HOOK = "https://clarion.example/hooks/twilio/status"
PARAMS = {"MessageSid": "SM123", "MessageStatus": "delivered", "To": TO, "AccountSid": SID}


def twilio_signature(url: str, params: dict[str, str], token: str = TOKEN) -> str:
    """Twilio's documented algorithm: HMAC-SHA1 of the URL followed by each sorted name and value."""
    data = url + "".join(k + params[k] for k in sorted(params))
    return base64.b64encode(hmac.new(token.encode(), data.encode(), hashlib.sha1).digest()).decode()


def test_valid_signature_is_accepted():
    assert verify_signature(HOOK, PARAMS, twilio_signature(HOOK, PARAMS), TOKEN)


def test_signature_with_another_token_is_rejected():
    assert not verify_signature(HOOK, PARAMS, twilio_signature(HOOK, PARAMS, "other"), TOKEN)
    assert not verify_signature(HOOK, PARAMS, "", TOKEN)


def test_tampered_parameter_is_rejected():
    signature = twilio_signature(HOOK, PARAMS)
    assert not verify_signature(HOOK, {**PARAMS, "MessageStatus": "failed"}, signature, TOKEN)
    assert not verify_signature(HOOK, {**PARAMS, "Extra": "1"}, signature, TOKEN)


def test_signature_for_another_url_is_rejected():
    signature = twilio_signature(HOOK, PARAMS)
    assert not verify_signature("https://clarion.example/hooks/twilio/inbound", PARAMS, signature, TOKEN)


# --- status callbacks and inbound keywords --------------------------------------------------------


@pytest.mark.parametrize(("raw", "status"), [
    ("accepted", "queued"), ("scheduled", "queued"), ("queued", "queued"), ("sending", "sent"), ("sent", "sent"),
    ("delivered", "delivered"), ("read", "read"), ("undelivered", "undelivered"), ("failed", "failed"),
    ("canceled", "failed"), ("DELIVERED", "delivered"),
])
def test_status_is_normalized(raw, status):
    assert parse_status({"MessageSid": "SM1", "MessageStatus": raw}) == StatusEvent(
        "SM1", status, None, f"twilio:SM1:{status}")


def test_failed_status_carries_the_error_code():
    event = parse_status({"MessageSid": "SM1", "MessageStatus": "undelivered", "ErrorCode": "30003"})
    assert event == StatusEvent("SM1", "undelivered", "30003", "twilio:SM1:undelivered")


def test_unknown_status_is_an_error():
    with pytest.raises(ValueError):
        parse_status({"MessageSid": "SM1", "MessageStatus": "teleported"})


@pytest.mark.parametrize(("body", "kind"), [
    ("STOP", "stop"), ("stop", "stop"), ("  Stop \n", "stop"), ("StopAll", "stop"), ("unsubscribe", "stop"),
    ("CANCEL", "stop"), ("end", "stop"), ("Quit", "stop"), ("revoke", "stop"), ("OPTOUT", "stop"),
    ("СТОП", "stop"), ("стоп", "stop"), ("Стоп", "stop"), (" ОтПиСаТьСя ", "stop"),
    ("START", "start"), ("yes", "start"), ("Unstop", "start"),
    ("help", "help"), (" HELP ", "help"),
    ("stop it please", "reply"), ("STOP!", "reply"), ("thanks", "reply"), ("", "reply"), ("стопка", "reply"),
])
def test_inbound_keywords(body, kind):
    assert parse_inbound({"From": TO, "Body": body, "MessageSid": "SM9"}) == InboundEvent(
        TO, body, kind, event_id="twilio:SM9")


@pytest.mark.parametrize(("status", "code"), [(401, 20003), (404, 20404)])
async def test_twilio_refusing_our_account_makes_the_message_wait_not_fail(twilio, status, code):
    from channels.base import ProviderAccountError

    twilio.then(status=status, code=code)
    ch = channel(twilio.url)
    with pytest.raises(ProviderAccountError) as info:
        await ch.send(sms())
    await ch.aclose()
    assert isinstance(info.value, TransientChannelError) and info.value.code == str(code)
