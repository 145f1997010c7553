"""SQLModel tables: the data of DESIGN.md. Tables only, no behaviour.

Every row belongs to a program. Closed sets are StrEnums stored as plain strings (portable across
SQLite and PostgreSQL, no database enum types to migrate). Timestamps are stored in UTC.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    JSON,
    Column,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    Numeric,
    Text,
    UniqueConstraint,
)
from sqlmodel import Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


def _ts(**kw: Any) -> Any:
    return Field(sa_type=DateTime(timezone=True), **kw)


class MemberKind(StrEnum):
    individual = "individual"
    legal_entity = "legal_entity"


class ChannelName(StrEnum):
    email = "email"
    sms = "sms"
    whatsapp = "whatsapp"
    telegram = "telegram"
    push = "push"
    receipt = "receipt"
    inbox = "inbox"
    direct_mail = "direct_mail"


class ConsentAction(StrEnum):
    granted = "granted"
    revoked = "revoked"
    confirmed = "confirmed"
    suppressed = "suppressed"
    requested = "requested"      # asked for on a channel with double opt-in: not consent until confirmed


class ConsentSource(StrEnum):
    web = "web"
    pos = "pos"
    sms_keyword = "sms_keyword"
    telegram = "telegram"
    import_ = "import"
    api = "api"
    bounce = "bounce"
    complaint = "complaint"
    unsubscribe = "unsubscribe"
    provider = "provider"        # the provider says the address is gone (opted out there, blocked, invalid)


class CampaignKind(StrEnum):
    broadcast = "broadcast"
    triggered = "triggered"


class CampaignStatus(StrEnum):
    draft = "draft"
    scheduled = "scheduled"
    running = "running"
    paused = "paused"
    completed = "completed"
    cancelled = "cancelled"
    budget_exhausted = "budget_exhausted"
    failed = "failed"


class DeliveryStatus(StrEnum):
    planned = "planned"
    suppressed = "suppressed"
    held_out = "held_out"
    sending = "sending"
    queued = "queued"      # in a batch not handed over yet (direct mail): sent when it is
    sent = "sent"
    delivered = "delivered"
    failed = "failed"
    in_doubt = "in_doubt"


class ResponseKind(StrEnum):
    delivered = "delivered"
    opened = "opened"
    opened_machine = "opened_machine"
    clicked = "clicked"
    clicked_machine = "clicked_machine"  # a link scanner or preview bot followed the link, not the member
    replied = "replied"
    unsubscribed = "unsubscribed"
    complained = "complained"
    converted = "converted"
    dismissed = "dismissed"          # inbox: the member dismissed the message


class Role(StrEnum):
    admin = "admin"
    marketer = "marketer"
    core = "core"
    analyst = "analyst"
    pos = "pos"


# --- program -------------------------------------------------------------------------------


class Program(SQLModel, table=True):
    """A loyalty program (brand); several share one deployment."""

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(unique=True, max_length=64)
    name: str = Field(max_length=200)
    default_locale: str = Field(default="en", max_length=35)
    time_zone: str = Field(default="UTC", max_length=64)
    currency: str = Field(default="EUR", max_length=3)
    # unit costs per channel, quiet hours per channel, frequency caps (campaigns.rules.ProgramRules)
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(default_factory=utcnow)


# --- members -------------------------------------------------------------------------------


class Member(SQLModel, table=True):
    """A member as the loyalty core knows it, with the contacts Clarion may use."""

    __table_args__ = (UniqueConstraint("program_id", "external_id", name="uq_member_external"),
                      Index("ix_member_phone", "program_id", "phone"),
                      Index("ix_member_telegram", "program_id", "telegram_chat_id"))

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", index=True)
    external_id: str = Field(max_length=128)
    kind: str = Field(default=MemberKind.individual, max_length=16)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    locale: str | None = Field(default=None, max_length=35)
    time_zone: str | None = Field(default=None, max_length=64)
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=20)  # E.164
    telegram_chat_id: str | None = Field(default=None, max_length=32)
    # postal address for direct mail: {name, line1, line2, postcode, city, region, country}
    postal_address: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    whatsapp_inbound_at: datetime | None = _ts(default=None)   # opens WhatsApp's 24 h window
    # the member's own choices beyond consent: {"quiet_hours": {"from": "22:00", "to": "08:00"}}
    preferences: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    erased_at: datetime | None = _ts(default=None)   # personal data removed (member rights); figures kept
    attributes: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)


class PushToken(SQLModel, table=True):
    """A device token registered by the loyalty app."""

    __tablename__ = "push_token"
    __table_args__ = (UniqueConstraint("member_id", "token", name="uq_push_token"),)

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    token: str = Field(max_length=4096)
    platform: str = Field(default="android", max_length=16)
    created_at: datetime = _ts(default_factory=utcnow)


class Card(SQLModel, table=True):
    """A loyalty card of a member."""

    __table_args__ = (UniqueConstraint("member_id", "number", name="uq_card_number"),
                      Index("ix_card_number", "number"))

    id: int | None = Field(default=None, primary_key=True)
    member_id: int = Field(foreign_key="member.id", index=True)
    number: str = Field(max_length=64)
    status: str = Field(default="active", max_length=16)
    issued_at: datetime = _ts(default_factory=utcnow)


# --- events --------------------------------------------------------------------------------


class Event(SQLModel, table=True):
    """Something that happened to a member in the loyalty core; its id is the idempotency key."""

    __table_args__ = (
        UniqueConstraint("program_id", "source_event_id", name="uq_event_source"),
        Index("ix_event_member_type_at", "member_id", "type", "occurred_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", index=True)
    source_event_id: str = Field(max_length=128)
    type: str = Field(max_length=64)
    member_id: int = Field(foreign_key="member.id", index=True)
    occurred_at: datetime = _ts()
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    received_at: datetime = _ts(default_factory=utcnow)


# --- consent -------------------------------------------------------------------------------


class ConsentRecord(SQLModel, table=True):
    """Append-only ledger: one row per consent act, with its proof. Never updated."""

    __tablename__ = "consent_record"
    __table_args__ = (Index("ix_consent_record_member", "member_id", "channel", "topic"),)

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", index=True)
    member_id: int = Field(foreign_key="member.id")
    channel: str = Field(max_length=16)
    topic: str = Field(max_length=64)  # "*" = the whole channel
    action: str = Field(max_length=16)
    source: str = Field(max_length=16)
    wording_version: str | None = Field(default=None, max_length=64)
    text_hash: str | None = Field(default=None, max_length=64)   # SHA-256 of the exact text the member was shown
    ip: str | None = Field(default=None, max_length=45)
    user_agent: str | None = Field(default=None, max_length=512)
    campaign_id: int | None = Field(default=None, foreign_key="campaign.id")
    at: datetime = _ts(default_factory=utcnow)


class ConsentState(SQLModel, table=True):
    """Current consent per (member, channel, topic), derived from the ledger in the same transaction."""

    __tablename__ = "consent_state"

    member_id: int = Field(foreign_key="member.id", primary_key=True)
    channel: str = Field(max_length=16, primary_key=True)
    topic: str = Field(max_length=64, primary_key=True)
    program_id: int = Field(foreign_key="program.id", index=True)
    status: str = Field(max_length=16)
    record_id: int = Field(foreign_key="consent_record.id")
    updated_at: datetime = _ts(default_factory=utcnow)


# --- campaigns and deliveries --------------------------------------------------------------


class Campaign(SQLModel, table=True):
    """A campaign: its validated spec and where it stands."""

    __table_args__ = (UniqueConstraint("program_id", "key", name="uq_campaign_key"),)

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id", index=True)
    key: str = Field(max_length=64)
    name: str = Field(max_length=200)
    kind: str = Field(default=CampaignKind.broadcast, max_length=16)
    status: str = Field(default=CampaignStatus.draft, max_length=16)
    topic: str = Field(max_length=64)
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    spec_hash: str = Field(max_length=64)
    budget_limit: Decimal | None = Field(default=None, sa_column=Column(Numeric(14, 4)))
    budget_spent: Decimal = Field(default=Decimal(0), sa_column=Column(Numeric(14, 4), nullable=False))
    version: int = Field(default=1)
    workflow_id: str | None = Field(default=None, max_length=200)
    # the template versions the campaign launched with: {name: version} (rendered as they were then)
    template_versions: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True),
                                                                                  nullable=True))
    created_at: datetime = _ts(default_factory=utcnow)
    started_at: datetime | None = _ts(default=None)
    finished_at: datetime | None = _ts(default=None)


class Delivery(SQLModel, table=True):
    """One intended message. Status moves forward only (see DeliveryStatus)."""

    __table_args__ = (
        UniqueConstraint("campaign_id", "member_id", "step", "occurrence", name="uq_delivery"),
        Index("ix_delivery_provider_message", "provider_message_id"),
        # covers the campaign report (one index-only scan, already in group order): see analytics.report
        Index("ix_delivery_report", "campaign_id", "status", "step", "channel", "locale", "variant", "segment",
              "reason", "response_flags", "cost", "revenue"),
        Index("ix_delivery_campaign_sent", "campaign_id", "sent_at", "status", "cost"),
        Index("ix_delivery_member_sent", "member_id", "sent_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    campaign_id: int = Field(foreign_key="campaign.id")
    member_id: int = Field(foreign_key="member.id", index=True)
    step: str = Field(default="main", max_length=32)
    occurrence: str = Field(default="wave-1", max_length=128)
    status: str = Field(max_length=16)
    reason: str | None = Field(default=None, max_length=64)
    channel: str | None = Field(default=None, max_length=16)
    locale: str | None = Field(default=None, max_length=35)
    variant: str | None = Field(default=None, max_length=32)
    segment: str | None = Field(default=None, max_length=64)   # the first of the spec's report segments matched
    cost: Decimal | None = Field(default=None, sa_column=Column(Numeric(12, 4)))
    # the responses seen so far, one bit per kind (analytics.responses.BITS), and the attributed revenue
    response_flags: int = Field(default=0, sa_column=Column(Integer, nullable=False, server_default="0"))
    revenue: Decimal | None = Field(default=None, sa_column=Column(Numeric(14, 4)))
    provider_message_id: str | None = Field(default=None, max_length=255)
    error_code: str | None = Field(default=None, max_length=64)
    # channels tried before this one (fallback): [{"channel": "sms", "code": "21211"}]
    attempts: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON(none_as_null=True), nullable=True))
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)
    sent_at: datetime | None = _ts(default=None)
    due_at: datetime | None = _ts(default=None)  # not before (a trigger's delay); None = now


class Response(SQLModel, table=True):
    """A member's (or provider's) response to a delivery; deduplicated by the provider's event id."""

    __table_args__ = (UniqueConstraint("provider_event_id", name="uq_response_provider_event"),
                      Index("ix_response_campaign_at", "campaign_id", "at", "kind", "detail", "value"))

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="delivery.id", index=True)
    campaign_id: int | None = Field(default=None, foreign_key="campaign.id")  # the delivery's (the daily curve)
    kind: str = Field(max_length=16)
    at: datetime = _ts(default_factory=utcnow)
    value: Decimal | None = Field(default=None, sa_column=Column(Numeric(14, 4)))
    provider_event_id: str | None = Field(default=None, max_length=255)
    detail: str | None = Field(default=None, max_length=255)   # a click's link label, why an open is a machine's


class StoredMessage(SQLModel, table=True):
    """A message kept for the member to pull (till receipt, app inbox) or to print in a batch (direct mail).

    ``state``: pending → reserved (a checkout holds it until ``reserved_until``) → done (printed, read) |
    dismissed; direct mail: pending → done when its batch is handed over (``batch``)."""

    __tablename__ = "stored_message"
    __table_args__ = (
        Index("ix_stored_message_member", "member_id", "channel", "state"),
        Index("ix_stored_message_batch", "campaign_id", "channel", "state"),
    )

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id")
    campaign_id: int = Field(foreign_key="campaign.id")
    member_id: int = Field(foreign_key="member.id")
    delivery_id: int = Field(foreign_key="delivery.id", unique=True)
    channel: str = Field(max_length=16)
    title: str | None = Field(default=None, max_length=500)
    body: str = Field(sa_column=Column(Text, nullable=False))
    link: str | None = Field(default=None, max_length=2048)
    coupon: str | None = Field(default=None, max_length=64)
    locale: str | None = Field(default=None, max_length=35)
    data: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(default="pending", max_length=16)
    reserved_by: str | None = Field(default=None, max_length=128)   # store/checkout that holds it
    reserved_until: datetime | None = _ts(default=None)
    receipt_number: str | None = Field(default=None, max_length=64)
    batch: str | None = Field(default=None, max_length=200)         # direct mail: the handed-over batch
    expires_at: datetime | None = _ts(default=None)
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)


class ChannelAccount(SQLModel, table=True):
    """A program's account at a channel's provider: sender, credentials, rate. None = sandbox."""

    __tablename__ = "channel_account"
    __table_args__ = (UniqueConstraint("program_id", "channel", name="uq_channel_account"),)

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id")
    channel: str = Field(max_length=16)
    provider: str = Field(max_length=32)
    # provider settings and secrets (channels.accounts validates them); shown masked
    config: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    rate_per_s: float | None = Field(default=None, sa_column=Column(Float, nullable=True))
    created_at: datetime = _ts(default_factory=utcnow)
    updated_at: datetime = _ts(default_factory=utcnow)


class SandboxMessage(SQLModel, table=True):
    """The exact request a provider would have received, kept instead of sending (sandbox)."""

    __tablename__ = "sandbox_message"

    id: int | None = Field(default=None, primary_key=True)
    program_id: int | None = Field(default=None, foreign_key="program.id", index=True)
    delivery_id: int | None = Field(default=None, index=True)
    channel: str = Field(max_length=16)
    provider: str = Field(max_length=32)
    method: str = Field(max_length=8)
    url: str = Field(max_length=2048)
    headers: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    body: str = Field(sa_column=Column(Text, nullable=False))
    created_at: datetime = _ts(default_factory=utcnow)


class TemplateVersion(SQLModel, table=True):
    """An immutable version of a template: its text files (``template.yaml``, bodies, shared partials)."""

    __tablename__ = "template_version"
    __table_args__ = (UniqueConstraint("name", "version", name="uq_template_version"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    version: int
    files: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    source: str = Field(max_length=16)          # pinned (a library version a campaign launched with) | import
    note: str | None = Field(default=None, max_length=500)
    created_at: datetime = _ts(default_factory=utcnow)


class TemplateAsset(SQLModel, table=True):
    """An image of an imported template version, served at /assets/{name}/{version}/{path}."""

    __tablename__ = "template_asset"
    __table_args__ = (UniqueConstraint("name", "version", "path", name="uq_template_asset"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64)
    version: int
    path: str = Field(max_length=255)
    media_type: str = Field(max_length=64)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))


class CouponCode(SQLModel, table=True):
    """A unique code of a program's pool, given to one member once (``{{ coupon }}`` in a template)."""

    __tablename__ = "coupon_code"
    __table_args__ = (UniqueConstraint("program_id", "pool", "code", name="uq_coupon_code"),
                      UniqueConstraint("program_id", "pool", "member_id", name="uq_coupon_member"),
                      Index("ix_coupon_free", "program_id", "pool", "member_id"))

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id")
    pool: str = Field(max_length=64)
    code: str = Field(max_length=64)
    member_id: int | None = Field(default=None, foreign_key="member.id")
    assigned_at: datetime | None = _ts(default=None)


class EarlyStatus(SQLModel, table=True):
    """A provider's status report that came before we recorded the message id it names (the delivery
    activity records ids per chunk); applied when the id is recorded, dropped after two days."""

    __tablename__ = "early_status"

    id: int | None = Field(default=None, primary_key=True)
    provider_message_id: str = Field(max_length=255, index=True)
    status: str = Field(max_length=16)
    error_code: str | None = Field(default=None, max_length=64)
    event_id: str = Field(max_length=255, unique=True)
    received_at: datetime = _ts(default_factory=utcnow)


class Confirmation(SQLModel, table=True):
    """A double opt-in request: the confirmation message sent to an address, and whether it was confirmed.

    ``status``: pending → sending → sent → confirmed | expired; ``in_doubt`` when a send may or may not
    have gone (never sent again). The address is kept as the proof of where the link went."""

    __table_args__ = (Index("ix_confirmation_status", "status", "requested_at"),)

    id: int | None = Field(default=None, primary_key=True)
    program_id: int = Field(foreign_key="program.id")
    member_id: int = Field(foreign_key="member.id", index=True)
    channel: str = Field(max_length=16)
    address: str | None = Field(default=None, max_length=320)
    topics: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    status: str = Field(default="pending", max_length=16)
    provider_message_id: str | None = Field(default=None, max_length=255)
    requested_at: datetime = _ts(default_factory=utcnow)
    sent_at: datetime | None = _ts(default=None)
    confirmed_at: datetime | None = _ts(default=None)


class MemberLink(SQLModel, table=True):
    """A one-time link that ties a member to an address they prove they own (a Telegram chat via the bot's
    deep link). Only the token's SHA-256 is stored; the token itself carries nothing readable."""

    __tablename__ = "member_link"

    token_hash: str = Field(primary_key=True, max_length=64)
    program_id: int = Field(foreign_key="program.id")
    member_id: int = Field(foreign_key="member.id", index=True)
    channel: str = Field(max_length=16)
    topics: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    expires_at: datetime = _ts()
    used_at: datetime | None = _ts(default=None)
    created_at: datetime = _ts(default_factory=utcnow)


class RateLimit(SQLModel, table=True):
    """A shared limiter (GCRA): the theoretical arrival time of the next message of a provider account."""

    __tablename__ = "rate_limit"

    key: str = Field(primary_key=True, max_length=128)
    tat: float = Field(sa_column=Column(Float, nullable=False))   # seconds since the epoch
    updated_at: datetime = _ts(default_factory=utcnow)


# --- access --------------------------------------------------------------------------------


class ApiKey(SQLModel, table=True):
    """An API key: only its SHA-256 is stored; the prefix finds the row."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    prefix: str = Field(unique=True, max_length=16)
    key_hash: str = Field(max_length=64)
    role: str = Field(max_length=16)
    name: str | None = Field(default=None, max_length=200)
    created_at: datetime = _ts(default_factory=utcnow)
    revoked_at: datetime | None = _ts(default=None)
