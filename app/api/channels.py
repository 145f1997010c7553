"""A program's channel accounts (admin) and the sandbox outbox (what would have been sent, labelled sandbox)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query
from pydantic import BaseModel, Field

from app.api.deps import EngineDep, SettingsDep, require
from app.errors import Invalid, NotFound
from channels.account_store import list_accounts, remove_account, sandbox_messages, set_account
from channels.accounts import PROVIDERS, AccountError
from storage.tables import Role

router = APIRouter(tags=["channels"])
ProgramKey = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
ChannelP = Annotated[str, Path(pattern=r"^(sms|whatsapp|telegram|push|receipt|inbox|direct_mail)$",
                               description="the channel (email is configured in the settings)")]


class AccountIn(BaseModel):
    provider: str = Field(description="twilio (sms, whatsapp), telegram, fcm (push), clarion (receipt, inbox, "
                                      "direct_mail)")
    config: dict[str, Any] = Field(default_factory=dict)
    rate_per_s: float | None = Field(default=None, gt=0, le=10_000)


def _view(a: Any) -> dict[str, Any]:
    return {"channel": a.channel, "provider": a.provider, "sandbox": a.sandbox, "config": a.config,
            "rate_per_s": a.rate_per_s, "updated_at": a.updated_at.isoformat() if a.updated_at else None}


@router.get("/api/v1/programs/{program}/channels", dependencies=[Depends(require())])
def get_channels(program: ProgramKey, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    """Each channel's provider account, secrets masked; ``sandbox: true`` where none is set and the sandbox
    is allowed, provider ``none`` where it is not (the channel is not available) (admin)."""
    accounts = list_accounts(engine=engine, program=program, sandbox_allowed=settings.sandbox_allowed)
    return {"program": program, "channels": [_view(a) for a in accounts]}


@router.put("/api/v1/programs/{program}/channels/{channel}", dependencies=[Depends(require())])
def put_channel(program: ProgramKey, channel: ChannelP, body: AccountIn, engine: EngineDep) -> dict[str, Any]:
    """Set the program's account for a channel (admin). Errors name the field, e.g. ``config.auth_token``."""
    try:
        view = set_account(engine=engine, program=program, channel=channel, provider=body.provider,
                           config=body.config, rate_per_s=body.rate_per_s)
    except AccountError as exc:
        raise Invalid(exc.problems) from None
    return _view(view)


@router.delete("/api/v1/programs/{program}/channels/{channel}", dependencies=[Depends(require())])
def delete_channel(program: ProgramKey, channel: ChannelP, engine: EngineDep) -> dict[str, Any]:
    """Remove the account: the channel goes back to the sandbox (admin)."""
    if not remove_account(engine=engine, program=program, channel=channel):
        raise NotFound(f"program {program!r} has no {channel} account", field="channel")
    return {"channel": channel, "sandbox": next(iter(PROVIDERS[channel])) != "clarion"}


@router.get("/api/v1/sandbox/messages", dependencies=[Depends(require(Role.marketer, Role.analyst))])
def get_sandbox_messages(engine: EngineDep, program: Annotated[str | None, Query(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")] = None,
                         channel: Annotated[str | None, Query(pattern=r"^[a-z_]{2,16}$")] = None,
                         limit: Annotated[int, Query(ge=1, le=500)] = 50,
                         before_id: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
    """SANDBOX: the exact requests the providers would have received for channels with no account
    (credentials redacted). Nothing here was sent."""
    rows, total = sandbox_messages(engine=engine, program=program, channel=channel, limit=limit,
                                   before_id=before_id)
    return {"sandbox": True, "note": "recorded instead of sent: these channels have no provider account",
            "total": total, "messages": [
                {"id": r.id, "channel": r.channel, "provider": r.provider, "delivery_id": r.delivery_id,
                 "method": r.method, "url": r.url, "headers": r.headers, "body": r.body,
                 "recorded_at": r.created_at.isoformat()} for r in rows]}
