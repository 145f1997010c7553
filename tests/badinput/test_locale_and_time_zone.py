"""Unknown time zones and locales (and the other fields of a program) wherever they come in: a new program
(CLI), a member's row in a CSV (CLI), a preview's locale (API). The member API's own cases are in
tests/api/test_api.py, the spec's in test_campaign_spec.py."""

from __future__ import annotations

import pytest

from storage.tables import Role
from tests.badinput.conftest import counts


@pytest.mark.parametrize(("options", "expected"), [
    (("--time-zone", "Mars/Base"), "time_zone: unknown time zone 'Mars/Base'"),
    (("--time-zone", "../../etc/passwd"), "time_zone: unknown time zone '../../etc/passwd'"),
    (("--time-zone", "Europe/Moscow "), "time_zone: unknown time zone 'Europe/Moscow '"),
    (("--time-zone", "Mars/[/bold]"), "time_zone: unknown time zone 'Mars/[/bold]'"),   # was a MarkupError
    (("--locale", "zz-QQ"), "locale: unknown locale 'zz-QQ'"),
    (("--locale", "'; DROP TABLE program; --"), "locale: unknown locale"),
    (("--currency", "euro"), "currency: 'euro' is not an ISO 4217 currency code"),
    (("--currency", "ZZZ"), "currency: 'ZZZ' is not an ISO 4217 currency code"),
])
def test_cli_refuses_a_program_with_a_bad_field_naming_it_and_creates_nothing(cli, engine, options, expected):
    before = counts(engine)
    r = cli("programs", "create", "cafe", "--name", "Cafe", *options)
    assert r.exit_code == 2, r.output         # was 0: the program was created with it
    assert expected in " ".join(r.stderr.split())
    assert counts(engine) == before


def test_cli_refuses_a_program_key_that_is_not_a_slug_and_names_every_bad_field(cli, engine):
    before = counts(engine)
    r = cli("programs", "create", "Cafe & Co", "--name", " ", "--time-zone", "Nowhere")
    assert r.exit_code == 2, r.output
    err = " ".join(r.stderr.split())
    assert "key: 'Cafe & Co': use a-z, 0-9, _ and -" in err and "name: give a name" in err
    assert "time_zone: unknown time zone 'Nowhere'" in err
    assert counts(engine) == before


def test_cli_keeps_a_good_program_and_writes_its_locale_as_members_have_it(cli, engine):
    r = cli("programs", "create", "cafe", "--name", "Cafe", "--locale", "ru_RU", "--time-zone", "Europe/Moscow",
            "--currency", "RUB")
    assert r.exit_code == 0, r.output
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT default_locale, time_zone, currency FROM program WHERE key = 'cafe'"
                                 ).one() == ("ru-RU", "Europe/Moscow", "RUB")


def test_cli_import_names_the_line_and_field_of_each_unknown_time_zone_or_locale(cli, engine, tmp_path):
    cli("programs", "create", "shop", "--name", "Shop")
    path = tmp_path / "members.csv"
    path.write_text("external_id,locale,time_zone\n"
                    "A1,ru,Europe/Moscow\n"
                    "A2,ru,Mars/Base\n"
                    "A3,zz-QQ,UTC\n"
                    "A4,en,Europe/../../etc/passwd\n", "utf-8")
    r = cli("members", "import", path, "-p", "shop")
    assert r.exit_code == 1, r.output
    err = " ".join(r.stderr.split())
    assert "line 3: time_zone: unknown time zone 'Mars/Base'" in err and "(member A2)" in err
    assert "line 4: locale: unknown locale 'zz-QQ'" in err
    assert "line 5: time_zone: unknown time zone 'Europe/../../etc/passwd'" in err
    assert "1 created, 0 updated, 3 rejected" in r.stdout          # good rows are kept, as documented
    with engine.connect() as c:
        assert c.exec_driver_sql("SELECT external_id FROM member").scalars().all() == ["A1"]


@pytest.mark.parametrize("locale", ["zz-QQ", "../../etc/passwd", "english", "en-XX"])
def test_a_preview_in_a_locale_cldr_does_not_know_is_422_naming_locale(api, locale):
    r = api.client.get("/api/v1/templates/double_points/preview", headers=api.auth(Role.marketer),
                       params={"program": "shop", "member": "M000001", "locale": locale})
    assert r.status_code == 422, r.text       # was 200, silently in the template's default locale
    [problem] = r.json()["problems"]
    assert problem["field"] == "locale" and "unknown locale" in problem["message"]


def test_a_preview_in_a_known_locale_the_template_lacks_falls_back_as_a_send_would(api):
    r = api.client.get("/api/v1/templates/double_points/preview", headers=api.auth(Role.marketer),
                       params={"program": "shop", "member": "M000001", "locale": "de_AT"})
    assert r.status_code == 200 and r.json()["locale"] == "en"


def test_cli_prints_a_program_name_that_looks_like_console_markup_as_written(cli, engine):
    r = cli("programs", "create", "cafe", "--name", "Caf\u00e9 [/bold] & [red]Co")
    assert r.exit_code == 0 and r.exception is None, r.output      # was a MarkupError after the program was stored
    assert "program 'cafe' (Caf\u00e9 [/bold] & [red]Co)" in r.stdout
