"""`clarion members export|erase`: member rights from the command line (the service is ``members.rights``).

    clarion members export EXTERNAL_ID --program KEY [--output FILE]   JSON to stdout, or a file only its owner reads
    clarion members erase EXTERNAL_ID --program KEY [--yes]            asks first unless --yes
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlmodel import Session

from app.settings import Settings
from members.rights import (
    MemberNotFound,
    erase_member,
    export_json,
    export_member,
    find_member,
)
from members.service import ProgramNotFound
from storage.db import make_engine

out = Console()
err = Console(stderr=True)

ProgramOpt = Annotated[str, typer.Option("--program", "-p", help="the program's key")]
ExternalIdArg = Annotated[str, typer.Argument(help="the member's external id (an erased member: its pseudonym)")]


def _fail(message: str) -> typer.Exit:
    err.print(f"[red]error:[/] {message}", highlight=False)
    return typer.Exit(1)


def _write_private(path: Path, text: str) -> None:
    """Personal data: the file is readable by its owner only (0600), created or replaced."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.chmod(path, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)


def export(external_id: ExternalIdArg, program: ProgramOpt,
           output: Annotated[Path | None, typer.Option("--output", "-o", dir_okay=False,
                                                       help="write the JSON here (mode 0600), not to stdout")] = None,
           ) -> None:
    """Everything Clarion holds about a member, as JSON (GDPR art. 15, 152-FZ art. 14)."""
    engine = make_engine(Settings().db_url)
    try:
        text = export_json(export_member(engine=engine, program=program, external_id=external_id))
    except (ProgramNotFound, MemberNotFound) as exc:
        raise _fail(str(exc)) from None
    if output is None:
        sys.stdout.write(text)
        return
    _write_private(output, text)
    err.print(f"{output}: {len(text.encode())} bytes", highlight=False)


def erase(external_id: ExternalIdArg, program: ProgramOpt,
          yes: Annotated[bool, typer.Option("--yes", "-y", help="do not ask")] = False) -> None:
    """Erase a member's personal data for good (GDPR art. 17, 152-FZ art. 21); campaign figures stay."""
    engine = make_engine(Settings().db_url)
    try:
        with Session(engine) as s:
            find_member(s, program=program, external_id=external_id)
    except (ProgramNotFound, MemberNotFound) as exc:
        raise _fail(str(exc)) from None
    if not yes and not typer.confirm(
            f"Erase the personal data of member {external_id!r} of program {program!r}? This cannot be undone"):
        err.print("nothing erased")
        raise typer.Exit(1)
    try:
        done = erase_member(engine=engine, program=program, external_id=external_id)
    except (ProgramNotFound, MemberNotFound) as exc:
        raise _fail(str(exc)) from None
    out.print(f"member {external_id!r} erased; known as {done.external_id} from now on "
              f"(erased at {done.erased_at.isoformat()}); every channel revoked; campaign figures kept",
              highlight=False)


def register(members_app: typer.Typer) -> None:
    """Add the member-rights commands to `clarion members`."""
    members_app.command("export")(export)
    members_app.command("erase")(erase)
