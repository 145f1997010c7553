"""Member rights over HTTP: export everything Clarion holds about a member (roles core, admin) and erase their
personal data (admin only: it cannot be undone). The service is ``members.rights``."""

from __future__ import annotations

from fastapi import APIRouter, Depends
from fastapi import Response as HttpResponse

from app.api.deps import EngineDep, require
from app.api.members import ExternalId, ProgramQ
from app.errors import NotFound
from members.rights import (
    Erasure,
    MemberExport,
    MemberNotFound,
    erase_member,
    export_member,
)
from storage.tables import Role

router = APIRouter(prefix="/api/v1/members", tags=["member rights"])


def _not_found(exc: MemberNotFound) -> NotFound:
    return NotFound(str(exc), field="external_id")


@router.get("/{external_id}/export", response_model=MemberExport, response_model_by_alias=True,
            dependencies=[Depends(require(Role.core))])
def export(external_id: ExternalId, program: ProgramQ, engine: EngineDep, response: HttpResponse) -> MemberExport:
    """Everything Clarion holds about the member (GDPR art. 15, 152-FZ art. 14): profile, cards, devices,
    the consent ledger with its proofs and the current state, confirmation requests, events, deliveries with
    their responses, stored messages and the sandbox's recorded requests. An erased member (asked for by
    its pseudonym) exports what is left."""
    try:
        found = export_member(engine=engine, program=program, external_id=external_id)
    except MemberNotFound as exc:
        raise _not_found(exc) from None
    response.headers["Cache-Control"] = "no-store"
    return found


@router.post("/{external_id}/erase", response_model=Erasure, dependencies=[Depends(require())])
def erase(external_id: ExternalId, program: ProgramQ, engine: EngineDep) -> Erasure:
    """Erase the member's personal data (GDPR art. 17, 152-FZ art. 21) in one transaction; campaign figures
    stay as they were and every channel is revoked for good. The member is known by the pseudonym in the
    answer from then on; erasing again (by it) changes nothing and answers the same."""
    try:
        return erase_member(engine=engine, program=program, external_id=external_id)
    except MemberNotFound as exc:
        raise _not_found(exc) from None
