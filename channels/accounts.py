"""A program's accounts at the channels' providers: what each provider needs, validated, with the secrets
masked whenever an account is shown. Pure (pydantic); stored in ``channel_account`` (storage.tables).

A channel with no account runs in the sandbox (``channels.registry``): the real adapter builds the exact
provider request and the sandbox outbox keeps it instead of sending it.

    channel       provider   config
    sms           twilio     account_sid, auth_token*, sender (E.164 or MG... messaging service), max_segments
    whatsapp      twilio     account_sid, auth_token*, sender
    telegram      telegram   bot_token*, bot_username, webhook_secret*
    push          fcm        project_id, service_account_info* (the JSON key) or service_account_file
    receipt       clarion    max_per_checkout, reservation_s   (kept in Clarion for the tills to fetch)
    inbox         clarion    (none)                              (kept in Clarion for the app to fetch)
    direct_mail   clarion    sender (lines), paper             (one PDF batch per campaign wave)

    * secret: shown as "****" plus its last 4 characters. ``base_url`` (every HTTP provider) points the real
      client library at another endpoint (a provider's regional or test endpoint; local fakes in tests).
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from storage.tables import ChannelName

_HTTP = r"^https?://[^\s]+$"


class _Account(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class TwilioAccount(_Account):
    account_sid: Annotated[str, Field(pattern=r"^AC[0-9a-fA-F]{32}$")]
    auth_token: SecretStr
    sender: Annotated[str, Field(pattern=r"^(\+[1-9]\d{6,14}|MG[0-9a-fA-F]{32})$",
                                 description="an E.164 number or a messaging service SID (MG...)")]
    max_segments: Annotated[int, Field(ge=1, le=10)] = 6
    base_url: Annotated[str | None, Field(pattern=_HTTP)] = None
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0


class TelegramAccount(_Account):
    bot_token: SecretStr
    bot_username: Annotated[str, Field(pattern=r"^[A-Za-z][A-Za-z0-9_]{3,31}$")]
    webhook_secret: SecretStr
    base_url: Annotated[str | None, Field(pattern=_HTTP)] = None
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0

    @field_validator("bot_token")
    @classmethod
    def _token(cls, v: SecretStr) -> SecretStr:
        if not re.fullmatch(r"\d{1,20}:[A-Za-z0-9_-]{20,}", v.get_secret_value()):
            raise ValueError("a bot token looks like 123456789:AA... (from @BotFather)")
        return v

    @field_validator("webhook_secret")
    @classmethod
    def _secret(cls, v: SecretStr) -> SecretStr:
        if not re.fullmatch(r"[A-Za-z0-9_-]{16,256}", v.get_secret_value()):
            raise ValueError("16 to 256 characters of A-Z, a-z, 0-9, _ and - (Telegram's rule)")
        return v


class FcmAccount(_Account):
    project_id: Annotated[str, Field(pattern=r"^[a-z][a-z0-9-]{4,61}[a-z0-9]$")]
    service_account_info: dict[str, Any] | None = None
    service_account_file: str | None = None
    base_url: Annotated[str | None, Field(pattern=_HTTP)] = None
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 10.0

    @field_validator("service_account_info")
    @classmethod
    def _info(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        if v is not None and (v.get("type") != "service_account" or "private_key" not in v):
            raise ValueError("give the service account's JSON key (type service_account, with private_key)")
        return v


class ReceiptAccount(_Account):
    max_per_checkout: Annotated[int, Field(ge=1, le=10)] = 2
    reservation_s: Annotated[int, Field(ge=10, le=86400)] = 600


class InboxAccount(_Account):
    pass


class DirectMailAccount(_Account):
    sender: list[Annotated[str, Field(max_length=120)]] = Field(default_factory=list, max_length=4)
    paper: Literal["A4", "A5", "letter"] = "A4"


PROVIDERS: dict[str, dict[str, type[_Account]]] = {
    ChannelName.sms: {"twilio": TwilioAccount},
    ChannelName.whatsapp: {"twilio": TwilioAccount},
    ChannelName.telegram: {"telegram": TelegramAccount},
    ChannelName.push: {"fcm": FcmAccount},
    ChannelName.receipt: {"clarion": ReceiptAccount},
    ChannelName.inbox: {"clarion": InboxAccount},
    ChannelName.direct_mail: {"clarion": DirectMailAccount},
}
SECRET_FIELDS = frozenset({"auth_token", "bot_token", "webhook_secret", "service_account_info"})


class AccountError(ValueError):
    """The account is not valid: ``problems`` lists (path, message)."""

    def __init__(self, problems: list[tuple[str, str]]) -> None:
        self.problems = problems
        super().__init__("; ".join(f"{p}: {m}" for p, m in problems))


def parse_account(channel: str, provider: str, config: dict[str, Any]) -> _Account:
    """The validated account, or AccountError naming the bad field (``config.auth_token: ...``)."""
    if channel not in PROVIDERS:
        raise AccountError([("channel", f"accounts are for {', '.join(PROVIDERS)}; email is set in the "
                                        "settings (CLARION_SMTP_*)")])
    models = PROVIDERS[channel]
    if provider not in models:
        raise AccountError([("provider", f"{channel} works with {', '.join(models)}")])
    if not isinstance(config, dict):
        raise AccountError([("config", "give the provider's settings as a mapping")])
    try:
        return models[provider].model_validate(config)
    except ValidationError as exc:
        raise AccountError([(".".join(["config", *(str(p) for p in e["loc"])]),
                             e["msg"].removeprefix("Value error, ")) for e in exc.errors()]) from None


def stored_config(account: _Account) -> dict[str, Any]:
    """What goes in ``channel_account.config``: the plain values, secrets included."""
    out = account.model_dump(exclude_none=True)
    return {k: (v.get_secret_value() if isinstance(v, SecretStr) else v) for k, v in out.items()}


def masked(config: dict[str, Any]) -> dict[str, Any]:
    """The config as it may be shown: secrets as ``****`` and their last 4 characters."""
    out: dict[str, Any] = {}
    for k, v in config.items():
        if k in SECRET_FIELDS and v:
            tail = str(v)[-4:] if isinstance(v, str) and len(v) >= 12 else ""
            out[k] = "****" + tail
        else:
            out[k] = v
    return out


# messages per second per provider account when the account does not say: Telegram's limit per bot; modest
# figures for the others (a Twilio long code takes 1/s, a messaging service or short code far more: set
# the account's rate to what the provider granted)
DEFAULT_RATES: dict[str, float] = {ChannelName.telegram: 30.0, ChannelName.sms: 10.0, ChannelName.whatsapp: 20.0,
                                   ChannelName.push: 500.0}


def default_rate(channel: str) -> float | None:
    """Messages per second per provider account when the account does not say."""
    return DEFAULT_RATES.get(channel)
