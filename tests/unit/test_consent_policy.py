"""The consent policy: who may get a message on a channel for a topic."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consent.policy import CHANNEL_WIDE, SERVICE_TOPIC, Decision, SuppressReason, decide

STATUSES = ("granted", "confirmed", "revoked", "suppressed")


@pytest.mark.parametrize("status", ["granted", "confirmed"])
def test_member_who_opted_into_topic_gets_marketing(status):
    assert decide({"promotions": status}, topic="promotions") == Decision(True)


def test_member_with_no_record_gets_no_marketing():
    assert decide({}, topic="promotions") == Decision(False, SuppressReason.no_consent)


def test_consent_to_another_topic_does_not_cover_this_one():
    assert decide({"news": "granted"}, topic="promotions") == Decision(False, SuppressReason.no_consent)


def test_member_who_revoked_topic_is_suppressed():
    assert decide({"promotions": "revoked"}, topic="promotions") == Decision(False, SuppressReason.revoked)


def test_topic_level_suppression_blocks_marketing():
    assert decide({"promotions": "suppressed"}, topic="promotions") == Decision(
        False, SuppressReason.suppressed)


def test_unknown_status_counts_as_no_consent():
    assert decide({"promotions": "pending"}, topic="promotions") == Decision(False, SuppressReason.no_consent)


@pytest.mark.parametrize("topic_status", ["granted", "confirmed"])
def test_channel_wide_revocation_beats_topic_consent(topic_status):
    states = {CHANNEL_WIDE: "revoked", "promotions": topic_status}

    assert decide(states, topic="promotions") == Decision(False, SuppressReason.revoked)


@pytest.mark.parametrize("topic_status", ["granted", "confirmed"])
def test_suppressed_address_beats_topic_consent(topic_status):
    states = {CHANNEL_WIDE: "suppressed", "promotions": topic_status}

    assert decide(states, topic="promotions") == Decision(False, SuppressReason.suppressed)


def test_channel_wide_grant_alone_is_not_consent_to_a_marketing_topic():
    assert decide({CHANNEL_WIDE: "granted"}, topic="promotions") == Decision(False, SuppressReason.no_consent)


def test_service_message_needs_no_consent():
    assert decide({}, topic=SERVICE_TOPIC) == Decision(True)


def test_service_message_ignores_marketing_opt_outs():
    assert decide({"promotions": "revoked", SERVICE_TOPIC: "revoked"}, topic=SERVICE_TOPIC).allowed


def test_service_message_is_blocked_by_channel_wide_suppression():
    assert decide({CHANNEL_WIDE: "suppressed"}, topic=SERVICE_TOPIC) == Decision(
        False, SuppressReason.suppressed)


def test_service_message_is_blocked_by_channel_wide_revocation():
    assert decide({CHANNEL_WIDE: "revoked"}, topic=SERVICE_TOPIC) == Decision(False, SuppressReason.revoked)


topics = st.sampled_from(["promotions", "news", "birthday", SERVICE_TOPIC])
states_maps = st.dictionaries(st.sampled_from(["promotions", "news", "birthday", SERVICE_TOPIC, CHANNEL_WIDE]),
                              st.sampled_from(STATUSES))


@given(states=states_maps, topic=topics, blocked=st.sampled_from(["suppressed", "revoked"]))
def test_nothing_is_allowed_while_the_whole_channel_is_blocked(states, topic, blocked):
    decision = decide({**states, CHANNEL_WIDE: blocked}, topic=topic)

    assert not decision.allowed
    assert decision.reason == SuppressReason(blocked)


@given(states=states_maps, topic=topics)
def test_marketing_is_allowed_only_with_an_opt_in_for_that_topic(states, topic):
    decision = decide(states, topic=topic)

    if decision.allowed and topic != SERVICE_TOPIC:
        assert states.get(topic) in ("granted", "confirmed")
    if not decision.allowed:
        assert decision.reason is not None


@pytest.mark.parametrize("channel", ["receipt", "inbox", "direct_mail"])
def test_paper_and_own_account_channels_are_opt_out(channel):
    assert decide({}, topic="promotions", channel=channel) == Decision(True)
    assert decide({"promotions": "revoked"}, topic="promotions", channel=channel) == Decision(
        False, SuppressReason.revoked)
    assert decide({CHANNEL_WIDE: "revoked"}, topic="promotions", channel=channel) == Decision(
        False, SuppressReason.revoked)


@pytest.mark.parametrize("channel", ["email", "sms", "whatsapp", "telegram", "push"])
def test_network_channels_need_prior_opt_in(channel):
    assert decide({}, topic="promotions", channel=channel) == Decision(False, SuppressReason.no_consent)


# --- the whole table: topic kind × channel × state of the channel × state of the topic ----------------

CHANNELS_OPT_IN = ("email", "sms", "whatsapp", "telegram", "push")
CHANNELS_OPT_OUT = ("receipt", "inbox", "direct_mail")
WIDE = (None, "granted", "confirmed", "revoked", "suppressed")
TOPIC = (None, "granted", "confirmed", "requested", "revoked", "suppressed")


def expected(channel: str, topic: str, wide: str | None, state: str | None) -> str | None:
    """The rules as the README states them; None = allowed, else the reason."""
    if wide == "suppressed":
        return "suppressed"          # a dead address or a complaint blocks everything, service too
    if wide == "revoked":
        return "revoked"             # STOP / unsubscribe from everything on the channel
    if topic == "service":
        return None                  # service messages need no marketing consent
    if state in ("granted", "confirmed"):
        return None
    if state in ("revoked", "suppressed"):
        return state
    if state == "requested":
        return "unconfirmed"         # double opt-in not confirmed yet
    return None if channel in CHANNELS_OPT_OUT else "no_consent"


@pytest.mark.parametrize("channel", CHANNELS_OPT_IN + CHANNELS_OPT_OUT)
@pytest.mark.parametrize("topic", ["promotions", SERVICE_TOPIC])
def test_policy_table(channel, topic):
    for wide in WIDE:
        for state in TOPIC:
            states = {k: v for k, v in ((CHANNEL_WIDE, wide), (topic, state)) if v is not None}
            d = decide(states, topic=topic, channel=channel)
            want = expected(channel, topic, wide, state)
            assert (d.allowed, d.reason) == (want is None, want), (channel, topic, wide, state)
