"""FastAPI dependencies: settings, engine, Temporal client, and role checks for API keys."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.engine import Engine
from temporalio.client import Client

from app.keys import role_for
from app.settings import Settings
from consent.tokens import Signer
from storage.tables import Role
from templates.render import Renderer


def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(request: Request) -> Engine:
    return request.app.state.engine


def get_renderer(request: Request) -> Renderer:
    return request.app.state.renderer


def get_signer(request: Request) -> Signer:
    return request.app.state.signer


async def get_temporal(request: Request) -> Client:
    return await request.app.state.temporal()


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_engine)]
TemporalDep = Annotated[Client, Depends(get_temporal)]
RendererDep = Annotated[Renderer, Depends(get_renderer)]
SignerDep = Annotated[Signer, Depends(get_signer)]


def _presented_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return request.headers.get("x-api-key")


def require(*roles: Role) -> Callable[..., Role]:
    allowed = {Role.admin, *roles}

    def check(request: Request, engine: EngineDep) -> Role:
        key = _presented_key(request)
        if not key:
            raise HTTPException(401, "an API key is required: send 'Authorization: Bearer <key>'",
                                headers={"WWW-Authenticate": "Bearer"})
        role = role_for(engine=engine, key=key)
        if role is None:
            raise HTTPException(401, "the API key is not valid", headers={"WWW-Authenticate": "Bearer"})
        if role not in allowed:
            raise HTTPException(403, f"role {role.value!r} may not do this; needs one of: "
                                     f"{', '.join(sorted(r.value for r in allowed))}")
        return role

    return check
