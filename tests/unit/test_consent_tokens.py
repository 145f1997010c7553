"""Sealed member links: a good token round-trips; nothing in it is readable; every bad one gets the same
BadToken."""

from __future__ import annotations

import pytest

from consent.tokens import UNSUBSCRIBE, BadToken, Signer

NOW = 1_780_000_000.0
SIGNER = Signer(b"s" * 32)


def token(payload=None, *, purpose=UNSUBSCRIBE, ttl_s=3600, signer=SIGNER) -> str:
    return signer.sign(purpose, payload or {"m": 42, "c": "email", "t": "promotions"}, ttl_s=ttl_s, now=NOW)


def test_signed_token_verifies_back_to_its_payload():
    body = SIGNER.verify(UNSUBSCRIBE, token(), now=NOW + 10)

    assert {k: body[k] for k in ("m", "c", "t")} == {"m": 42, "c": "email", "t": "promotions"}


def test_payload_with_non_ascii_text_round_trips():
    body = SIGNER.verify(UNSUBSCRIBE, token({"name": "Анна 🎉"}), now=NOW)

    assert body["name"] == "Анна 🎉"


def test_token_is_url_safe():
    text = token({"x": "?&/+=" * 20})

    assert set(text) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def test_nothing_the_token_carries_can_be_read_from_it():
    import base64

    t = token({"m": 424242, "email": "anna@example.com"})
    raw = base64.urlsafe_b64decode(t + "=" * (-len(t) % 4))
    assert b"424242" not in raw and b"anna" not in raw and "424242" not in t


def test_two_tokens_for_the_same_member_differ():
    assert token({"m": 1}) != token({"m": 1})


def test_token_is_valid_until_its_expiry_second():
    t = token(ttl_s=100)

    assert SIGNER.verify(UNSUBSCRIBE, t, now=NOW + 100)["m"] == 42
    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, t, now=NOW + 100.5)


def test_expired_token_is_refused():
    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, token(ttl_s=60), now=NOW + 3600)


def test_token_for_another_purpose_is_refused():
    with pytest.raises(BadToken):
        SIGNER.verify("confirm-email", token(), now=NOW)


def test_token_signed_with_another_secret_is_refused():
    other = Signer(b"o" * 32)

    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, token(signer=other), now=NOW)


def _flip(text: str, index: int) -> str:
    ch = text[index]
    return text[:index] + ("A" if ch != "A" else "B") + text[index + 1:]


@pytest.mark.parametrize("index", [0, 3, 8, 20, -20, -3, -1])
def test_any_changed_character_is_refused(index):
    t = token()

    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, _flip(t, index), now=NOW)


def test_a_token_spliced_from_two_members_tokens_is_refused():
    mine, other = token({"m": 1}), token({"m": 2})
    forged = other[:40] + mine[40:]

    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, forged, now=NOW)


def test_truncated_token_is_refused():
    t = token()

    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, t[:-4], now=NOW)


@pytest.mark.parametrize("garbage", [
    "", ".", "abc", "a.b", "a.b.c", "....", "!!!.???", "é.é", "💥.💥", "\x00.\x00",
    "eyJwIjoidW5zdWIifQ", "eyJwIjoidW5zdWIifQ.", " " + "x" * 200, "A" * 80, "AgAAAAA" + "A" * 60,
])
def test_garbage_strings_are_refused_with_bad_token(garbage):
    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, garbage, now=NOW)


def test_all_failures_raise_the_same_bare_error():
    t = token(ttl_s=1)
    failures = []
    for purpose, text, now in [
        (UNSUBSCRIBE, t, NOW + 10),                       # expired
        ("other", t, NOW),                                # wrong purpose
        (UNSUBSCRIBE, t[:-2], NOW),                       # tampered
        (UNSUBSCRIBE, "garbage", NOW),                    # not a token
    ]:
        with pytest.raises(BadToken) as info:
            SIGNER.verify(purpose, text, now=now)
        failures.append((type(info.value), str(info.value)))

    assert failures == [(BadToken, "")] * 4


def test_payload_cannot_change_the_token_purpose():
    try:
        t = SIGNER.sign(UNSUBSCRIBE, {"p": "admin", "e": 10**12}, ttl_s=60, now=NOW)
    except ValueError:
        return  # refusing reserved keys is also fine
    with pytest.raises(BadToken):
        SIGNER.verify("admin", t, now=NOW)
    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, t, now=NOW + 3600)


def test_explicit_clock_at_zero_is_honoured():
    t = SIGNER.sign(UNSUBSCRIBE, {"m": 1}, ttl_s=100, now=0)

    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, t, now=101)
