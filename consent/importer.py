"""Import the consents a program gathered before Clarion into the append-only ledger.

A CSV of consent acts, one a row, each with its original source and date (the proof is what the member did
then, where and when: it is kept as it was, never re-labelled ``import``). The current state of each
(member, channel, topic) follows the latest act by time, whatever the order of the file and whatever is
already in the ledger (consent.ledger.record).

The file: UTF-8 (a BOM is accepted), comma-separated, a header line naming the columns in any order::

    external_id   the member's id in the loyalty core (members are imported first: an unknown one is refused)
    channel       email sms whatsapp telegram push receipt inbox direct_mail
    topic         one of the program's topics, or * for the whole channel ("service" is refused: service
                  messages need no consent)
    action        granted revoked confirmed suppressed requested
    source        web pos api sms_keyword telegram import bounce complaint unsubscribe provider
    at            ISO 8601 with an offset (2021-03-04T10:15:00+03:00, ...Z); a date alone (2021-03-04) is the
                  start of that day in the program's time zone; a time without an offset, or in the future,
                  is refused
    wording_version, text, text_hash, ip, user_agent     optional proof: ``text`` (the exact wording the
                  member was shown) is stored as its SHA-256 only; ``text_hash`` gives that hash directly
                  (both: they must agree); ip is checked; user_agent up to 512 characters

Streamed: rows are read, checked and written in batches (one transaction each), so a file of any length
runs in bounded memory. A bad row is reported by line and field (``line 7: at: give a time zone offset``)
and writes nothing; the good rows are kept. Idempotent: a row whose (member, channel, topic, action, source,
at) is already in the ledger is counted as a duplicate and not written again, so a file can be imported
again after fixing its bad rows (or after a failure half-way: the batches written before it are skipped).
A dry run checks everything (the members too) and writes nothing; its duplicates are the rows already in
the ledger and those repeated within a batch.

What stops the whole file (``UnreadableFile``): a header that lacks a required column or names an unknown
one, and text that is not UTF-8. A seekable file is checked for UTF-8 before anything is written; a stream
that cannot be re-read (a pipe) stops at the first line that is not UTF-8, after writing the rows before it.

Not guarded: two imports of the same file at the same moment can both write a row (the duplicate check is
a read, the ledger has no unique key on these columns).
"""

from __future__ import annotations

import csv
import functools
import hashlib
import io
import ipaddress
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from campaigns.rules import program_rules
from consent import ledger
from consent.policy import CHANNEL_WIDE, SERVICE_TOPIC
from members.service import get_program
from storage.tables import ChannelName, ConsentAction, ConsentRecord, ConsentSource, Member, utcnow

REQUIRED = ("external_id", "channel", "topic", "action", "source", "at")
OPTIONAL = ("wording_version", "text", "text_hash", "ip", "user_agent")
BATCH = 1000
KEEP_ERRORS = 1000          # errors kept in the result (all go to on_error)

CHANNELS = tuple(c.value for c in ChannelName)
ACTIONS = tuple(a.value for a in ConsentAction)
SOURCES = tuple(s.value for s in ConsentSource)
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_UTF8_BOM = b"\xef\xbb\xbf"
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")


class UnreadableFile(ValueError):
    """The file as a whole cannot be imported (header, encoding). ``result``: what was done before."""

    def __init__(self, message: str, result: ImportResult | None = None) -> None:
        super().__init__(message)
        self.result = result


@dataclass(frozen=True)
class RowError:
    line: int                # the CSV line the row starts on (1 = the header)
    field: str
    message: str
    external_id: str | None = None

    def __str__(self) -> str:
        return f"line {self.line}: {self.field}: {self.message}"


@dataclass
class ImportResult:
    rows: int = 0            # data rows read
    imported: int = 0        # ledger rows written (in a dry run: that would be written)
    duplicates: int = 0      # already in the ledger, or repeated in the file
    refused: int = 0         # rows with an error (a row may have several)
    errors: list[RowError] = field(default_factory=list)   # the first KEEP_ERRORS
    dry_run: bool = False


@dataclass(frozen=True, slots=True)
class _Row:
    line: int
    external_id: str
    channel: str
    topic: str
    action: str              # a ConsentAction
    source: str              # a ConsentSource
    at: datetime             # UTC
    wording_version: str | None
    text_hash: str | None
    ip: str | None
    user_agent: str | None


@dataclass(frozen=True)
class _Program:
    id: int
    key: str
    topics: tuple[str, ...]
    zone: ZoneInfo


# --- reading -------------------------------------------------------------------------------


class _NotUtf8(Exception):
    def __init__(self, line: int, byte: int) -> None:
        self.line, self.byte = line, byte


def _decode(n: int, raw: bytes | str) -> str:
    if isinstance(raw, str):
        return raw.removeprefix("\ufeff") if n == 1 else raw
    if n == 1:
        if raw.startswith(_UTF16_BOMS):
            raise UnreadableFile("line 1: the file is UTF-16 text: save it as UTF-8 (CSV UTF-8)")
        raw = raw.removeprefix(_UTF8_BOM)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _NotUtf8(n, exc.start + 1) from None


def _lines(stream: Iterable[bytes | str]) -> Iterator[str]:
    for n, raw in enumerate(stream, start=1):
        yield _decode(n, raw)


def _not_utf8(exc: _NotUtf8) -> str:
    return f"line {exc.line}: not UTF-8 text (byte {exc.byte} of the line): save the file as UTF-8"


def check_utf8(stream: Iterable[bytes | str]) -> None:
    """Read the stream through once (line by line) and raise UnreadableFile at the first line that is not UTF-8."""
    try:
        for _ in _lines(stream):
            pass
    except _NotUtf8 as exc:
        raise UnreadableFile(_not_utf8(exc)) from None


def _header(cells: list[str]) -> list[str]:
    names = [c.strip().lower() for c in cells]
    known = (*REQUIRED, *OPTIONAL)
    problems = []
    missing = [c for c in REQUIRED if c not in names]
    if missing:
        problems.append(f"missing {', '.join(missing)}")
    unknown = [c for c in names if c and c not in known]   # a column without a name (a trailing comma) is ignored
    if unknown:
        problems.append(f"unknown {', '.join(repr(c) for c in unknown)}")
    repeated = sorted({c for c in names if c and names.count(c) > 1})
    if repeated:
        problems.append(f"repeated {', '.join(repeated)}")
    if problems:
        raise UnreadableFile(f"line 1: header: {'; '.join(problems)} (the columns are {', '.join(REQUIRED)}, "
                             f"and optionally {', '.join(OPTIONAL)})")
    return names


# --- one row -------------------------------------------------------------------------------


def _one_of(value: str | None, allowed: tuple[str, ...], what: str) -> tuple[str | None, str | None]:
    if not value:
        return None, f"missing: use one of {', '.join(allowed)}"
    v = value.lower()
    if v not in allowed:
        return None, f"{value!r} is not {what}: use one of {', '.join(allowed)}"
    return v, None


def parse_at(value: str | None, zone: ZoneInfo, now: datetime) -> tuple[datetime | None, str | None]:
    """ISO 8601 with an offset → UTC; a date alone → the start of that day in ``zone``."""
    if not value:
        return None, "missing: give the date and time of the act (ISO 8601 with an offset)"
    example = "e.g. 2021-03-04T10:15:00+03:00 or 2021-03-04T07:15:00Z"
    try:
        at = datetime.combine(date.fromisoformat(value), time(0), zone) if len(value) <= 10 else None
    except ValueError:
        at = None
    if at is None:
        try:
            at = datetime.fromisoformat(value)
        except ValueError:
            return None, f"{value!r} is not a date and time in ISO 8601 ({example})"
        if at.tzinfo is None or at.utcoffset() is None:
            return None, f"give a time zone offset ({example})"
    at = at.astimezone(UTC)
    if at > now:
        return None, f"{value} is in the future"
    return at, None


@functools.lru_cache(maxsize=4096)   # an export repeats addresses (a shop's till, an office)
def _ip(value: str) -> str | None:
    try:
        return ipaddress.ip_address(value).compressed
    except ValueError:
        return None


def parse_row(line: int, cells: dict[str, str], program: _Program,
              now: datetime) -> _Row | list[tuple[str, str]]:
    """A CSV row (column → raw text) → a checked row, or the (field, message) of each problem."""
    v = {k: (s.strip() if k != "text" else s) for k, s in cells.items()}
    problems: list[tuple[str, str]] = []
    ext = v.get("external_id") or ""
    if not ext:
        problems.append(("external_id", "missing"))
    elif len(ext) > 128:
        problems.append(("external_id", "longer than 128 characters"))
    channel, why = _one_of(v.get("channel"), CHANNELS, "a channel")
    if why:
        problems.append(("channel", why))
    topic = (v.get("topic") or "").lower()
    topics = ", ".join(program.topics)
    if not topic:
        problems.append(("topic", f"missing: use one of {topics}, or * for the whole channel"))
    elif topic == SERVICE_TOPIC:
        problems.append(("topic", "service messages need no consent, so there is none to import: leave these "
                                  "rows out (a refusal of the whole channel is topic *)"))
    elif topic != CHANNEL_WIDE and topic not in program.topics:
        problems.append(("topic", f"{v['topic']!r} is not a topic of program {program.key}: use one of "
                                  f"{topics}, or * for the whole channel"))
    action, why = _one_of(v.get("action"), ACTIONS, "an action")
    if why:
        problems.append(("action", why))
    source, why = _one_of(v.get("source"), SOURCES, "a source")
    if why:
        problems.append(("source", why))
    at, why = parse_at(v.get("at"), program.zone, now)
    if why:
        problems.append(("at", why))
    wording = v.get("wording_version") or None
    if wording and len(wording) > 64:
        problems.append(("wording_version", "longer than 64 characters"))
    text_hash = (v.get("text_hash") or "").lower() or None
    if text_hash and not _HEX64.match(text_hash):
        problems.append(("text_hash", "give the SHA-256 of the text as 64 hexadecimal digits"))
        text_hash = None
    text = v.get("text")
    if text:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        if text_hash and text_hash != digest:
            problems.append(("text_hash", "does not match the SHA-256 of text"))
        text_hash = digest
    ip = v.get("ip") or None
    if ip:
        ip = _ip(ip)
        if ip is None:
            problems.append(("ip", f"{v['ip']!r} is not an IPv4 or IPv6 address"))
    agent = v.get("user_agent") or None
    if agent and len(agent) > 512:
        problems.append(("user_agent", f"longer than 512 characters ({len(agent)})"))
    if problems:
        return problems
    return _Row(line, ext, channel or "", topic, action or "", source or "", at or now, wording, text_hash, ip, agent)


# --- the import ----------------------------------------------------------------------------


def _key(member_id: int, channel: str, topic: str, action: str, source: str,
         at: datetime) -> tuple[int, str, str, str, str, datetime]:
    # SQLite gives stored times back without their zone (they are UTC); PostgreSQL in the session's zone
    at = at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)
    return member_id, channel, topic, action, source, at


class _Importer:
    def __init__(self, engine: Engine, program: _Program, dry_run: bool, on_error: Callable[[RowError], None] | None,
                 progress: Callable[[int], None] | None) -> None:
        self.engine, self.program, self.dry_run = engine, program, dry_run
        self.on_error, self.progress = on_error, progress
        self.result = ImportResult(dry_run=dry_run)
        self.batch: list[_Row] = []
        self.errors: list[RowError] = []
        self.pending = 0           # rows read since the last flush (good and bad)

    def refuse(self, line: int, problems: list[tuple[str, str]], ext: str | None) -> None:
        self.result.refused += 1
        self.errors.extend(RowError(line, f, m, ext) for f, m in problems)

    def flush(self) -> None:
        if self.batch:
            self._write(self.batch)
        for e in sorted(self.errors, key=lambda e: e.line):
            if len(self.result.errors) < KEEP_ERRORS:
                self.result.errors.append(e)
            if self.on_error:
                self.on_error(e)
        if self.progress and self.pending:
            self.progress(self.pending)
        self.batch, self.errors, self.pending = [], [], 0

    def _write(self, batch: list[_Row]) -> None:
        """One transaction: find the members, skip what the ledger already has, append the rest."""
        program_id = self.program.id
        with Session(self.engine, expire_on_commit=False) as s:
            members = {ext: (mid, erased) for ext, mid, erased in s.execute(
                select(Member.external_id, Member.id, Member.erased_at).where(  # type: ignore[call-overload]
                    Member.program_id == program_id,
                    Member.external_id.in_(list({r.external_id for r in batch}))))}  # type: ignore[union-attr]
            known: list[tuple[int, _Row]] = []
            for r in batch:
                found = members.get(r.external_id)
                if found is None:
                    self.refuse(r.line, [("external_id", f"no member {r.external_id!r} in program {self.program.key} "
                                                         "(import the members first)")], r.external_id)
                elif found[1] is not None:
                    self.refuse(r.line, [("external_id", f"member {r.external_id!r} was erased: no consent is "
                                                         "recorded for them")], r.external_id)
                else:
                    known.append((found[0], r))
            if not known:
                return
            seen = {_key(*row) for row in s.execute(
                select(ConsentRecord.member_id, ConsentRecord.channel, ConsentRecord.topic,  # type: ignore[call-overload]
                       ConsentRecord.action, ConsentRecord.source, ConsentRecord.at).where(
                    ConsentRecord.program_id == program_id,
                    ConsentRecord.member_id.in_(list({m for m, _ in known})),  # type: ignore[union-attr]
                    ConsentRecord.at.in_(list({r.at for _, r in known}))))}  # type: ignore[attr-defined]
            acts = []
            for member_id, r in known:
                key = _key(member_id, r.channel, r.topic, r.action, r.source, r.at)
                if key in seen:
                    self.result.duplicates += 1
                    continue
                seen.add(key)
                acts.append(ledger.ConsentAct(
                    member_id=member_id, channel=r.channel, topic=r.topic, action=ConsentAction(r.action),
                    source=ConsentSource(r.source),
                    wording_version=r.wording_version, text_hash=r.text_hash, ip=r.ip, user_agent=r.user_agent,
                    at=r.at))
            if acts and not self.dry_run:
                ledger.append(session=s, program_id=program_id, acts=acts)
                s.commit()
            self.result.imported += len(acts)

    def run(self, lines: Iterator[str], batch_size: int) -> None:
        reader = csv.reader(lines)
        now = utcnow()
        try:
            header = _header(next(reader))
        except StopIteration:
            raise UnreadableFile("the file is empty: it needs a header line") from None
        if reader.line_num != 1:
            raise UnreadableFile("line 1: header: a header cell spans lines")
        width = len(header)
        while True:
            start = reader.line_num + 1
            try:
                cells = next(reader)
            except StopIteration:
                break
            except csv.Error as exc:
                self.result.rows += 1
                self.pending += 1
                self.refuse(start, [("row", f"not readable as CSV: {exc}")], None)
                continue
            if not any(c.strip() for c in cells):
                continue  # a blank line, or only commas
            self.result.rows += 1
            self.pending += 1
            if len(cells) != width:
                ext = cells[header.index("external_id")].strip() if len(cells) > header.index("external_id") else None
                self.refuse(start, [("row", f"{len(cells)} values for the header's {width} columns")], ext or None)
            else:
                parsed = parse_row(start, dict(zip(header, cells, strict=True)), self.program, now)
                if isinstance(parsed, list):
                    self.refuse(start, parsed, cells[header.index("external_id")].strip() or None)
                else:
                    self.batch.append(parsed)
            if self.pending >= batch_size:
                self.flush()
        self.flush()


def load_program(*, engine: Engine, key: str) -> _Program:
    """The program's id, topic keys and time zone (members.service.ProgramNotFound when there is none)."""
    with Session(engine) as s:
        program = get_program(s, key)
        try:
            zone = ZoneInfo(program.time_zone or "UTC")
        except (ZoneInfoNotFoundError, ValueError):
            zone = ZoneInfo("UTC")
        return _Program(program.id or 0, program.key, tuple(program_rules(program.settings).topic_keys()), zone)


def import_consents(*, engine: Engine, program: str, stream: Iterable[bytes] | Iterable[str], dry_run: bool = False,
                    batch_size: int = BATCH, progress: Callable[[int], None] | None = None,
                    on_error: Callable[[RowError], None] | None = None) -> ImportResult:
    """Import a consent CSV (see the module docstring) into ``program``'s ledger.

    ``stream``: lines as bytes (a file opened ``rb``: decoded here, so an error names the line) or as text.
    ``progress(n)``: n more rows handled (after each batch). ``on_error``: every row error, in line order per
    batch. Raises ProgramNotFound, or UnreadableFile for the file as a whole."""
    prog = load_program(engine=engine, key=program)
    if isinstance(stream, io.BufferedIOBase | io.RawIOBase) and stream.seekable():  # a binary file
        check_utf8(stream)
        stream.seek(0)
    importer = _Importer(engine, prog, dry_run, on_error, progress)
    try:
        importer.run(_lines(stream), batch_size)
    except _NotUtf8 as exc:
        importer.flush()
        n = 0 if dry_run else importer.result.imported
        done = "nothing was written" if not n else \
            f"{n} rows before it were imported; importing the fixed file again adds only the rest"
        raise UnreadableFile(f"{_not_utf8(exc)} ({done})", importer.result) from None
    except UnreadableFile as exc:
        exc.result = importer.result
        raise
    return importer.result
