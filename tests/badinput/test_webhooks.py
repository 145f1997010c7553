"""Provider callbacks without their proof: a Twilio request whose X-Twilio-Signature is missing or wrong, a
Telegram update whose X-Telegram-Bot-Api-Secret-Token is missing or wrong. 403, the header named in the
answer, and nothing written (a STOP that would revoke consent, a /start that would link a chat). The
signed and replayed cases are in tests/api/test_twilio_webhooks.py and test_telegram_webhooks.py."""

from __future__ import annotations

import pytest
from twilio.request_validator import RequestValidator

from channels.account_store import set_account
from members.profile import MemberIn
from members.service import upsert_members
from tests.badinput.conftest import BASE, counts

SID, TOKEN = "AC" + "1" * 32, "twilio-auth-token"
SECRET = "s" * 40


@pytest.fixture
def hooks(api):
    upsert_members(engine=api.engine, program_id=api.program_id,
                   items=[(None, "P1", MemberIn(phone="+79123456789"))])
    set_account(engine=api.engine, program="shop", channel="sms", provider="twilio",
                config={"account_sid": SID, "auth_token": TOKEN, "sender": "+15005550006"})
    set_account(engine=api.engine, program="shop", channel="telegram", provider="telegram",
                config={"bot_token": "123456789:AAE" + "x" * 32, "bot_username": "shop_bot", "webhook_secret": SECRET})
    return api


TWILIO = {
    "/webhooks/twilio/inbound": {"AccountSid": SID, "MessageSid": "SM" + "b" * 32, "From": "+79123456789",
                                 "To": "+15005550006", "Body": "STOP"},
    "/webhooks/twilio/status": {"AccountSid": SID, "MessageSid": "SM" + "a" * 32, "MessageStatus": "delivered"},
}


@pytest.mark.parametrize("path", list(TWILIO))
@pytest.mark.parametrize(("signature", "words"), [
    (None, "missing"),
    ("", "missing"),
    ("forged", "does not sign this URL and form"),
    ("signed with another token", "does not sign this URL and form"),
    ("signed for another field", "does not sign this URL and form"),
])
def test_a_twilio_request_without_its_signature_is_403_naming_the_header_and_changes_nothing(hooks, path, signature,
                                                                                             words):
    form = TWILIO[path]
    headers = {}
    if signature == "signed with another token":
        headers["X-Twilio-Signature"] = RequestValidator("another-token").compute_signature(BASE + path, form)
    elif signature == "signed for another field":
        headers["X-Twilio-Signature"] = RequestValidator(TOKEN).compute_signature(BASE + path, {**form, "Body": "HI"})
    elif signature is not None:
        headers["X-Twilio-Signature"] = signature
    before = counts(hooks.engine)
    r = hooks.client.post(path, data=form, headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["field"] == "X-Twilio-Signature" and words in r.json()["message"], r.json()
    assert counts(hooks.engine) == before
    good = RequestValidator(TOKEN).compute_signature(BASE + path, form)      # the same request, signed, is taken
    assert hooks.client.post(path, data=form, headers={"X-Twilio-Signature": good}).status_code == 200


@pytest.mark.parametrize(("secret", "words"), [(None, "missing"), ("", "missing"), ("s" * 39, "does not match"),
                                               ("S" * 40, "does not match"), (SECRET + " ", "does not match")])
def test_a_telegram_update_without_its_secret_token_is_403_naming_the_header_and_changes_nothing(hooks, secret,
                                                                                                 words):
    update = {"update_id": 7, "message": {"message_id": 7, "date": 1700000000, "text": "/stop",
                                          "chat": {"id": 4242, "type": "private"},
                                          "from": {"id": 4242, "is_bot": False, "first_name": "A"}}}
    headers = {} if secret is None else {"X-Telegram-Bot-Api-Secret-Token": secret}
    before = counts(hooks.engine)
    r = hooks.client.post("/webhooks/telegram/shop", json=update, headers=headers)
    assert r.status_code == 403, r.text
    assert r.json()["field"] == "X-Telegram-Bot-Api-Secret-Token" and words in r.json()["message"], r.json()
    assert counts(hooks.engine) == before
    r = hooks.client.post("/webhooks/telegram/shop", json=update, headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
    assert r.status_code == 200


def test_a_telegram_update_for_a_program_without_a_bot_is_403_naming_the_program(hooks):
    before = counts(hooks.engine)
    for program in ("other", "' OR 1=1 --", "%"):
        r = hooks.client.post(f"/webhooks/telegram/{program}", json={"update_id": 1},
                              headers={"X-Telegram-Bot-Api-Secret-Token": SECRET})
        assert r.status_code == 403 and r.json()["field"] == "program", r.text
    assert counts(hooks.engine) == before
