"""`clarion members import`: bad rows (invalid email or phone) are named by line and field while the good rows
are kept (the documented contract); a bad file (not UTF-8, an unknown column) is refused whole and writes
nothing, even when the bad byte comes after thousands of good rows; a value the csv module cannot read is
one bad row, not a crash."""

from __future__ import annotations

import pytest

from tests.badinput.conftest import counts


@pytest.fixture
def shop(cli, engine):
    assert cli("programs", "create", "shop", "--name", "Shop").exit_code == 0
    return engine


def external_ids(engine) -> list[str]:
    with engine.connect() as c:
        return c.exec_driver_sql("SELECT external_id FROM member ORDER BY external_id").scalars().all()


@pytest.mark.parametrize(("row", "field", "words"), [
    ("B1,not-an-email,", "email", "not a valid email address"),
    ("B1,anna@@example.com,", "email", "not a valid email address"),
    ("B1,anna@example.com\u200b,", "email", "not a valid email address"),
    ("B1,\"anna@example.com\nBcc: x@evil.example\",", "email", "not a valid email address"),
    ("B1,,12345", "phone", "not a phone number in international form"),
    ("B1,,+7 912 345-67-89 ext. '; DROP TABLE member; --", "phone", "not a phone number in international form"),
    ("B1,,89123456789", "phone", "not a phone number in international form"),
    ("B1,,+1 202 555 01", "phone", "not a valid phone number"),
])
def test_an_invalid_email_or_phone_is_named_by_line_and_field_and_the_good_rows_are_kept(cli, shop, tmp_path, row,
                                                                                        field, words):
    path = tmp_path / "members.csv"
    path.write_text(f"external_id,email,phone\nA1,a1@example.com,+79123456789\n{row}\nC1,c1@example.com,\n", "utf-8")
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 1, r.output
    err = " ".join(r.stderr.split())
    assert f"line 3: {field}: {words}" in err or f"line 4: {field}: {words}" in err, err   # a quoted newline
    assert "(member B1)" in err and "2 created, 0 updated, 1 rejected" in r.stdout
    assert external_ids(shop) == ["A1", "C1"]


@pytest.mark.parametrize(("encoding", "last_row"), [("cp1251", "Z00001,Анна"), ("latin-1", "Z00001,José"),
                                                     ("utf-16", "")])
def test_a_file_that_is_not_utf8_writes_nothing_even_after_thousands_of_good_rows(cli, shop, tmp_path,
                                                                                  encoding, last_row):
    good = "external_id,first_name\n" + "".join(f"A{i:05d},Anna\n" for i in range(1500))   # over a batch of 1,000
    data = good.encode("utf-16") if encoding == "utf-16" else good.encode() + last_row.encode(encoding) + b"\n"
    first_bad = next(i for i, b in enumerate(data) if b >= 0x80)       # 0 for UTF-16: its byte order mark
    path = tmp_path / "members.csv"
    path.write_bytes(data)
    before = counts(shop)
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 1, r.output
    err = " ".join(r.stderr.split())
    assert f"{path}: not UTF-8 text (byte {first_bad}); save the CSV as UTF-8" in err, err
    assert counts(shop) == before        # was: the first 1,000 rows written, then the error


def test_a_utf8_file_from_excel_with_its_byte_order_mark_is_read(cli, shop, tmp_path):
    path = tmp_path / "members.csv"
    path.write_bytes("external_id,first_name\nA1,Анна\n".encode("utf-8-sig"))
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 0, r.output        # was: "the header must name an external_id column"
    assert external_ids(shop) == ["A1"]


@pytest.mark.parametrize(("header", "column"), [
    ("external_id,emial", "emial"),
    ("external_id,email,attributes", "attributes"),
    ("external_id,consent.email", "consent.email"),
    ("external_id,\"name; DROP TABLE member; --\"", "name; DROP TABLE member; --"),
])
def test_a_header_with_an_unknown_column_refuses_the_file_at_line_1_naming_the_column(cli, shop, tmp_path,
                                                                                       header, column):
    path = tmp_path / "members.csv"
    path.write_text(header + "\n" + "".join(f"A{i},x\n" for i in range(3000)), "utf-8")
    before = counts(shop)
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 1, r.output
    err = " ".join(r.stderr.split())
    assert f"line 1: {column}: " in err and "line 2:" not in err     # once, not once per row
    assert "0 created, 0 updated, 1 rejected" in r.stdout
    assert counts(shop) == before


def test_a_value_too_long_for_the_csv_reader_is_one_bad_row_not_a_crash(cli, shop, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text("external_id,first_name\nA1,Anna\nA2," + "x" * 200_000 + "\nA3,Boris\n", "utf-8")
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 1 and r.exception is None or isinstance(r.exception, SystemExit), r.output
    assert "line 3: row: not a CSV row that can be read: field larger than field limit" in " ".join(r.stderr.split())
    assert "2 created, 0 updated, 1 rejected" in r.stdout
    assert external_ids(shop) == ["A1", "A3"]


def test_sql_in_a_row_is_data_stored_as_written(cli, shop, tmp_path):
    path = tmp_path / "members.csv"
    evil = ["' OR 1=1 --", "\"; DROP TABLE member; --", "%", "_", "\\"]
    path.write_text("external_id,first_name,attr.note\n" + "".join(
        f"\"{e.replace(chr(34), chr(34) * 2)}\",\"{e.replace(chr(34), chr(34) * 2)}\",x\n" for e in evil), "utf-8")
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 0, r.output
    assert external_ids(shop) == sorted(evil)
    with shop.connect() as c:
        assert c.exec_driver_sql("SELECT count(*) FROM program").scalar() == 1


def test_a_file_of_bad_rows_keeps_the_first_errors_and_counts_them_all(cli, shop, tmp_path):
    """Each kept error is ~330 bytes: a million bad rows once held ~300 MB of them. Now the first KEEP_ERRORS
    are kept (a long value quoted in one is cut) and ``rejected`` counts every bad row."""
    import io

    from members.service import KEEP_ERRORS, MAX_ERROR_TEXT, import_csv

    bad = KEEP_ERRORS + 500
    text = "external_id,time_zone\nA1,\n" + "".join(f"B{i},Mars/{'x' * 2000}\n" for i in range(bad)) + "C1,\n"
    with shop.connect() as c:
        program_id = c.exec_driver_sql("SELECT id FROM program WHERE key = 'shop'").scalar()
    result = import_csv(engine=shop, program_id=program_id, stream=io.StringIO(text))
    assert (result.created, result.rejected, len(result.errors)) == (2, bad, KEEP_ERRORS)
    assert [e.line for e in result.errors[:2]] == [3, 4] and result.errors[-1].line == KEEP_ERRORS + 2
    assert all(len(e.message) <= MAX_ERROR_TEXT for e in result.errors)

    path = tmp_path / "members.csv"
    path.write_text(text.replace("A1,", "A2,").replace("C1,", "C2,"), "utf-8")
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 1, r.output
    told = " ".join(r.stderr.split())
    assert "line 3: time_zone: unknown time zone 'Mars/xxx" in told and "(member B0)" in told
    assert f"… and {bad - 50} more bad rows (the first 50 are shown)" in told
    assert f"2 created, 0 updated, {bad} rejected" in r.stdout


def test_a_value_that_looks_like_console_markup_is_printed_as_written(cli, shop, tmp_path):
    path = tmp_path / "members.csv"
    path.write_text("external_id,time_zone\nA1,Mars/[/bold]Base[red]\n", "utf-8")
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 1 and (r.exception is None or isinstance(r.exception, SystemExit)), r.exception
    assert "line 2: time_zone: unknown time zone 'Mars/[/bold]Base[red]'" in " ".join(r.stderr.split())
