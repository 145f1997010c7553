"""Importing a program's existing consents (consent.importer, `clarion consent import|history`): on a real
SQLite file and, when CI provides it, a real PostgreSQL."""

from __future__ import annotations

import hashlib
import io
import time
import tracemalloc
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlmodel import Session
from typer.testing import CliRunner

from app.cli import app as cli
from consent import ledger
from consent.importer import UnreadableFile, import_consents
from members.service import ensure_program
from storage.db import make_engine, session_scope
from storage.tables import ConsentAction, ConsentRecord, ConsentSource, ConsentState, Member
from tests.factories import seed_members

HEADER = "external_id,channel,topic,action,source,at"
NO_CONSENT = 10**9   # seed_members: nobody gets the factory's own consent


@pytest.fixture
def eng(any_db_url):
    e = make_engine(any_db_url)
    yield e
    e.dispose()


def members(engine, n: int = 3, **kw) -> dict[str, int]:
    """Program "shop" (topics promotions, news) with members M000001..; external id → id."""
    seed_members(engine, n, consent_every=kw.pop("consent_every", NO_CONSENT), **kw)
    with Session(engine) as s:
        return dict(s.execute(select(Member.external_id, Member.id)).all())  # type: ignore[arg-type]


def program_id(engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(Member.program_id).limit(1)) or 0


def run(engine, text: str | bytes, **kw):
    data = text.encode() if isinstance(text, str) else text
    return import_consents(engine=engine, program="shop", stream=io.BytesIO(data), **kw)


def ledger_rows(engine) -> list[ConsentRecord]:
    with Session(engine) as s:
        return list(s.scalars(select(ConsentRecord).order_by(ConsentRecord.id)))  # type: ignore[arg-type]


def state(engine, member_id: int, channel: str = "email", topic: str = "promotions") -> str | None:
    with Session(engine) as s:
        row = s.get(ConsentState, (member_id, channel, topic))
        return None if row is None else row.status


def utc(at: datetime) -> datetime:
    return at.replace(tzinfo=UTC) if at.tzinfo is None else at.astimezone(UTC)


# --- what lands --------------------------------------------------------------------------------


def test_good_rows_land_with_their_original_source_date_and_proof(eng):
    ids = members(eng)
    text = "I agree to receive offers from Shop & Co by e-mail."
    result = run(eng, f"{HEADER},wording_version,text,ip,user_agent\n"
                      f"M000001,email,promotions,granted,web,2019-05-01T10:15:00+03:00,v3,{text},"
                      "2001:DB8:0:0:0:0:0:1,Mozilla/5.0 (X11)\n"
                      "M000002,SMS,*,Revoked,sms_keyword,2021-02-03T04:05:06.789Z,,,,\n"
                      "M000003,push,news,confirmed,pos,2020-01-01T00:00:00+00:00,,,203.0.113.9,\n")
    assert (result.rows, result.imported, result.duplicates, result.refused, result.errors) == (3, 3, 0, 0, [])
    first, second, third = ledger_rows(eng)
    assert (first.member_id, first.channel, first.topic, first.action, first.source) == \
        (ids["M000001"], "email", "promotions", "granted", "web")
    assert utc(first.at) == datetime(2019, 5, 1, 7, 15, tzinfo=UTC)
    assert first.wording_version == "v3" and first.ip == "2001:db8::1" and first.user_agent == "Mozilla/5.0 (X11)"
    assert first.text_hash == hashlib.sha256(text.encode()).hexdigest()
    assert (second.channel, second.topic, second.action, second.source) == ("sms", "*", "revoked", "sms_keyword")
    assert utc(second.at) == datetime(2021, 2, 3, 4, 5, 6, 789000, tzinfo=UTC)
    assert second.text_hash is None and second.ip is None
    assert third.source == "pos" and third.ip == "203.0.113.9"
    assert state(eng, ids["M000001"]) == "granted"
    assert state(eng, ids["M000002"], "sms", "*") == "revoked"
    assert state(eng, ids["M000003"], "push", "news") == "confirmed"


def test_a_given_text_hash_is_kept_and_must_agree_with_the_text(eng):
    members(eng)
    digest = hashlib.sha256(b"the wording").hexdigest()
    result = run(eng, f"{HEADER},text,text_hash\n"
                      f"M000001,email,news,granted,web,2020-01-01T00:00:00Z,,{digest.upper()}\n"
                      f"M000002,email,news,granted,web,2020-01-01T00:00:00Z,the wording,{digest}\n"
                      f"M000003,email,news,granted,web,2020-01-01T00:00:00Z,another wording,{digest}\n")
    assert [str(e) for e in result.errors] == ["line 4: text_hash: does not match the SHA-256 of text"]
    assert [r.text_hash for r in ledger_rows(eng)] == [digest, digest]


def test_a_date_alone_is_the_start_of_that_day_in_the_programs_time_zone(eng):
    ensure_program(engine=eng, key="shop", name="Shop", time_zone="America/New_York")
    members(eng, 1)
    run(eng, f"{HEADER}\nM000001,email,news,granted,web,2021-03-04\n")
    assert utc(ledger_rows(eng)[0].at) == datetime(2021, 3, 4, 5, 0, tzinfo=UTC)   # 00:00 EST


# --- the state follows the latest act by time ---------------------------------------------------


@pytest.mark.parametrize("order", ["newest first", "oldest first"])
def test_state_follows_the_latest_act_by_time_whatever_the_import_order(eng, order):
    ids = members(eng, 2)
    old = f"{HEADER}\nM000001,email,promotions,granted,web,2019-01-01T00:00:00Z\n" \
          "M000002,email,promotions,revoked,unsubscribe,2019-01-01T00:00:00Z\n"
    new = f"{HEADER}\nM000001,email,promotions,revoked,unsubscribe,2022-06-01T00:00:00Z\n" \
          "M000002,email,promotions,granted,pos,2022-06-01T00:00:00Z\n"
    for text in ([new, old] if order == "newest first" else [old, new]):
        run(eng, text)
    assert len(ledger_rows(eng)) == 4   # every act is history, the old ones too
    assert state(eng, ids["M000001"]) == "revoked"
    assert state(eng, ids["M000002"]) == "granted"


def test_rows_of_one_file_in_any_order_and_in_one_batch_give_the_latest_act(eng):
    ids = members(eng, 2)
    result = run(eng, f"{HEADER}\n"
                      "M000001,email,news,revoked,web,2023-01-01T12:00:00+01:00\n"
                      "M000001,email,news,granted,web,2018-01-01T00:00:00Z\n"
                      "M000001,email,news,confirmed,web,2020-01-01T00:00:00Z\n"
                      "M000002,email,news,granted,web,2020-01-01T00:00:00Z\n"
                      "M000002,email,news,revoked,web,2020-01-01T00:00:00Z\n")   # same time: the later row wins
    assert result.imported == 5
    assert state(eng, ids["M000001"], "email", "news") == "revoked"
    assert state(eng, ids["M000002"], "email", "news") == "revoked"
    with Session(eng) as s:
        history = ledger.history(session=s, member_id=ids["M000001"])
    assert [r.action for r in history] == ["granted", "confirmed", "revoked"]   # in the order they happened


def test_an_imported_old_act_does_not_override_a_live_one_and_a_live_act_overrides_the_import(eng):
    ids = members(eng, 2, consent_every=2)   # M000002 granted email/promotions now (source api)
    run(eng, f"{HEADER}\nM000002,email,promotions,revoked,unsubscribe,2020-01-01T00:00:00Z\n"
             "M000001,email,promotions,granted,web,2020-01-01T00:00:00Z\n")
    assert state(eng, ids["M000002"]) == "granted"
    assert state(eng, ids["M000001"]) == "granted"
    with session_scope(eng) as s:   # the member unsubscribes today: a live act, newer than the imported one
        ledger.record(session=s, program_id=program_id(eng), acts=[ledger.ConsentAct(
            member_id=ids["M000001"], channel="email", topic="promotions", action=ConsentAction.revoked,
            source=ConsentSource.unsubscribe)])
    assert state(eng, ids["M000001"]) == "revoked"


def test_the_ledger_refuses_a_time_without_a_zone(eng):
    ids = members(eng, 1)
    with pytest.raises(ValueError, match="time zone"), session_scope(eng) as s:
        ledger.record(session=s, program_id=program_id(eng), acts=[ledger.ConsentAct(
            member_id=ids["M000001"], channel="email", topic="news", action=ConsentAction.granted,
            source=ConsentSource.web, at=datetime(2020, 1, 1))])
    assert ledger_rows(eng) == []


# --- bad rows -------------------------------------------------------------------------------------


def test_bad_rows_are_reported_by_line_and_field_and_nothing_is_written_for_them(eng):
    ids = members(eng, 2)
    future = (datetime.now(UTC) + timedelta(days=2)).isoformat()
    result = run(eng, f"{HEADER},ip,user_agent\n"
                      "M000001,email,promotions,granted,web,2020-01-01T00:00:00Z,,\n"         # 2 good
                      "M000001,email,promotions,granted,web,2020-01-01T10:00:00,,\n"           # 3 naive
                      "NOBODY,email,promotions,granted,web,2020-01-01T00:00:00Z,,\n"           # 4
                      "M000002,email,offers,granted,web,2020-01-01T00:00:00Z,,\n"              # 5
                      "M000002,sms,service,granted,web,2020-01-01T00:00:00Z,,\n"               # 6
                      "M000002,fax,news,agreed,paper,yesterday,,\n"                            # 7 (4 fields)
                      f"M000002,email,news,granted,web,{future},,\n"                           # 8
                      "M000002,email,news,granted,web,2020-01-01T00:00:00Z,300.1.1.1,\n"       # 9
                      f"M000002,email,news,granted,web,2020-01-01T00:00:00Z,,{'x' * 513}\n"    # 10
                      "M000002,email,news,granted\n"                                           # 11
                      ",email,news,granted,web,2020-01-01T00:00:00Z,,\n"                       # 12
                      "M000002,email,news,granted,web,2020-01-01T00:00:00Z,,\n")               # 13 good
    assert (result.rows, result.imported, result.refused) == (12, 2, 10)
    assert [(e.line, e.field) for e in result.errors] == [
        (3, "at"), (4, "external_id"), (5, "topic"), (6, "topic"),
        (7, "channel"), (7, "action"), (7, "source"), (7, "at"),
        (8, "at"), (9, "ip"), (10, "user_agent"), (11, "row"), (12, "external_id")]
    by_line = {e.line: str(e) for e in result.errors}
    assert by_line[3] == "line 3: at: give a time zone offset (e.g. 2021-03-04T10:15:00+03:00 or " \
                         "2021-03-04T07:15:00Z)"
    assert "no member 'NOBODY' in program shop" in by_line[4]
    assert "'offers' is not a topic of program shop: use one of promotions, news, or *" in by_line[5]
    assert "service messages need no consent" in by_line[6]
    assert "in the future" in by_line[8] and "'300.1.1.1' is not an IPv4 or IPv6 address" in by_line[9]
    assert "longer than 512 characters (513)" in by_line[10] and "4 values for the header's 8 columns" in by_line[11]
    assert [(r.member_id, r.topic) for r in ledger_rows(eng)] == [(ids["M000001"], "promotions"),
                                                                  (ids["M000002"], "news")]
    with Session(eng) as s:
        assert s.scalar(select(func.count()).select_from(ConsentState)) == 2


def test_an_erased_member_gets_no_consent_from_an_import(eng):
    ids = members(eng, 2)
    with session_scope(eng) as s:
        s.get(Member, ids["M000002"]).erased_at = datetime.now(UTC)
    result = run(eng, f"{HEADER},\nM000001,email,news,granted,web,2020-01-01T00:00:00Z,\n"
                      "M000002,email,news,granted,web,2020-01-01T00:00:00Z,\n")   # a trailing comma: ignored
    assert [str(e) for e in result.errors] == [
        "line 3: external_id: member 'M000002' was erased: no consent is recorded for them"]
    assert [r.member_id for r in ledger_rows(eng)] == [ids["M000001"]]


def test_a_header_without_a_required_column_or_with_an_unknown_one_refuses_the_file(eng):
    members(eng, 1)
    with pytest.raises(UnreadableFile, match=r"line 1: header: missing at; unknown 'wording'"):
        run(eng, "external_id,channel,topic,action,source,wording\nM000001,email,news,granted,web,v1\n")
    with pytest.raises(UnreadableFile, match="empty"):
        run(eng, "")
    assert ledger_rows(eng) == []


# --- dry run, idempotence, encodings ----------------------------------------------------------


def test_a_dry_run_checks_every_row_and_the_members_and_writes_nothing(eng):
    members(eng, 1)
    result = run(eng, f"{HEADER}\nM000001,email,news,granted,web,2020-01-01T00:00:00Z\n"
                      "NOBODY,email,news,granted,web,2020-01-01T00:00:00Z\n", dry_run=True)
    assert (result.dry_run, result.imported, result.refused) == (True, 1, 1)
    assert [(e.line, e.field) for e in result.errors] == [(3, "external_id")]
    assert ledger_rows(eng) == []
    with Session(eng) as s:
        assert s.scalar(select(func.count()).select_from(ConsentState)) == 0


def test_the_same_file_imported_twice_adds_no_rows(eng):
    ids = members(eng, 2)
    text = (f"{HEADER},text\n"
            "M000001,email,news,granted,web,2020-01-01T10:00:00+02:00,I agree\n"
            "M000001,email,news,granted,web,2020-01-01T08:00:00Z,I agree\n"    # the same act, written in UTC
            "M000001,email,news,revoked,web,2021-01-01T00:00:00.5Z,\n"
            "M000002,sms,*,suppressed,provider,2021-01-01T00:00:00Z,\n")
    first = run(eng, text, batch_size=2)
    assert (first.imported, first.duplicates) == (3, 1)
    second = run(eng, text, batch_size=2)
    assert (second.imported, second.duplicates, second.refused) == (0, 4, 0)
    assert len(ledger_rows(eng)) == 3
    assert state(eng, ids["M000001"], "email", "news") == "revoked"


def test_a_utf8_bom_is_accepted(eng):
    members(eng, 1)
    result = run(eng, b"\xef\xbb\xbf" + f"{HEADER},text\n"
                                       "M000001,email,news,granted,web,2020-01-01T00:00:00Z,Согласен на рассылку\n".encode())
    assert (result.imported, result.errors) == (1, [])
    assert ledger_rows(eng)[0].text_hash == hashlib.sha256("Согласен на рассылку".encode()).hexdigest()


def test_a_file_that_is_not_utf8_is_refused_naming_the_line_and_nothing_is_written(eng):
    members(eng, 2)
    data = (f"{HEADER},text\nM000001,email,news,granted,web,2020-01-01T00:00:00Z,ok\n"
            "M000002,email,news,granted,web,2020-01-01T00:00:00Z,").encode() + "Согласен\n".encode("cp1251")
    with pytest.raises(UnreadableFile, match=r"^line 3: not UTF-8 text \(byte 53 of the line\): save the file as UTF-8"):
        run(eng, data)
    assert ledger_rows(eng) == []
    with pytest.raises(UnreadableFile, match="UTF-16"):
        run(eng, f"{HEADER}\n".encode("utf-16"))


def test_a_stream_that_cannot_be_read_again_stops_at_the_first_line_that_is_not_utf8(eng):
    members(eng, 2)
    lines = [f"{HEADER}\n".encode(), b"M000001,email,news,granted,web,2020-01-01T00:00:00Z\n",
             b"M000002,email,news,granted,web,2020-01-01T00:00:00Z,\xff\n",
             b"M000002,email,promotions,granted,web,2020-01-01T00:00:00Z\n"]
    with pytest.raises(UnreadableFile, match="line 3: not UTF-8") as caught:
        import_consents(engine=eng, program="shop", stream=iter(lines))
    assert "1 rows before it were imported; importing the fixed file again adds only the rest" in str(caught.value)
    assert caught.value.result is not None and caught.value.result.imported == 1
    assert [r.topic for r in ledger_rows(eng)] == ["news"]


# --- streaming ------------------------------------------------------------------------------------


def _generated(n: int, members_n: int) -> Iterator[bytes]:
    yield f"{HEADER},wording_version,text,ip,user_agent\n".encode()
    start = datetime(2018, 1, 1, tzinfo=UTC)
    for i in range(n):
        at = (start + timedelta(minutes=i)).isoformat()
        yield (f"M{i % members_n + 1:06d},{('email', 'sms', 'push')[i % 3]},{('promotions', 'news', '*')[i % 3]},"
               f"{('granted', 'revoked')[i % 2]},web,{at},v1,I agree to receive offers number {i},"
               f"203.0.113.{i % 250},Mozilla/5.0 (row {i})\n").encode()


def test_a_large_import_is_streamed_in_batches_in_bounded_memory(db_url):
    """20,000 rows read from a generator: the import holds one batch at a time (the 20,000 rows read into
    dicts would take ~17 MiB on their own)."""
    engine = make_engine(db_url)
    members(engine, 500)
    import_consents(engine=engine, program="shop", stream=_generated(50, 500))   # warm the statement caches
    steps: list[int] = []
    tracemalloc.start()
    began = time.perf_counter()
    try:
        result = import_consents(engine=engine, program="shop", stream=_generated(20_000, 500),
                                 progress=steps.append)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    took = time.perf_counter() - began
    engine.dispose()
    assert (result.rows, result.imported, result.duplicates, result.refused) == (20_000, 19_950, 50, 0)
    assert steps == [1000] * 20
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB in {took:.1f} s"   # measured: ~3.3 MiB


# --- the CLI -------------------------------------------------------------------------------------


@pytest.fixture
def cli_run(db_url, monkeypatch):
    monkeypatch.setenv("CLARION_DATABASE_URL", db_url)
    engine = make_engine(db_url)
    members(engine, 2)
    engine.dispose()
    runner = CliRunner()
    return lambda *args, **kw: runner.invoke(cli, ["consent", *args], **kw)


def test_cli_imports_reports_bad_rows_and_exits_2_then_0_for_the_fixed_file(cli_run, tmp_path):
    f = tmp_path / "consents.csv"
    f.write_text(f"{HEADER},text,ip\n"
                 "M000001,email,promotions,granted,web,2019-05-01T10:15:00+03:00,I agree,203.0.113.7\n"
                 "M000002,email,promotions,granted,web,2019-05-01T10:15:00,,\n")
    r = cli_run("import", str(f), "--program", "shop", "--dry-run")
    assert r.exit_code == 2, r.output
    assert "consents.csv: 2 rows: 1 would be imported (dry run: nothing written), 0 duplicates, 1 refused" in r.stdout
    assert "line 3: at: give a time zone offset" in r.stderr and "(member M000002)" in r.stderr
    r = cli_run("import", str(f), "-p", "shop")
    assert r.exit_code == 2 and "1 imported, 0 duplicates, 1 refused" in r.stdout
    f.write_text(f.read_text().replace("10:15:00,,", "10:15:00Z,,"))
    r = cli_run("import", str(f), "-p", "shop")
    assert r.exit_code == 0, r.output
    assert "2 rows: 1 imported, 1 duplicates, 0 refused" in r.stdout

    r = cli_run("history", "M000001", "-p", "shop")
    assert r.exit_code == 0, r.output
    digest = hashlib.sha256(b"I agree").hexdigest()
    assert (f"* 2019-05-01T07:15:00+00:00  email/promotions  granted  source web, text sha256 {digest}, "
            "ip 203.0.113.7") in r.stdout
    assert "email/promotions  granted  since 2019-05-01T07:15:00+00:00" in r.stdout


def test_cli_exits_1_for_an_unknown_program_a_missing_file_or_one_that_is_not_utf8(cli_run, tmp_path):
    f = tmp_path / "consents.csv"
    f.write_bytes(f"{HEADER}\nM000001,email,news,granted,web,2020-01-01T00:00:00Z\n".encode()
                  + "M000002,email,news,granted,web,2020-01-01T00:00:00Z,Согласен\n".encode("cp1251"))
    r = cli_run("import", str(f), "-p", "shop")
    assert r.exit_code == 1 and "consents.csv: line 3: not UTF-8 text" in r.stderr
    assert cli_run("import", str(f), "-p", "nope").exit_code == 1
    r = cli_run("import", str(tmp_path / "missing.csv"), "-p", "shop")
    assert r.exit_code == 1 and "no such file" in r.stderr
    r = cli_run("history", "NOBODY", "-p", "shop")
    assert r.exit_code == 1 and "no member 'NOBODY' in program shop" in r.stderr


def test_cli_reads_stdin(cli_run):
    r = cli_run("import", "-", "-p", "shop", input=f"{HEADER}\nM000001,inbox,news,revoked,web,2020-01-01\n")
    assert r.exit_code == 0, r.output
    assert "stdin: 1 rows: 1 imported" in r.stdout
