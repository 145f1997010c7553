"""Templates over HTTP: the list with versions, and the exact message a member would get (preview)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response

from activities.messages import MessageBuilder
from app.api.deps import EngineDep, RendererDep, SettingsDep, require
from app.errors import Invalid, NotFound
from app.previews import PreviewError, PreviewSigner, preview
from storage.tables import Role
from templates.check import check
from templates.render import normalize_locale

router = APIRouter(prefix="/api/v1/templates", tags=["templates"],
                   dependencies=[Depends(require(Role.marketer, Role.analyst))])
# the routes take ``{name:path}`` so that a name with slashes (``../../etc/passwd``, ``/etc/passwd``, also sent
# as %2F) reaches this pattern and is refused naming ``name``, instead of missing every route
Name = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$",
                           description="a template's name: a-z, 0-9, _ and - (never a path)")]
Key = Annotated[str, Query(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
# an email's HTML as the member sees it, opened in the marketer's browser on the API's own origin: the images
# it shows, its inline styles and nothing else (no script, no form, no frame, no base), sandboxed to a unique
# origin so it can never act with the marketer's session
PREVIEW_HTML_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src https: data:; style-src 'unsafe-inline'; sandbox; "
                               "form-action 'none'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff", "Referrer-Policy": "no-referrer", "Cache-Control": "no-store",
}


@router.get("")
def list_templates(renderer: RendererDep) -> dict[str, Any]:
    """Every template with its versions and the channels and locales of its newest."""
    out = []
    for name in renderer.store.names():
        meta = renderer.meta(name)
        out.append({"name": name, "versions": [{"version": v, "source": src} for v, src in renderer.store.versions(name)],
                    "newest": meta["version"],
                    "channels": {c: ls for c, ls in meta["channel_locales"].items() if ls}})
    return {"templates": out}


@router.get("/{name:path}/check")
def check_template(name: Name, renderer: RendererDep, version: Annotated[int | None, Query(ge=1)] = None) -> dict[str, Any]:
    """Every channel in every locale rendered with a sample member: problems by file (errors and warnings)."""
    problems = check(renderer, name, version)
    return {"template": name, "ok": not any(p.severity == "error" for p in problems),
            "problems": [{"file": p.where, "message": p.message, "severity": p.severity} for p in problems]}


@router.get("/{name:path}/preview")
def preview_template(name: Name, request: Request, engine: EngineDep, renderer: RendererDep,
                     settings: SettingsDep, program: Key, member: Annotated[str, Query(min_length=1, max_length=128)],
                     channel: Annotated[str, Query(pattern=r"^[a-z_]{3,16}$")] = "email",
                     locale: Annotated[str | None, Query(max_length=35)] = None,
                     version: Annotated[int | None, Query(ge=1)] = None,
                     width: Annotated[int, Query()] = 42,
                     format: Annotated[str, Query(pattern=r"^(json|html)$")] = "json") -> Response:  # noqa: A002
    """The exact message ``member`` would get; ``format=html`` gives an email's HTML as the member sees it."""
    if width not in (32, 42, 48):
        raise Invalid([("width", "use 32, 42 or 48")])
    if locale is not None:
        try:  # a locale CLDR does not know is a mistake, not a member to fall back for
            locale = normalize_locale(locale)
        except ValueError as exc:
            raise Invalid([("locale", f"{exc}: give one such as en, ru or de-AT")]) from None
    builder = MessageBuilder(renderer=renderer, signer=PreviewSigner(),  # type: ignore[arg-type]
                             base_url=settings.base_url, unsubscribe_mailto=settings.unsubscribe_mailto)
    try:
        p = preview(engine=engine, renderer=renderer, builder=builder, program=program, template=name,
                    channel=channel, member=member, locale=locale, version=version, width=width)
    except PreviewError as exc:
        if exc.field in ("member",):
            raise NotFound(str(exc), field=exc.field) from None
        raise Invalid([(exc.field, str(exc))]) from None
    if format == "html":
        if p.html is None:
            raise Invalid([("format", f"a {channel} message has no HTML")])
        return HTMLResponse(p.html, headers=PREVIEW_HTML_HEADERS)
    return JSONResponse(dataclasses.asdict(p), headers={"Cache-Control": "no-store"})
