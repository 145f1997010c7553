"""A member's profile as the loyalty core sends it: validated and normalized. Pure."""

from __future__ import annotations

from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import phonenumbers
from email_validator import EmailNotValidError, validate_email
from pydantic import BaseModel, ConfigDict, Field, field_validator

from storage.tables import MemberKind
from templates.render import normalize_locale

_ZONES: set[str] | None = None


class ConsentGrant(BaseModel):
    """A consent the loyalty core collected (e.g. at registration), recorded with source ``api``/``import``."""

    model_config = ConfigDict(extra="forbid")

    channel: str = Field(pattern=r"^(email|sms|whatsapp|telegram|push|receipt|inbox|direct_mail)$")
    topic: str = Field(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")
    # requested: the member asked on a channel with double opt-in; a confirmation is sent, consent once confirmed
    action: str = Field(default="granted", pattern=r"^(granted|revoked|requested)$")
    wording_version: str | None = Field(default=None, max_length=64)


class PostalAddress(BaseModel):
    """Where direct mail goes. ``country`` is an ISO 3166 alpha-2 code."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    line1: str = Field(min_length=1, max_length=200)
    line2: str | None = Field(default=None, max_length=200)
    postcode: str | None = Field(default=None, max_length=20)
    city: str = Field(min_length=1, max_length=100)
    region: str | None = Field(default=None, max_length=100)
    country: str = Field(pattern=r"^[A-Z]{2}$", description="ISO 3166 alpha-2, e.g. RU, DE, GB")
    name: str | None = Field(default=None, max_length=200, description="addressee, if not the member's name")


class CardIn(BaseModel):
    """A loyalty card of the member (the till finds the member by it)."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    number: str = Field(pattern=r"^[A-Za-z0-9\-]{4,64}$")
    status: str = Field(default="active", pattern=r"^(active|blocked|lost|expired)$")


def address_lines(address: dict[str, Any] | None, first_name: str | None = None,
                  last_name: str | None = None) -> list[str]:
    """The address block of a letter, one line each: addressee, street lines, postcode and city, region,
    country. Empty when there is no usable address."""
    if not address or not address.get("line1") or not address.get("city"):
        return []
    name = address.get("name") or " ".join(p for p in (first_name, last_name) if p)
    city = " ".join(p for p in (address.get("postcode"), address.get("city")) if p)
    lines = [name, address.get("line1"), address.get("line2"), city, address.get("region"),
             address.get("country")]
    return [str(line) for line in lines if line]


class MemberIn(BaseModel):
    """What the loyalty core may send for a member. Unknown fields are refused."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    kind: MemberKind = MemberKind.individual
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    locale: str | None = None
    time_zone: str | None = None
    email: str | None = None
    phone: str | None = None
    postal_address: PostalAddress | None = None
    cards: list[CardIn] = Field(default_factory=list, max_length=20)
    attributes: dict[str, Any] = Field(default_factory=dict)
    consents: list[ConsentGrant] = Field(default_factory=list)

    @field_validator("email")
    @classmethod
    def _email(cls, v: str | None) -> str | None:
        if not v:
            return None
        try:
            return validate_email(v, check_deliverability=False).normalized
        except EmailNotValidError as exc:
            raise ValueError(f"not a valid email address: {exc}") from None

    @field_validator("phone")
    @classmethod
    def _phone(cls, v: str | None) -> str | None:
        if not v:
            return None
        try:
            number = phonenumbers.parse(v, None)
        except phonenumbers.NumberParseException:
            raise ValueError("not a phone number in international form (+country code)") from None
        if not phonenumbers.is_valid_number(number):
            raise ValueError("not a valid phone number")
        return phonenumbers.format_number(number, phonenumbers.PhoneNumberFormat.E164)

    @field_validator("locale")
    @classmethod
    def _locale(cls, v: str | None) -> str | None:
        return normalize_locale(v) if v else None

    @field_validator("time_zone")
    @classmethod
    def _tz(cls, v: str | None) -> str | None:
        global _ZONES
        if not v:
            return None
        if _ZONES is None:
            _ZONES = available_timezones()
        if v not in _ZONES:
            raise ValueError(f"unknown time zone {v!r} (use an IANA name such as Europe/Moscow)")
        try:
            ZoneInfo(v)
        except ZoneInfoNotFoundError:  # pragma: no cover
            raise ValueError(f"unknown time zone {v!r}") from None
        return v

    @field_validator("attributes")
    @classmethod
    def _flat(cls, v: dict[str, Any]) -> dict[str, Any]:
        for key, value in v.items():
            if not isinstance(value, str | int | float | bool) and value is not None:
                raise ValueError(f"attribute {key!r}: only text, numbers, true/false or null")
        return v
