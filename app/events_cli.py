"""`clarion events send`: post the loyalty core's events from a file (JSON or JSON Lines) or stdin.

Calls the service directly (like `clarion members import`). JSON Lines are streamed in batches of
1,000, so a large file never sits in memory. Exit code: 0 all stored (or duplicates), 2 some item was
refused, 1 the program is unknown.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer
from sqlmodel import Session

from app.settings import Settings
from members.events import ingest_events
from members.service import ProgramNotFound, get_program
from storage.db import make_engine

BATCH = 1000

events_app = typer.Typer(no_args_is_help=True, help="Events from the loyalty core (purchases, ...).")

# (where, event or None, why it could not be read) — where is "line N" (JSON Lines) or "index N" (JSON)
Item = tuple[str, Any, str | None]


class _Unreadable(Exception):
    pass


def _json_lines(lines: Iterable[str], first_line: int = 1) -> Iterator[Item]:
    for n, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        try:
            yield f"line {n}", json.loads(line), None
        except json.JSONDecodeError as exc:
            yield f"line {n}", None, f"not JSON: {exc.msg} (column {exc.colno})"


def _json_document(text: str) -> Iterator[Item]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _Unreadable(f"not JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}); "
                          "for one event a line, name the file .jsonl") from None
    if isinstance(doc, dict):
        doc = [doc]
    if not isinstance(doc, list):
        raise _Unreadable("the file must hold one event (a JSON object) or a list of events")
    for i, item in enumerate(doc):
        yield f"index {i}", item, None


def _items(stream: TextIO, suffix: str) -> Iterator[Item]:
    """JSON Lines for .jsonl/.ndjson, a JSON document for .json; otherwise (stdin) the first line decides:
    a complete JSON object on it means JSON Lines."""
    if suffix in (".jsonl", ".ndjson"):
        yield from _json_lines(stream)
        return
    if suffix == ".json":
        yield from _json_document(stream.read())
        return
    first, blank = stream.readline(), 0
    while first and not first.strip():
        first, blank = stream.readline(), blank + 1
    try:
        is_lines = isinstance(json.loads(first), dict)
    except json.JSONDecodeError:
        is_lines = False
    if is_lines:
        yield from _json_lines(_chain(first, stream), first_line=blank + 1)
    else:
        yield from _json_document("\n" * blank + first + stream.read())


def _chain(first: str, rest: TextIO) -> Iterator[str]:
    yield first
    yield from rest


class _Totals:
    def __init__(self) -> None:
        self.accepted = self.duplicates = self.refused = self.attributed = 0


def _send(engine: Any, program_id: int, items: Iterable[Item], totals: _Totals) -> None:
    batch: list[tuple[str, Any]] = []

    def flush() -> None:
        sending = batch[:]
        batch.clear()
        result = ingest_events(engine=engine, program_id=program_id, items=[raw for _, raw in sending])
        totals.accepted += result.accepted
        totals.duplicates += result.duplicates
        totals.attributed += result.attributed
        totals.refused += result.refused
        for e in result.errors:
            typer.echo(f"  {sending[e.index][0]}: {e.field}: {e.message}" + (f" (event {e.id})" if e.id else ""),
                       err=True)

    try:
        for where, raw, problem in items:
            if problem:
                totals.refused += 1
                typer.echo(f"  {where}: {problem}", err=True)
                continue
            batch.append((where, raw))
            if len(batch) >= BATCH:
                flush()
    finally:
        if batch:
            flush()  # what was read before a failure is still sent


@events_app.command("send")
def send(file: Annotated[str, typer.Argument(
             help="a .json file (one event or a list), a .jsonl file (one event a line), or - for stdin")],
         program: Annotated[str, typer.Option("--program", "-p", help="the program's key")]) -> None:
    """Send events to a program: each like the body of POST /api/v1/events (id, type, member,
    occurred_at, payload). A repeated id is counted as a duplicate, never stored twice."""
    path = Path(file)
    if file != "-" and not path.is_file():
        typer.echo(f"error: {file}: no such file", err=True)
        raise typer.Exit(2)
    engine = make_engine(Settings().db_url)
    try:
        with Session(engine) as s:
            program_id = get_program(s, program).id or 0
    except ProgramNotFound as exc:
        engine.dispose()
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None
    name = "stdin" if file == "-" else path.name
    totals = _Totals()
    try:
        if file == "-":
            if hasattr(sys.stdin, "reconfigure"):
                sys.stdin.reconfigure(encoding="utf-8")
            _send(engine, program_id, _items(sys.stdin, ""), totals)
        else:
            with path.open("r", encoding="utf-8") as fh:
                _send(engine, program_id, _items(fh, path.suffix.lower()), totals)
    except _Unreadable as exc:
        totals.refused += 1
        typer.echo(f"error: {name}: {exc}", err=True)
    except UnicodeDecodeError as exc:
        totals.refused += 1
        typer.echo(f"error: {name}: not UTF-8 text (byte {exc.start} of a chunk); save it as UTF-8", err=True)
    finally:
        engine.dispose()
    typer.echo(f"{name}: {totals.accepted} accepted, {totals.duplicates} duplicates, {totals.refused} refused"
               + (f"; {totals.attributed} purchases attributed to campaigns" if totals.attributed else ""))
    if totals.refused:
        raise typer.Exit(2)
