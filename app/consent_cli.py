"""``clarion consent``: bring in the consents a program gathered before Clarion, and show a member's ledger.

    clarion consent import FILE --program KEY [--dry-run]     a CSV (format: consent.importer), - for stdin
    clarion consent history EXTERNAL_ID --program KEY         every act with its proof, and the current state

Calls the services directly (like ``clarion members import``). Exit codes of ``import``, like ``clarion
events send``: 0 every row imported or already in the ledger, 2 some rows were refused (each is named by
line and field on stderr; the other rows are imported), 1 the program is unknown or the file cannot be read
(no such file, not UTF-8, a bad header). ``history``: 0, or 1 when the program or the member is unknown.
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, BinaryIO, NoReturn

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from sqlalchemy import select
from sqlmodel import Session

from app.settings import Settings
from consent import ledger
from consent.importer import ImportResult, RowError, UnreadableFile, import_consents
from members.service import ProgramNotFound, get_program
from storage.db import make_engine
from storage.tables import ConsentState, Member

consent_app = typer.Typer(no_args_is_help=True, add_completion=False,
                          help="Consent: import a program's existing consents, show a member's ledger.")

out = Console(soft_wrap=True, highlight=False)
err = Console(stderr=True, soft_wrap=True, highlight=False)

ProgramOpt = Annotated[str, typer.Option("--program", "-p", help="the program's key")]


def register(app: typer.Typer) -> None:
    """Add ``clarion consent`` to the CLI."""
    app.add_typer(consent_app, name="consent")


def _fail(message: str) -> NoReturn:
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(1)


def _utc(at: datetime) -> str:
    return (at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)).isoformat()


IMPORT_HELP = (
    "Import consents given before Clarion, each with its original source, date and proof.\n\n"
    "Header: external_id, channel, topic, action, source, at (ISO 8601 with an offset; a date alone is the start "
    "of that day in the program's time zone), and optionally wording_version, text (stored as its SHA-256), "
    "text_hash, ip, user_agent.\n\n"
    "The current state follows the latest act by time. A row already in the ledger (same member, channel, topic, "
    "action, source and time) is not written again: a file can be imported twice.\n\n"
    "Exit code: 0 all rows imported or already there, 2 some rows refused (the others are imported), "
    "1 unknown program, or a file that cannot be read (missing, a bad header, not UTF-8: a file is checked before "
    "anything is written).")
HISTORY_HELP = (
    "A member's consent ledger, oldest act first, with each act's proof (source, wording version, SHA-256 of "
    "the text shown, ip, user agent), and the current state per channel and topic.")


@consent_app.command("import", help=IMPORT_HELP)
def import_(file: Annotated[str, typer.Argument(help="a CSV file (UTF-8), or - for stdin")],
            program: ProgramOpt,
            dry_run: Annotated[bool, typer.Option("--dry-run", help="check every row (and the members), write nothing")]
            = False) -> None:
    path = Path(file)
    if file != "-" and not path.is_file():
        _fail(f"{file}: no such file")
    name = "stdin" if file == "-" else path.name
    engine = make_engine(Settings().db_url)

    def report(e: RowError) -> None:
        err.print(f"  {e}" + (f" (member {e.external_id})" if e.external_id else ""), markup=False)

    try:
        with Progress(TextColumn("checking" if dry_run else "importing"), BarColumn(), MofNCompleteColumn(),
                      TextColumn("rows"), console=err, transient=True, disable=not err.is_terminal) as bar:
            task = bar.add_task("rows", total=None)

            def run(stream: BinaryIO) -> ImportResult:
                return import_consents(engine=engine, program=program, stream=stream, dry_run=dry_run,
                                       progress=lambda n: bar.advance(task, n), on_error=report)
            if file == "-":
                result = run(sys.stdin.buffer)
            else:
                with path.open("rb") as fh:
                    result = run(fh)
    except ProgramNotFound as exc:
        _fail(str(exc))
    except UnreadableFile as exc:
        _fail(f"{name}: {exc}")
    finally:
        engine.dispose()
    r = result
    verb = "would be imported (dry run: nothing written)" if dry_run else "imported"
    out.print(f"{name}: {r.rows} rows: {r.imported} {verb}, {r.duplicates} duplicates, {r.refused} refused",
              markup=False)
    if r.refused:
        raise typer.Exit(2)


@consent_app.command("history", help=HISTORY_HELP)
def history(external_id: Annotated[str, typer.Argument(help="the member's id in the loyalty core")],
            program: ProgramOpt) -> None:
    engine = make_engine(Settings().db_url)
    try:
        with Session(engine) as s:
            try:
                prog = get_program(s, program)
            except ProgramNotFound as exc:
                _fail(str(exc))
            member = s.scalar(select(Member).where(Member.program_id == prog.id, Member.external_id == external_id))
            if member is None:
                _fail(f"no member {external_id!r} in program {program}")
            records = ledger.history(session=s, member_id=member.id or 0)
            states = list(s.scalars(select(ConsentState).where(ConsentState.member_id == member.id)
                                    .order_by(ConsentState.channel, ConsentState.topic)))  # type: ignore[arg-type]
    finally:
        engine.dispose()
    current = {st.record_id for st in states}
    out.print(f"member {external_id} in program {program}: {len(records)} consent acts, oldest first "
              "(* = the act the current state follows)", markup=False)
    for r in records:
        proof = [f"source {r.source}"]
        if r.wording_version:
            proof.append(f"wording {r.wording_version}")
        if r.text_hash:
            proof.append(f"text sha256 {r.text_hash}")
        if r.ip:
            proof.append(f"ip {r.ip}")
        if r.user_agent:
            proof.append(f"user agent {r.user_agent!r}")
        if r.campaign_id:
            proof.append(f"campaign {r.campaign_id}")
        mark = "*" if r.id in current else " "
        out.print(f"{mark} {_utc(r.at)}  {r.channel}/{r.topic}  {r.action}  " + ", ".join(proof), markup=False)
    out.print("current state:" if states else "current state: none", markup=False)
    for st in states:
        out.print(f"  {st.channel}/{st.topic}  {st.status}  since {_utc(st.updated_at)}", markup=False)
