"""`clarion coupons load|status`: a program's pools of unique coupon codes (``coupon_pool`` in a template)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from sqlmodel import Session

from app.settings import Settings
from members.coupons import load_codes, pool_status
from members.service import ProgramNotFound, get_program
from storage.db import make_engine

out = Console()
err = Console(stderr=True)
POOL = r"^[a-z0-9][a-z0-9_\-]{0,63}$"


def register(app: typer.Typer) -> None:
    coupons = typer.Typer(no_args_is_help=True, help="Pools of unique coupon codes ({{ coupon }} in a template).")
    app.add_typer(coupons, name="coupons")

    @coupons.command("load")
    def load(program: str, pool: Annotated[str, typer.Argument(help="the pool's name (template.yaml coupon_pool)")],
             file: Annotated[Path, typer.Argument(help="one code per line ('-': stdin)")]) -> None:
        """Add codes to a pool (duplicates are ignored)."""
        import re

        if not re.fullmatch(POOL, pool):
            err.print("[red]error:[/] pool: use a-z, 0-9, _ and -")
            raise typer.Exit(2)
        engine = make_engine(Settings().db_url)
        try:
            with Session(engine) as s:
                program_id = get_program(s, program).id or 0
            stream = sys.stdin if str(file) == "-" else file.open(encoding="utf-8")
            with stream:
                added, already = load_codes(engine=engine, program_id=program_id, pool=pool, codes=stream)
        except ProgramNotFound as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None
        except (OSError, UnicodeError, ValueError) as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(2) from None
        out.print(f"{program}/{pool}: {added} codes added, {already} already there")

    @coupons.command("status")
    def status(program: str, pool: str) -> None:
        """How many codes a pool holds and how many are given."""
        engine = make_engine(Settings().db_url)
        try:
            with Session(engine) as s:
                total, given = pool_status(session=s, program_id=get_program(s, program).id or 0, pool=pool)
        except ProgramNotFound as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None
        out.print(f"{program}/{pool}: {total} codes, {given} given, {total - given} left")
