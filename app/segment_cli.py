"""``clarion segment``: audience segments in YAML, counted in the database.

FILE is a campaign spec (its ``audience`` and ``program``), a segment file (``program`` +
``audience``, or the audience's keys ``rules`` / ``filter`` / ``all`` / ``include`` / ``exclude`` at the
top), or bare rules (``all`` / ``any`` / ``not`` / ``field`` at the top) with ``--program``.
Exit codes: 0 counted, 1 unknown program or database problem, 2 bad file or option.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy import func, select
from sqlalchemy.exc import SQLAlchemyError

from app.settings import Settings
from campaigns.audience import audience_clause
from campaigns.segments import FIELDS, KIND_OPS, Audience, problems
from campaigns.spec import SpecError, read_yaml
from storage.db import make_engine
from storage.tables import Member, Program

segment_app = typer.Typer(no_args_is_help=True, add_completion=False, help="Audience segments.")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

AUDIENCE_KEYS = {"filter", "rules", "include", "exclude"}
RULE_KEYS = {"any", "not", "field"}


class BadInput(Exception):
    """The file or an option is not usable: (path, message) problems."""

    def __init__(self, found: list[tuple[str, str]]) -> None:
        super().__init__("; ".join(f"{p}: {m}" if p else m for p, m in found))
        self.problems = found


@segment_app.callback()
def _segments() -> None:
    """Audience segments: count who matches rules, before launching a campaign."""


@segment_app.command("count")
def count(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                         help="campaign spec, segment file or rules (YAML)")],
    program: Annotated[str | None, typer.Option("--program", "-p", help="the program's key "
                                                "(default: the file's program)")] = None,
    now: Annotated[str | None, typer.Option(help="evaluate relative dates at this time "
                                            "(ISO 8601 with offset; default: now)")] = None,
) -> None:
    """Count the members of the program that the audience in FILE selects."""
    try:
        key, audience = load_segment(file.read_text(encoding="utf-8"), program=program)
        at = _when(now)
    except UnicodeDecodeError:
        _bad(file, [("", "not UTF-8 text")])
    except BadInput as exc:
        _bad(file, exc.problems)
    started = time.perf_counter()
    try:
        n = count_members(key, audience, now=at)
    except LookupError as exc:
        err.print(f"[red]error:[/] {escape(str(exc))}")
        raise typer.Exit(1) from None
    except SQLAlchemyError as exc:  # the database said no: one line, not a traceback
        first = str(exc.orig if getattr(exc, "orig", None) else exc).splitlines()[0]
        err.print(f"[red]error:[/] database: {escape(first)} (is it migrated? clarion db upgrade)")
        raise typer.Exit(1) from None
    elapsed = time.perf_counter() - started
    out.print(f"{n} member{'' if n == 1 else 's'} in program {escape(repr(key))} ({elapsed:.3f} s)",
              highlight=False)


@segment_app.command("fields")
def fields() -> None:
    """The fields rules can test, with their types and operators."""
    t = Table(title="segment rule fields")
    for col in ("field", "type", "operators", "what"):
        t.add_column(col)
    for f in FIELDS.values():
        extra = []
        if f.window:
            extra.append("optional days: N = in the last N days")
        if f.name == "consent":
            extra.append("channel, topic; value true/false")
        what = f.doc + (f" ({', '.join(extra)})" if extra else "")
        if f.choices:
            what += f": {' | '.join(f.choices)}"
        t.add_row(f.name, str(f.type), ", ".join(o.value for o in f.allowed), escape(what))
    kinds = "; ".join(f"{k}: {', '.join(o.value for o in ops)}" for k, ops in KIND_OPS.items())
    t.add_row("attributes.<name>", "by value", escape(kinds), "any custom attribute")
    out.print(t)


def load_segment(text: str, *, program: str | None = None) -> tuple[str, Audience]:
    """(program key, audience) from the YAML text of a spec, a segment file or bare rules."""
    try:
        data = read_yaml(text)
    except SpecError as exc:
        raise BadInput(exc.problems) from None
    if not isinstance(data, dict):
        raise BadInput([("", "the file must be a mapping: a campaign spec, program + audience, or rules")])
    raw, prefix, strip = _audience_part(data)
    key = program or data.get("program")
    if not isinstance(key, str) or not key:
        raise BadInput([("program", "the file names no program: add program: KEY or pass --program KEY")])
    try:
        audience = Audience.model_validate(raw)
    except ValidationError as exc:
        found = [(path.removeprefix(strip), msg) for path, msg in problems(exc, prefix)]
        raise BadInput(found) from None
    return key, audience


def _audience_part(data: dict[Any, Any]) -> tuple[Any, tuple[str, ...], str]:
    """(raw audience, loc prefix, path prefix to drop) by the shape of the file."""
    if "audience" in data:
        return data["audience"], ("audience",), ""
    rest = {k: v for k, v in data.items() if k != "program"}
    if AUDIENCE_KEYS & set(rest) or isinstance(rest.get("all"), bool):
        return rest, (), ""
    if RULE_KEYS & set(rest) or isinstance(rest.get("all"), list):
        return {"rules": rest}, ("rules",), "rules."
    raise BadInput([("", "found no audience: give audience: {...}, rules: {...}, or rules "
                         "(all / any / not / field) at the top")])


def _when(now: str | None) -> datetime:
    if now is None:
        return datetime.now(UTC)
    try:
        at = datetime.fromisoformat(now)
    except ValueError:
        raise BadInput([("--now", f"{now!r} is not an ISO 8601 date-time")]) from None
    if at.tzinfo is None:
        raise BadInput([("--now", "give a time zone offset, e.g. 2026-12-01T10:00:00+03:00")])
    return at


def count_members(program: str, audience: Audience, *, now: datetime, db_url: str | None = None) -> int:
    """How many members of the program the audience selects (LookupError: no such program)."""
    engine = make_engine(db_url or Settings().db_url)
    try:
        with engine.connect() as conn:
            program_id = conn.scalar(select(Program.id).where(Program.key == program))
            if program_id is None:
                raise LookupError(f"program {program!r} not found")
            return conn.scalar(select(func.count()).select_from(Member).where(
                audience_clause(program_id, audience, now=now))) or 0
    finally:
        engine.dispose()


def _bad(file: Path, found: list[tuple[str, str]]) -> NoReturn:
    if len(found) == 1:
        path, message = found[0]
        err.print(f"[red]error:[/] {escape(str(file))}: {escape(path + ': ' if path else '')}{escape(message)}")
    else:
        err.print(f"[red]error:[/] {escape(str(file))}: {len(found)} problems")
        for path, message in found:
            err.print(f"  {escape(path or '-')}: {escape(message)}")
    raise typer.Exit(2)
