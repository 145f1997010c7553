"""Agency import over HTTP (a zip becomes the next version of a template, or a 422 report of everything wrong
with it) and the images of imported versions, served to email clients without authentication."""

from __future__ import annotations

import hashlib
import re
from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Path, Request, UploadFile
from fastapi.responses import Response

from app.api.deps import RendererDep, SettingsDep, require
from app.errors import Conflict, Invalid, NotFound
from storage.tables import Role
from templates.importer import (
    MAX_ZIP_BYTES,
    MEDIA_TYPES,
    ImportProblem,
    ImportRaced,
    ImportRefused,
    import_zip,
)
from templates.store import NAME

router = APIRouter(tags=["templates"])
# ``{name:path}`` in the route: a name with slashes (``../x``) is refused naming ``name`` instead of missing the route
Name = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$",
                           description="a template's name: a-z, 0-9, _ and - (never a path)")]
ASSET_PATH = re.compile(r"images(?:/[A-Za-z0-9_\-][A-Za-z0-9._\-]*)+")
CACHE_FOREVER = "public, max-age=31536000, immutable"      # a version never changes


def _problem(p: ImportProblem) -> tuple[str, str]:
    return p.file, ("warning: " if p.severity == "warning" else "") + p.message


@router.post("/api/v1/templates/{name:path}/versions", status_code=201,
             dependencies=[Depends(require(Role.marketer))])
def import_version(name: Name, renderer: RendererDep, settings: SettingsDep, response: Response,
                   file: Annotated[UploadFile, File(description="the agency's zip")],
                   note: Annotated[str | None, Form(max_length=500)] = None,
                   dry_run: Annotated[bool, Form(description="check and report, store nothing")] = False,
                   ) -> dict[str, Any]:
    """Import an agency's zip (template.yaml, email.<locale>.mjml + .txt, channel bodies, _shared/, images/)
    as the next version of the template (marketer, admin). The whole version is checked first: any error
    refuses the zip whole with a 422 listing every problem by file; warnings come back with the version.
    Images are served at ``/assets/<name>/<version>/images/...`` and the MJML refers to them there."""
    data = file.file.read(MAX_ZIP_BYTES + 1)
    try:
        imported = import_zip(store=renderer.store, name=name, data=data, base_url=settings.base_url,
                              note=note, dry_run=dry_run)
    except ImportRefused as exc:
        raise Invalid([_problem(p) for p in exc.problems]) from None
    except ImportRaced as exc:
        raise Conflict(str(exc), field="name") from None
    if dry_run:
        response.status_code = 200
    return {"name": imported.name, "version": imported.version, "stored": imported.stored,
            "files": list(imported.files),
            "images": [{"path": i.path, "url": i.url, "media_type": i.media_type, "bytes": i.size}
                       for i in imported.images],
            "warnings": [{"field": p.file, "message": p.message} for p in imported.warnings]}


@router.get("/assets/{name}/{version}/{path:path}")
@router.head("/assets/{name}/{version}/{path:path}", include_in_schema=False)
def get_asset(name: str, version: str, path: str, request: Request, renderer: RendererDep) -> Response:
    """An image of an imported template version, for email clients (no key). Versions never change, so it
    may be cached for a year."""
    unknown = NotFound("no such image", field="path")
    if not NAME.fullmatch(name) or not version.isdigit() or len(version) > 9 or not ASSET_PATH.fullmatch(path):
        raise unknown
    found = renderer.store.asset(name, int(version), path)
    if found is None or found[0] not in MEDIA_TYPES:
        raise unknown
    media_type, content = found
    etag = '"' + hashlib.sha256(content).hexdigest()[:32] + '"'
    headers = {"Cache-Control": CACHE_FOREVER, "ETag": etag, "X-Content-Type-Options": "nosniff",
               "Content-Security-Policy": "default-src 'none'", "Access-Control-Allow-Origin": "*"}
    if etag in request.headers.get("if-none-match", ""):
        return Response(status_code=304, headers=headers)
    return Response(content, media_type=media_type, headers=headers)
