"""Which adapter sends a program's messages on a channel: built from the program's provider account
(``channel_account``), or the sandbox when the channel has none.

    email                     the SMTP channel of the settings (one relay per deployment)
    sms, whatsapp             Twilio (channels.sms_twilio / whatsapp_twilio)
    telegram                  a bot per program (channels.telegram)
    push                      FCM HTTP v1 (channels.push_fcm)
    receipt, inbox,           kept in Clarion for the till, the app or the print batch (channels.stored)
    direct_mail

Sandbox: with no account, the real adapter runs with a :class:`SandboxOutbox`, which keeps the exact
request the provider would have received in ``sandbox_message`` (labelled sandbox everywhere it is shown)
and nothing leaves the machine. Only where the sandbox is allowed (``CLARION_SANDBOX``; by default on the
embedded stack and off against an external Temporal): elsewhere a channel with no account is not
available, and members go to their next channel (``available``). The account is read again after ``refresh_s`` seconds, so a new account or
a changed token takes effect without restarting workers; replaced adapters are closed at ``aclose``.

A :class:`Route` also carries the rate limit of the account: its key in the shared limiter
(``channels.ratelimit``) and messages per second (the account's, else the provider's default).
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from channels.accounts import default_rate, parse_account
from channels.base import Channel, ProviderAccountError, RecordedRequest, current_delivery
from channels.stored import STORED_CHANNELS, StoredChannel
from storage.db import session_scope
from storage.tables import ChannelAccount, ChannelName, SandboxMessage, utcnow

SANDBOX_TWILIO_SID = "AC" + "5a" * 16
SANDBOX_SENDER = "+15005550006"          # Twilio's magic test number


class SandboxOutbox:
    """Keeps a provider request in ``sandbox_message`` instead of sending it (the ``SandboxRecorder``)."""

    def __init__(self, engine: Engine, program_id: int) -> None:
        self._engine = engine
        self._program_id = program_id

    def record(self, request: RecordedRequest) -> str:
        with session_scope(self._engine) as s:
            row = SandboxMessage(program_id=self._program_id, delivery_id=current_delivery.get(),
                                 channel=request.channel, provider=request.provider, method=request.method,
                                 url=request.url, headers=dict(request.headers), body=request.body,
                                 created_at=utcnow())
            s.add(row)
            s.flush()
            return str(row.id)


class _NoAccount:
    """A channel with no account where the sandbox is not allowed: nothing can be sent (the message waits)."""

    def __init__(self, channel: str) -> None:
        self.channel = channel

    async def send(self, msg: Any) -> Any:
        raise ProviderAccountError(f"{self.channel}: the program has no account for this channel "
                                   "(`clarion channels set`)", code="no_account")

    async def aclose(self) -> None:
        pass


@dataclass(frozen=True)
class Route:
    channel: Any                     # a channels.base.Channel
    sandbox: bool
    rate_key: str | None = None
    rate_per_s: float | None = None
    account_id: int | None = None


class ChannelRegistry:
    def __init__(self, *, engine: Engine, email: Channel, public_base_url: str, refresh_s: float = 30.0,
                 email_rate_per_s: float | None = None, sandbox: bool = True) -> None:
        self._engine = engine
        self._sandbox = sandbox
        self._available: dict[int, tuple[float, frozenset[str]]] = {}
        self._email = email
        self._base_url = public_base_url.rstrip("/")
        self._refresh_s = refresh_s
        self._email_rate = email_rate_per_s
        self._routes: dict[tuple[int, str], tuple[float, tuple[Any, ...], Route]] = {}
        self._retired: list[Any] = []
        self._lock = threading.Lock()

    @property
    def email(self) -> Channel:
        return self._email

    def available(self, program_id: int) -> frozenset[str]:
        """The channels a program can send on: email, Clarion's own, those with an account, and the others
        when the sandbox is allowed. Blocking (cached for ``refresh_s``): call it in a thread."""
        now = time.monotonic()
        found = self._available.get(program_id)
        if found is not None and now - found[0] < self._refresh_s:
            return found[1]
        with Session(self._engine) as s:
            accounts = set(s.scalars(select(ChannelAccount.channel).where(ChannelAccount.program_id == program_id)))
        channels = {ChannelName.email.value, *(c.value for c in STORED_CHANNELS), *accounts}
        if self._sandbox:
            channels |= {c.value for c in ChannelName}
        result = frozenset(channels)
        self._available[program_id] = (now, result)
        return result

    def route(self, program_id: int, channel: str) -> Route:
        """The adapter for ``channel`` of a program. Blocking (reads the account): call it in a thread."""
        if channel == ChannelName.email:
            return Route(self._email, sandbox=False, rate_key="email" if self._email_rate else None,
                         rate_per_s=self._email_rate)
        key = (program_id, channel)
        now = time.monotonic()
        found = self._routes.get(key)
        if found is not None and now - found[0] < self._refresh_s:
            return found[2]
        with Session(self._engine) as s:
            account = s.scalar(select(ChannelAccount).where(ChannelAccount.program_id == program_id,
                                                            ChannelAccount.channel == channel))
        version = (account.updated_at.timestamp(), account.id, account.provider,
                   json.dumps(account.config, sort_keys=True), account.rate_per_s) if account is not None else ()
        with self._lock:
            found = self._routes.get(key)
            if found is not None and found[1] == version:
                self._routes[key] = (now, version, found[2])
                return found[2]
            if found is not None and found[1] and version and found[1][0] > version[0]:
                return found[2]   # another thread read a newer account meanwhile: keep it
            route = self._build(program_id, channel, account)
            if found is not None:
                self._retired.append(found[2].channel)
            self._routes[key] = (now, version, route)
            return route

    def _build(self, program_id: int, channel: str, account: ChannelAccount | None) -> Route:
        if channel in STORED_CHANNELS:
            return Route(StoredChannel(self._engine, ChannelName(channel)), sandbox=False)
        if account is None and not self._sandbox:
            return Route(_NoAccount(channel), sandbox=False)
        if account is None:   # nothing leaves the machine: no provider rate to respect
            recorder = SandboxOutbox(self._engine, program_id)
            return Route(self._sandbox_adapter(channel, recorder), sandbox=True)
        rate = account.rate_per_s or default_rate(channel)
        config = parse_account(channel, account.provider, account.config)
        adapter = self._adapter(channel, config)
        return Route(adapter, sandbox=False, rate_key=f"account:{account.id}" if rate else None,
                     rate_per_s=rate, account_id=account.id)

    def _twilio_config(self, *, account_sid: str, auth_token: str, sender: str, max_segments: int = 6,
                       base_url: str | None = None, timeout: float = 10.0) -> Any:
        from channels.sms_twilio import TwilioConfig

        return TwilioConfig(account_sid=account_sid, auth_token=auth_token, sender=sender,
                            status_callback=f"{self._base_url}/webhooks/twilio/status",
                            max_segments=max_segments, base_url=base_url, timeout=timeout)

    def _adapter(self, channel: str, config: Any) -> Any:
        if channel in (ChannelName.sms, ChannelName.whatsapp):
            from channels.sms_twilio import TwilioSmsChannel
            from channels.whatsapp_twilio import TwilioWhatsAppChannel

            cls = TwilioSmsChannel if channel == ChannelName.sms else TwilioWhatsAppChannel
            return cls(self._twilio_config(
                account_sid=config.account_sid, auth_token=config.auth_token.get_secret_value(),
                sender=config.sender, max_segments=config.max_segments, base_url=config.base_url,
                timeout=config.timeout_s))
        if channel == ChannelName.telegram:
            from channels.telegram import TelegramChannel, TelegramConfig

            return TelegramChannel(TelegramConfig(
                bot_token=config.bot_token.get_secret_value(), bot_username=config.bot_username,
                base_url=config.base_url, timeout=config.timeout_s,
                webhook_secret=config.webhook_secret.get_secret_value()))
        if channel == ChannelName.push:
            from channels.push_fcm import FcmConfig, FcmPushChannel

            return FcmPushChannel(FcmConfig(
                project_id=config.project_id, service_account_info=config.service_account_info,
                service_account_file=config.service_account_file, base_url=config.base_url,
                timeout=config.timeout_s))
        raise ValueError(f"no adapter for channel {channel!r}")

    def _sandbox_adapter(self, channel: str, recorder: SandboxOutbox) -> Any:
        if channel in (ChannelName.sms, ChannelName.whatsapp):
            from channels.sms_twilio import TwilioSmsChannel
            from channels.whatsapp_twilio import TwilioWhatsAppChannel

            cls = TwilioSmsChannel if channel == ChannelName.sms else TwilioWhatsAppChannel
            return cls(self._twilio_config(account_sid=SANDBOX_TWILIO_SID, auth_token="sandbox",
                                           sender=SANDBOX_SENDER), sandbox_recorder=recorder)
        if channel == ChannelName.telegram:
            from channels.telegram import TelegramChannel, TelegramConfig

            return TelegramChannel(TelegramConfig(bot_token="0:sandbox", bot_username="clarion_sandbox_bot"),
                                   sandbox_recorder=recorder)
        if channel == ChannelName.push:
            from channels.push_fcm import FcmConfig, FcmPushChannel

            return FcmPushChannel(FcmConfig(project_id="clarion-sandbox"), sandbox_recorder=recorder)
        raise ValueError(f"no sandbox for channel {channel!r}")

    async def aclose(self) -> None:
        adapters = [r.channel for _, _, r in self._routes.values()] + self._retired
        self._routes.clear()
        self._retired.clear()
        for adapter in adapters:
            if adapter is not self._email and hasattr(adapter, "aclose"):
                await adapter.aclose()
        await self._email.aclose()  # type: ignore[attr-defined]
