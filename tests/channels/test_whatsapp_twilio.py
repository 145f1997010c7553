"""WhatsApp over Twilio: the real twilio library over real sockets to the fake Twilio API on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from channels.base import OutboundMessage, PermanentChannelError, RateLimited, RecordedRequest
from channels.sms_twilio import TwilioConfig, parse_inbound
from channels.whatsapp_twilio import TwilioWhatsAppChannel, session_open
from tests.channels.fake_twilio import FakeTwilio, running_fake_twilio

SID, TOKEN = "AC" + "0" * 32, "secret-token"
TO = "+14155552671"


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as fake:
        yield fake


def channel(base_url: str, **kw: object) -> TwilioWhatsAppChannel:
    config = dict(account_sid=SID, auth_token=TOKEN, sender="+15005550006", base_url=base_url, timeout=2.0)
    config.update(kw)
    return TwilioWhatsAppChannel(TwilioConfig(**config))  # type: ignore[arg-type]


def wa(**kw: object) -> OutboundMessage:
    fields: dict = dict(delivery_id=7, to=TO, text="Двойные баллы до пятницы")
    fields.update(kw)
    return OutboundMessage(**fields)


async def test_inside_the_24h_window_free_form_text_goes_as_body(twilio):
    ch = channel(twilio.url)
    receipt = await ch.send(wa(session_open=True, content_sid="HX" + "1" * 32))
    await ch.aclose()
    [req] = twilio.requests
    assert req.form == {"To": f"whatsapp:{TO}", "From": "whatsapp:+15005550006",
                        "Body": "Двойные баллы до пятницы"}
    assert receipt.provider_message_id.startswith("SM") and receipt.segments == 1


async def test_outside_the_window_the_approved_template_goes_with_its_variables(twilio):
    ch = channel(twilio.url)
    await ch.send(wa(session_open=False, content_sid="HX" + "1" * 32,
                     content_variables={"1": "Анна", "2": "500"}))
    await ch.aclose()
    [req] = twilio.requests
    assert "Body" not in req.form
    assert req.form["ContentSid"] == "HX" + "1" * 32
    assert json.loads(req.form["ContentVariables"]) == {"1": "Анна", "2": "500"}


async def test_outside_the_window_without_a_template_nothing_is_sent(twilio):
    ch = channel(twilio.url)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(wa(session_open=False))
    await ch.aclose()
    assert info.value.code == "no_template" and not info.value.revoke_address
    assert twilio.requests == []


async def test_63016_outside_the_window_is_permanent_but_keeps_the_address(twilio):
    twilio.then(status=400, code=63016)
    ch = channel(twilio.url)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(wa(session_open=True))
    await ch.aclose()
    assert info.value.code == "63016" and not info.value.revoke_address


async def test_63014_blocked_by_the_member_revokes_the_address(twilio):
    twilio.then(status=400, code=63014)
    ch = channel(twilio.url)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(wa(session_open=True))
    await ch.aclose()
    assert info.value.code == "63014" and info.value.revoke_address


async def test_rate_limit_is_mapped_as_for_sms(twilio):
    twilio.then(status=429, code=20429, headers={"Retry-After": "3"})
    ch = channel(twilio.url)
    with pytest.raises(RateLimited) as info:
        await ch.send(wa(session_open=True))
    await ch.aclose()
    assert info.value.retry_after == 3.0


async def test_a_messaging_service_sender_is_not_prefixed(twilio):
    ch = channel(twilio.url, sender="MG" + "2" * 32)
    await ch.send(wa(session_open=True))
    await ch.aclose()
    assert twilio.requests[0].form["MessagingServiceSid"] == "MG" + "2" * 32


def test_the_window_is_24_hours_from_the_last_inbound_message():
    now = datetime(2026, 12, 1, 12, tzinfo=UTC)
    assert session_open(now - timedelta(hours=23, minutes=59), now)
    assert not session_open(now - timedelta(hours=24), now)
    assert not session_open(None, now)


def test_inbound_whatsapp_address_loses_its_prefix():
    event = parse_inbound({"From": f"whatsapp:{TO}", "Body": "СТОП", "MessageSid": "SM1", "ProfileName": "A"})
    assert event.address == TO and event.kind == "stop" and event.profile_name == "A"


class _Recorder:
    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []

    def record(self, request: RecordedRequest) -> str:
        self.requests.append(request)
        return str(len(self.requests))


async def test_sandbox_records_the_exact_request_and_sends_nothing(twilio):
    recorder = _Recorder()
    ch = TwilioWhatsAppChannel(TwilioConfig(account_sid=SID, auth_token=TOKEN, sender="+15005550006",
                                            base_url=twilio.url), sandbox_recorder=recorder)
    receipt = await ch.send(wa(session_open=True))
    await ch.aclose()
    assert twilio.requests == []
    [rec] = recorder.requests
    assert rec.channel == "whatsapp" and rec.provider == "twilio" and rec.method == "POST"
    assert rec.url == f"{twilio.url}/2010-04-01/Accounts/{SID}/Messages.json"
    assert rec.headers["Authorization"] == "[redacted]"
    assert "Body=%D0%94%D0%B2%D0%BE%D0%B9%D0%BD%D1%8B%D0%B5" in rec.body and "To=whatsapp%3A%2B14155552671" in rec.body
    assert receipt.provider_message_id.startswith("SM")


@pytest.mark.parametrize(("number", "code", "revoke"), [("+15005550001", "21211", False),
                                                        ("+15005550004", "21610", True),
                                                        ("+15005550009", "21614", False)])
async def test_sandbox_answers_twilios_magic_test_numbers_with_their_errors(twilio, number, code, revoke):
    from channels.sms_twilio import TwilioSmsChannel

    recorder = _Recorder()
    ch = TwilioSmsChannel(TwilioConfig(account_sid=SID, auth_token=TOKEN, sender="+15005550006"),
                          sandbox_recorder=recorder)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(wa(to=number))
    await ch.aclose()
    assert (info.value.code, info.value.revoke_address) == (code, revoke)
    assert len(recorder.requests) == 1 and twilio.requests == []
