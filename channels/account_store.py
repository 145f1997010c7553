"""A program's provider accounts and its sandbox outbox, read and written for the API and the CLI."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from channels.accounts import PROVIDERS, AccountError, default_rate, masked, parse_account, stored_config
from members.service import get_program
from storage.db import session_scope, upsert
from storage.tables import ChannelAccount, SandboxMessage, utcnow


@dataclass(frozen=True)
class AccountView:
    channel: str
    provider: str                 # "sandbox" when the channel has no account
    sandbox: bool
    config: dict[str, Any]        # secrets masked
    rate_per_s: float | None
    updated_at: datetime | None = None


def set_account(*, engine: Engine, program: str, channel: str, provider: str, config: dict[str, Any],
                rate_per_s: float | None = None) -> AccountView:
    """Validate and store (or replace) the program's account for ``channel``. AccountError names the field."""
    account = parse_account(channel, provider, config)
    if rate_per_s is not None and not 0 < rate_per_s <= 10_000:
        raise AccountError([("rate_per_s", "messages per second must be between 0 and 10000")])
    values = stored_config(account)
    now = utcnow()
    with session_scope(engine) as s:
        program_id = get_program(s, program).id
        s.execute(upsert(s, ChannelAccount.__table__, ["program_id", "channel"],
                         ["provider", "config", "rate_per_s", "updated_at"]),
                  [{"program_id": program_id, "channel": channel, "provider": provider, "config": values,
                    "rate_per_s": rate_per_s, "created_at": now, "updated_at": now}])
    return AccountView(channel, provider, False, masked(values), rate_per_s or default_rate(channel), now)


def list_accounts(*, engine: Engine, program: str, sandbox_allowed: bool = True) -> list[AccountView]:
    """Every channel that takes an account, with the program's account, or "sandbox" (or "none" where the
    sandbox is not allowed: the channel is not available)."""
    with Session(engine) as s:
        program_id = get_program(s, program).id
        rows = {a.channel: a for a in s.scalars(select(ChannelAccount).where(ChannelAccount.program_id == program_id))}
    out = []
    for channel in PROVIDERS:
        a = rows.get(channel)
        if a is None:
            builtin = next(iter(PROVIDERS[channel])) == "clarion"
            provider = "clarion" if builtin else ("sandbox" if sandbox_allowed else "none")
            out.append(AccountView(channel, provider, not builtin and sandbox_allowed, {}, None))
        else:
            out.append(AccountView(channel, a.provider, False, masked(a.config), a.rate_per_s or default_rate(channel),
                                   a.updated_at))
    return out


def remove_account(*, engine: Engine, program: str, channel: str) -> bool:
    """The channel goes back to the sandbox. False when there was no account."""
    with session_scope(engine) as s:
        program_id = get_program(s, program).id
        return bool(s.execute(delete(ChannelAccount).where(ChannelAccount.program_id == program_id,  # type: ignore[arg-type]
                                                           ChannelAccount.channel == channel)).rowcount)


def sandbox_messages(*, engine: Engine, program: str | None = None, channel: str | None = None,
                     limit: int = 50, before_id: int | None = None) -> tuple[list[SandboxMessage], int]:
    """The newest recorded provider requests (and how many there are in all for the filter)."""
    with Session(engine) as s:
        where = []
        if program:
            where.append(SandboxMessage.program_id == get_program(s, program).id)
        if channel:
            where.append(SandboxMessage.channel == channel)
        total = s.scalar(select(func.count()).select_from(SandboxMessage).where(*where)) or 0
        if before_id:
            where.append(SandboxMessage.id < before_id)  # type: ignore[operator]
        rows = list(s.scalars(select(SandboxMessage).where(*where)
                              .order_by(SandboxMessage.id.desc()).limit(limit)))  # type: ignore[union-attr]
    return rows, total


def sandbox_counts(*, engine: Engine, program: str | None = None) -> dict[str, int]:
    with Session(engine) as s:
        q = select(SandboxMessage.channel, func.count()).group_by(SandboxMessage.channel)
        if program:
            q = q.where(SandboxMessage.program_id == get_program(s, program).id)
        return {c: n for c, n in s.execute(q)}
