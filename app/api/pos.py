"""The till (role ``pos``): what to print at the end of a member's receipt, and that it was printed.

    GET  /api/v1/pos/receipt-messages?program&card&store&checkout&width=32|42|48[&format=json|escpos]
    POST /api/v1/pos/receipt-messages/{id}/printed   {"receipt_number", "store", "checkout"}

The rules (at most N per checkout, reservations, expiry) are in ``channels.pickup``; these routes translate.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field

from app.api.deps import EngineDep, require
from app.errors import Conflict, NotFound
from channels import pickup
from channels.receipt import WIDTHS, escpos_bytes
from storage.tables import Role, utcnow

router = APIRouter(prefix="/api/v1/pos", tags=["pos"])

ESCPOS_MEDIA_TYPE = "application/vnd.escpos"
#: a store or checkout id: no spaces and no "/" (it joins the two in ``stored_message.reserved_by``)
TILL_ID = r"^[^\s/]{1,60}$"

Width = IntEnum("Width", {f"w{w}": w for w in WIDTHS})  # type: ignore[misc]


class Format(StrEnum):
    json = "json"
    escpos = "escpos"


ProgramQ = Annotated[str, Query(description="the program's key", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
CardQ = Annotated[str, Query(min_length=1, max_length=64, description="the loyalty card number presented")]
StoreQ = Annotated[str, Query(pattern=TILL_ID, description="the store's id")]
CheckoutQ = Annotated[str, Query(pattern=TILL_ID, description="the checkout (till) id within the store")]
WidthQ = Annotated[Width, Query(description="characters per line at font A: 32 (58 mm), 42 or 48 (80 mm)")]


@contextmanager
def pickup_errors() -> Iterator[None]:
    """``channels.pickup`` refusals as the API's errors (404 / 409 naming the field)."""
    try:
        yield
    except pickup.MessageNotFound as exc:
        raise NotFound(exc.message, field=exc.field) from None
    except pickup.MessageConflict as exc:
        raise Conflict(exc.message, field=exc.field) from None


class ReceiptBlockOut(BaseModel):
    kind: str
    lines: list[str]


class ReceiptMessageOut(BaseModel):
    id: int
    campaign: str
    lines: list[str] = Field(description="ready to print as they are, each at most `width` columns")
    blocks: list[ReceiptBlockOut] = Field(description="the same lines by kind (rule, title, text, coupon, footer)")
    coupon: dict[str, Any] | None = Field(description="code, barcode and QR data for the POS to draw natively")
    expires_at: datetime | None


class ReceiptMessagesOut(BaseModel):
    width: int
    reserved_until: datetime | None = Field(description="the messages are held for this checkout until then")
    messages: list[ReceiptMessageOut]


class PrintedIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    receipt_number: str = Field(min_length=1, max_length=64)
    store: str = Field(pattern=TILL_ID)
    checkout: str = Field(pattern=TILL_ID)


class PrintedOut(BaseModel):
    id: int
    state: str = "done"
    receipt_number: str
    delivery_status: str
    printed_at: datetime


@router.get("/receipt-messages", response_model=ReceiptMessagesOut,
            responses={200: {"content": {"application/octet-stream": {}},
                             "description": "JSON; or with format=escpos (or Accept: application/vnd.escpos) "
                                            "the ESC/POS bytes of every message, ids in X-Message-Ids"}},
            dependencies=[Depends(require(Role.pos))])
def receipt_messages(request: Request, engine: EngineDep, program: ProgramQ, card: CardQ, store: StoreQ,
                     checkout: CheckoutQ, width: WidthQ,
                     format: Annotated[Format, Query()] = Format.json) -> Any:  # noqa: A002 - the query name
    """The member's receipt messages to print now (at most the program's max per checkout, oldest first),
    reserved to this store + checkout. An unknown or inactive card gets an empty list."""
    held = pickup.reserve_receipt_messages(engine=engine, program=program, card=card, store=store,
                                           checkout=checkout, now=utcnow())
    layouts = [(m, pickup.receipt_layout(m, width=int(width))) for m in held.messages]
    if format == Format.escpos or ESCPOS_MEDIA_TYPE in request.headers.get("accept", ""):
        return Response(b"".join(escpos_bytes(layout) for _, layout in layouts),
                        media_type="application/octet-stream",
                        headers={"X-Message-Ids": ",".join(str(m.id) for m, _ in layouts)})
    return ReceiptMessagesOut(width=int(width), reserved_until=held.reserved_until, messages=[
        ReceiptMessageOut(id=m.id, campaign=m.campaign, lines=layout.lines, coupon=layout.coupon,
                          blocks=[ReceiptBlockOut(kind=b.kind, lines=list(b.lines)) for b in layout.blocks],
                          expires_at=m.expires_at)
        for m, layout in layouts])


@router.post("/receipt-messages/{id}/printed", response_model=PrintedOut,
             dependencies=[Depends(require(Role.pos))])
def receipt_message_printed(id: Annotated[int, Path(ge=1)], body: PrintedIn,  # noqa: A002 - the path name
                            engine: EngineDep) -> PrintedOut:
    """The till printed the message on this receipt: delivered. Posting again answers the same."""
    with pickup_errors():
        done = pickup.mark_printed(engine=engine, message_id=id, store=body.store, checkout=body.checkout,
                                   receipt_number=body.receipt_number, now=utcnow())
    return PrintedOut(id=done.id, receipt_number=done.receipt_number, delivery_status=done.delivery_status,
                      printed_at=done.printed_at)
