"""``clarion direct-mail``: the print batches of a campaign, and the hand-over run by hand.

A broadcast hands its letters over by itself at the end of each step (``BroadcastInput.hand_over``). The
letters of a triggered campaign (and of a broadcast launched before the hand-over existed) stay ``queued``
until ``clarion direct-mail hand-over`` runs; it runs the activity's code right here, without Temporal, and
is safe to repeat or to run while a worker hands over the same campaign (hand-overs of a campaign take turns).

Exit codes: 0 done (also when nothing was queued), 1 unknown program or campaign, or a batch that cannot be
printed as configured (the letters stay queued; fix it and run again).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from app.settings import Settings
from members.service import ProgramNotFound, get_program
from storage.db import make_engine
from storage.tables import Campaign, CampaignKind, ChannelName, Delivery, DeliveryStatus
from workflows.contracts import HandOver, HandOverResult

if TYPE_CHECKING:  # WeasyPrint loads in ~1 s: only the direct-mail commands pay for it
    from activities.direct_mail import DirectMailActivities

direct_mail_app = typer.Typer(no_args_is_help=True, add_completion=False,
                              help="Direct mail: print batches and their hand-over.")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add the ``direct-mail`` command group to the ``clarion`` command line."""
    app.add_typer(direct_mail_app, name="direct-mail")


def _fail(message: str) -> NoReturn:
    err.print(f"[red]error:[/] {escape(message)}")
    raise typer.Exit(1)


def _open(program: str, campaign: str) -> tuple[DirectMailActivities, Engine, Campaign]:
    from activities.direct_mail import DirectMailActivities

    settings = Settings()
    engine = make_engine(settings.db_url)
    with Session(engine) as s:
        try:
            prog = get_program(s, program)
        except ProgramNotFound as exc:
            _fail(str(exc))
        row = s.scalar(select(Campaign).where(Campaign.program_id == prog.id, Campaign.key == campaign))
    if row is None:
        _fail(f"campaign {campaign!r} not found in program {program!r}")
    return DirectMailActivities(engine=engine, out_dir=settings.var_dir / "direct_mail"), engine, row


@direct_mail_app.command("batches")
def batches(program: Annotated[str, typer.Argument(help="the program's key")],
            campaign: Annotated[str, typer.Argument(help="the campaign's key")]) -> None:
    """List a campaign's print batches: file, letters, pages, when it was made."""
    acts, engine, row = _open(program, campaign)
    try:
        found = acts.batches(row.id or 0)
    finally:
        engine.dispose()
    t = Table(title=f"{program}/{campaign}: {len(found)} batch(es)")
    for col, justify in (("batch", "left"), ("state", "left"), ("letters", "right"), ("pages", "right"),
                         ("created", "left"), ("file", "left")):
        t.add_column(col, justify=justify)  # type: ignore[arg-type]
    for b in found:
        t.add_row(b["batch"], b["state"].replace("_", " "), str(b["letters"]),
                  "" if b["pages"] is None else str(b["pages"]), b["created_at"] or "", b["path"] or "(missing)")
    out.print(t)


@direct_mail_app.command("hand-over")
def hand_over(program: Annotated[str, typer.Argument(help="the program's key")],
              campaign: Annotated[str, typer.Argument(help="the campaign's key")],
              step: Annotated[str, typer.Option(help="the campaign's step")] = "main",
              occurrence: Annotated[str | None, typer.Option(
                  help="the wave (e.g. wave-1); default: every wave with queued letters, a batch each "
                       "(a triggered campaign: all its queued letters in one batch)")] = None) -> None:
    """Hand over the queued letters of a campaign as print-ready PDF batches; they count as sent."""
    acts, engine, row = _open(program, campaign)
    cid = row.id or 0
    try:
        if occurrence is not None:
            scopes: list[str | None] = [occurrence]
        elif row.kind == CampaignKind.triggered:
            scopes = [None]
        else:
            with Session(engine) as s:
                scopes = list(s.scalars(select(Delivery.occurrence).distinct().where(
                    Delivery.campaign_id == cid, Delivery.step == step, Delivery.channel == ChannelName.direct_mail,
                    Delivery.status == DeliveryStatus.queued).order_by(Delivery.occurrence)))
        results = _run(acts, [HandOver(campaign_id=cid, step=step, occurrence=o) for o in scopes],
                       lambda r: out.print(f"{escape(r.batch or '')}: {r.letters} letter(s), {r.pages} page(s) "
                                           f"→ {escape(r.path or '')}"))
    finally:
        engine.dispose()
    if not results:
        out.print(f"{program}/{campaign}: no queued letters in step {step!r}: nothing written")
        return
    out.print(f"{program}/{campaign}: {sum(r.letters for r in results)} letter(s) handed over in "
              f"{len(results)} batch(es)")


def _run(acts: DirectMailActivities, inputs: list[HandOver],
         show: Callable[[HandOverResult], Any]) -> list[HandOverResult]:
    from activities.direct_mail import UnprintableBatch, hand_over_all

    results: list[HandOverResult] = []
    try:
        for inp in inputs:
            results += hand_over_all(acts, inp, progress=show)
    except UnprintableBatch as exc:
        _fail(f"{exc} (the letters stay queued)")
    return results
