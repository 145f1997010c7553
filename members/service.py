"""Member upserts (one or many) and CSV import, with per-row errors by line and field."""

from __future__ import annotations

import codecs
import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from consent import ledger
from members.profile import MemberIn
from storage.db import session_scope, upsert
from storage.tables import Card, ConsentAction, ConsentSource, Member, Program, utcnow

PROFILE_COLUMNS = ("kind", "first_name", "last_name", "locale", "time_zone", "email", "phone", "attributes",
                   "postal_address")
ADDRESS_FIELDS = ("line1", "line2", "postcode", "city", "region", "country", "name")


class ProgramNotFound(LookupError):
    pass


@dataclass
class RowError:
    line: int | None        # CSV line number (1 = header) or position in a bulk request
    external_id: str | None
    field: str
    message: str


KEEP_ERRORS = 1000          # errors an import keeps (the first ones); ``rejected`` counts them all
MAX_ERROR_TEXT = 300        # characters of a kept error's message and external id (a value may be 128 KB)


@dataclass
class ImportResult:
    created: int = 0
    updated: int = 0
    rejected: int = 0                                       # bad rows (and header problems), all of them
    errors: list[RowError] = field(default_factory=list)   # the first KEEP_ERRORS of them

    @property
    def accepted(self) -> int:
        return self.created + self.updated

    def reject(self, error: RowError) -> None:
        """Count a bad row; keep its error while fewer than KEEP_ERRORS are kept, so that a file of a million
        bad rows holds a thousand errors, not a million (each ~330 bytes, more with a long value quoted)."""
        self.rejected += 1
        if len(self.errors) < KEEP_ERRORS:
            self.errors.append(RowError(error.line, _clip(error.external_id), error.field,
                                        _clip(error.message) or ""))


def _clip(text: str | None) -> str | None:
    return text if text is None or len(text) <= MAX_ERROR_TEXT else text[:MAX_ERROR_TEXT - 1] + "…"


def get_program(session: Session, key: str) -> Program:
    program = session.scalar(select(Program).where(Program.key == key))
    if program is None:
        raise ProgramNotFound(f"program {key!r} not found")
    return program


def program_problems(*, key: str, name: str, default_locale: str, time_zone: str,
                     currency: str) -> list[tuple[str, str]]:
    """What is wrong with a new program's fields, as (field, message): a program is only written whole."""
    from babel.numbers import is_currency

    from campaigns.schedule import UnknownTimeZone, zone
    from campaigns.spec import KEY
    from templates.render import normalize_locale

    found: list[tuple[str, str]] = []
    if not re.fullmatch(KEY, key or ""):
        found.append(("key", f"{key[:70]!r}: use a-z, 0-9, _ and - (at most 64, starting with a letter or digit)"))
    if not (name or "").strip() or len(name) > 200:
        found.append(("name", "give a name of 1 to 200 characters"))
    try:
        normalize_locale(default_locale or "")
    except ValueError:
        found.append(("locale", f"unknown locale {default_locale[:40]!r}: use a CLDR locale such as en, ru, de-AT"))
    try:
        zone(time_zone)
    except UnknownTimeZone as exc:
        found.append(("time_zone", str(exc)))
    if not re.fullmatch(r"[A-Z]{3}", currency or "") or not is_currency(currency):
        found.append(("currency", f"{currency[:20]!r} is not an ISO 4217 currency code (EUR, RUB, USD, ...)"))
    return found


def ensure_program(*, engine: Engine, key: str, name: str, default_locale: str = "en",
                   time_zone: str = "UTC", currency: str = "EUR") -> Program:
    """The program ``key``, created with these fields when it does not exist yet (refused with a SpecError
    naming each bad field, nothing written)."""
    from campaigns.spec import SpecError
    from templates.render import normalize_locale

    problems = program_problems(key=key, name=name, default_locale=default_locale, time_zone=time_zone,
                                currency=currency)
    if problems:
        raise SpecError(problems)
    default_locale = normalize_locale(default_locale)
    with session_scope(engine) as s:
        found = s.scalar(select(Program).where(Program.key == key))
        if found:
            return found
        program = Program(key=key, name=name, default_locale=default_locale, time_zone=time_zone,
                          currency=currency)
        s.add(program)
        s.flush()
        return program


def set_program_settings(*, engine: Engine, key: str, data: Any) -> dict[str, Any]:
    """Validate and store a program's rules (unit costs, quiet hours per channel, frequency caps)."""
    from campaigns.rules import ProgramRules
    from campaigns.spec import SpecError

    if not isinstance(data, dict):
        raise SpecError([("", "the settings must be a mapping (unit_costs, quiet_hours, caps)")])
    try:
        rules = ProgramRules.model_validate(data)
    except ValidationError as exc:
        raise SpecError(validation_errors(exc)) from None
    stored = rules.model_dump(mode="json", by_alias=True, exclude_defaults=True)
    with session_scope(engine) as s:
        program = get_program(s, key)
        program.settings = stored
        s.add(program)
    return stored


def validation_errors(exc: ValidationError) -> list[tuple[str, str]]:
    out = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "row"
        out.append((loc, err["msg"].removeprefix("Value error, ")))
    return out


def upsert_members(*, engine: Engine, program_id: int, items: Iterable[tuple[int | None, str, MemberIn]],
                   source: ConsentSource = ConsentSource.api, confirmations: list[int] | None = None,
                   ) -> tuple[int, int]:
    """Insert or update members by external id, in one transaction. Returns (created, updated). Consents
    ``requested`` queue a double opt-in confirmation each; their count is appended to ``confirmations``."""
    items = list(items)
    if not items:
        return 0, 0
    requested = 0
    now = utcnow()
    with session_scope(engine) as s:
        ext_ids = [ext for _, ext, _ in items]
        before = set(s.scalars(select(Member.external_id).where(
            Member.program_id == program_id, Member.external_id.in_(ext_ids))))  # type: ignore[attr-defined]
        rows = []
        for _, ext, m in items:
            row = {"program_id": program_id, "external_id": ext, "created_at": now, "updated_at": now}
            row.update({c: getattr(m, c) for c in PROFILE_COLUMNS})
            row["kind"] = str(m.kind)
            row["postal_address"] = m.postal_address.model_dump(exclude_none=True) if m.postal_address else None
            rows.append(row)
        stmt = upsert(s, Member.__table__, ["program_id", "external_id"], [*PROFILE_COLUMNS, "updated_at"])
        s.execute(stmt, rows)
        with_consents = [(ext, m) for _, ext, m in items if m.consents]
        with_cards = [(ext, m) for _, ext, m in items if m.cards]
        ids: dict[str, int] = {}
        if with_consents or with_cards:
            ids = dict(s.execute(select(Member.external_id, Member.id).where(  # type: ignore[arg-type]
                Member.program_id == program_id,
                Member.external_id.in_([e for e, _ in with_consents + with_cards]))).all())  # type: ignore[attr-defined]
        if with_cards:
            s.execute(upsert(s, Card.__table__, ["member_id", "number"], ["status"]), [
                {"member_id": ids[ext], "number": c.number, "status": c.status, "issued_at": now}
                for ext, m in with_cards for c in m.cards])
        if with_consents:
            ledger.record(session=s, program_id=program_id, acts=[
                ledger.ConsentAct(member_id=ids[ext], channel=c.channel, topic=c.topic,
                                  action=ConsentAction(c.action), source=source,
                                  wording_version=c.wording_version)
                for ext, m in with_consents for c in m.consents if c.action != ConsentAction.requested
            ])
            # double opt-in asked for by the loyalty core: `requested` + a confirmation to send, per channel
            from consent.confirmations import Proof, request_confirmation

            for ext, m in with_consents:
                by_channel: dict[str, list[tuple[str, str | None]]] = {}
                for c in m.consents:
                    if c.action == ConsentAction.requested:
                        by_channel.setdefault(c.channel, []).append((c.topic, c.wording_version))
                for channel, topics in by_channel.items():
                    if request_confirmation(session=s, program_id=program_id, member_id=ids[ext], channel=channel,
                                            topics=[t for t, _ in topics],
                                            proof=Proof(source=source, wording_version=topics[0][1])) is not None:
                        requested += 1
    created = len({e for e in ext_ids if e not in before})
    if confirmations is not None:
        confirmations.append(requested)
    return created, len(items) - created


def _known_column(col: str) -> bool:
    if col in ("attributes", "postal_address"):
        return False
    return (col.startswith(("attr.", "consent.")) or col in PROFILE_COLUMNS or col in ("external_id", "card")
            or (col.startswith("address.") and col[8:] in ADDRESS_FIELDS))


def header_errors(columns: Iterable[str]) -> list[RowError]:
    """The CSV header's problems, each naming its column (line 1): a file with one is refused before any row is
    read, rather than every one of its rows being refused for the same column."""
    errors = []
    for col in columns:
        if not _known_column(col):
            errors.append(RowError(1, None, col, "unknown column: use external_id, " + ", ".join(
                c for c in PROFILE_COLUMNS if c not in ("attributes", "postal_address"))
                + ", card, attr.<name>, consent.<channel>.<topic> or address.<"
                + "|".join(ADDRESS_FIELDS) + ">"))
        elif col.startswith("consent.") and len(col.split(".")) != 3:
            errors.append(RowError(1, None, col, "use consent.<channel>.<topic>"))
    return errors


def check_utf8(stream: Any, *, chunk: int = 1 << 20) -> None:
    """A text file opened for reading is checked to be UTF-8 through to its end before anything is imported
    (then rewound): a bad byte on the millionth line must not leave the rows before it written. Raises
    UnicodeDecodeError with the byte's position in the file. Streams that cannot be rewound (stdin, a pipe)
    are not checked here: they stop at the first bad line."""
    if not isinstance(stream, io.TextIOWrapper) or not stream.seekable() or \
            codecs.lookup(stream.encoding).name != "utf-8" or stream.tell() != 0:
        return
    raw = stream.buffer
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset = 0
    try:
        while True:
            data = raw.read(chunk)
            try:
                decoder.decode(data, final=not data)
            except UnicodeDecodeError as exc:
                # exc.object is the data after the (up to 3) bytes of a character the last chunk left unfinished
                at = offset - (len(exc.object) - len(data))
                raise UnicodeDecodeError("utf-8", exc.object[exc.start:exc.end], at + exc.start, at + exc.end,
                                         exc.reason) from None
            if not data:
                return
            offset += len(data)
    finally:
        stream.seek(0)


def parse_row(line: int, raw: dict[str, str]) -> tuple[str, MemberIn] | RowError:
    """A CSV row → (external id, profile). Columns: external_id, the profile fields, attr.<name>,
    consent.<channel>.<topic> (yes/no), address.<line1|line2|postcode|city|region|country|name> and
    card (a card number)."""
    ext = (raw.get("external_id") or "").strip()
    if not ext:
        return RowError(line, None, "external_id", "missing")
    data: dict[str, Any] = {"attributes": {}, "consents": []}
    address: dict[str, str] = {}
    for col, value in raw.items():
        if col is None:
            return RowError(line, ext, "row", "more values than columns")
        value = (value or "").strip()
        if not _known_column(col):
            return RowError(line, ext, col, "unknown column")
        if col == "external_id" or value == "":
            continue
        if col.startswith("address."):
            address[col[8:]] = value
        elif col == "card":
            data["cards"] = [{"number": value}]
        elif col.startswith("attr."):
            data["attributes"][col[5:]] = value
        elif col.startswith("consent."):
            parts = col.split(".")
            if len(parts) != 3:
                return RowError(line, ext, col, "use consent.<channel>.<topic>")
            if value.lower() not in ("yes", "no", "true", "false", "1", "0"):
                return RowError(line, ext, col, f"use yes or no, not {value!r}")
            granted = value.lower() in ("yes", "true", "1")
            data["consents"].append({"channel": parts[1], "topic": parts[2],
                                     "action": "granted" if granted else "revoked"})
        else:
            data[col] = value
    if address:
        data["postal_address"] = address
    try:
        return ext, MemberIn.model_validate(data)
    except ValidationError as exc:
        where, message = validation_errors(exc)[0]
        return RowError(line, ext, where, message)


def import_csv(*, engine: Engine, program_id: int, stream: io.TextIOBase | Iterator[str],
               batch_size: int = 1000, progress: Callable[[int], None] | None = None) -> ImportResult:
    """Stream a CSV: good rows are kept (in batches), each bad row is counted (``rejected``) and the first
    KEEP_ERRORS are reported by line and field. A file that is not UTF-8 (checked first when it can be read
    twice) or whose header names an unknown column writes nothing."""
    result = ImportResult()
    check_utf8(stream)
    reader = csv.DictReader(stream)
    if reader.fieldnames and reader.fieldnames[0].startswith("\ufeff"):   # Excel's "CSV UTF-8" starts with a BOM
        reader.fieldnames = [reader.fieldnames[0][1:], *reader.fieldnames[1:]]
    if not reader.fieldnames or "external_id" not in reader.fieldnames:
        result.reject(RowError(1, None, "external_id", "the header must name an external_id column"))
        return result
    for problem in header_errors(reader.fieldnames):
        result.reject(problem)
    if result.rejected:
        return result
    batch: list[tuple[int | None, str, MemberIn]] = []
    seen: dict[str, int] = {}

    def flush() -> None:
        created, updated = upsert_members(engine=engine, program_id=program_id, items=batch,
                                          source=ConsentSource.import_)
        result.created += created
        result.updated += updated
        if progress:
            progress(len(batch))
        batch.clear()
        seen.clear()

    while True:
        try:
            raw = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:  # a value over the csv module's 128 KB limit: this row, not the import, fails
            result.reject(RowError(reader.reader.line_num, None, "row", f"not a CSV row that can be read: {exc}"))
            continue
        line = reader.line_num
        parsed = parse_row(line, raw)
        if isinstance(parsed, RowError):
            result.reject(parsed)
            if progress:
                progress(1)
            continue
        ext, member = parsed
        if ext in seen:  # the same member twice in one batch: the later row wins
            flush()
        seen[ext] = line
        batch.append((line, ext, member))
        if len(batch) >= batch_size:
            flush()
    if batch:
        flush()
    return result
