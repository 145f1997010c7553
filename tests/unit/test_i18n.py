"""templates/i18n.py: plural forms, numbers, money, dates and times per CLDR, in the member's locale and zone.

Expected plural categories are written out from the CLDR plural rules themselves
(https://www.unicode.org/cldr/charts/latest/supplemental/language_plural_rules.html), not asked of
Babel. Formatted strings are the exact characters Babel 2.19 (CLDR 49) produces: its spaces are
no-break spaces, spelled out as escapes so a reader sees which (U+00A0 NBSP, U+202F narrow NBSP).
"""

from __future__ import annotations

import datetime as dt
import decimal
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st
from jinja2 import StrictUndefined, UndefinedError
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from templates import i18n
from templates.i18n import (
    HelperError,
    date,
    datetime,
    money,
    normalize,
    number,
    ordinal,
    percent,
    plural,
    time,
)

NBSP = "\u00a0"         # ru/de/pl group separator and the space before a currency symbol or %
NNBSP = "\u202f"        # narrow NBSP: before "г." in ru dates, before AM/PM in en-US, fr groups

FORMS = {c: f"<{c}:{{n}}>" for c in ("zero", "one", "two", "few", "many", "other")}


def category(locale: str, n) -> str:
    """The category plural() picked, read back from forms that name themselves."""
    return plural(n, locale=locale, **FORMS).split(":")[0][1:]


# --- plural forms against the CLDR rules ------------------------------------------------------

# ru  one:  v = 0 and i % 10 = 1 and i % 100 != 11
#     few:  v = 0 and i % 10 = 2..4 and i % 100 != 12..14
#     many: v = 0 and (i % 10 = 0 or i % 10 = 5..9 or i % 100 = 11..14)
#     other: the rest (every number with visible fraction digits)
RU = {
    "one": [1, 21, 31, 101, 121, 1001],
    "few": [2, 3, 4, 22, 23, 24, 102, 1034],
    "many": [0, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 25, 100, 111, 112, 113, 114, 1000],
    "other": [Decimal("1.5"), 1.5, 0.5, "2.25"],
}
# en  one: i = 1 and v = 0;  other: the rest
EN = {
    "one": [1],
    "other": [0, 2, 5, 11, 21, 101, 1.5, Decimal("0.5")],
}
# pl  one:  i = 1 and v = 0
#     few:  v = 0 and i % 10 = 2..4 and i % 100 != 12..14
#     many: v = 0 and (i != 1 and i % 10 = 0..1 or i % 10 = 5..9 or i % 100 = 12..14)
#     other: the rest
PL = {
    "one": [1],
    "few": [2, 3, 4, 22, 23, 24, 102, 104],
    "many": [0, 5, 6, 10, 11, 12, 13, 14, 20, 21, 25, 101, 111, 112, 114, 1000],
    "other": [1.5, Decimal("2.5")],
}
# ar  zero: n = 0;  one: n = 1;  two: n = 2;  few: n % 100 = 3..10;  many: n % 100 = 11..99;  other: the rest
AR = {
    "zero": [0],
    "one": [1],
    "two": [2],
    "few": [3, 4, 5, 9, 10, 103, 110, 1003],
    "many": [11, 12, 26, 50, 99, 111, 199, 1011],
    "other": [100, 101, 102, 200, 1000, 1.5, Decimal("0.5")],
}
CLDR_TABLE = [(locale, expected, n) for locale, table in (("ru", RU), ("en", EN), ("pl", PL), ("ar", AR))
              for expected, numbers in table.items() for n in numbers]


@pytest.mark.parametrize(("locale", "expected", "n"), CLDR_TABLE, ids=[f"{c[0]}-{c[2]!r}" for c in CLDR_TABLE])
def test_plural_picks_the_category_cldr_gives(locale, expected, n):
    assert category(locale, n) == expected


def cldr_integer_category(locale: str, i: int) -> str:
    """The CLDR rules above for integers (v = 0), as an oracle independent of Babel."""
    if locale == "en":
        return "one" if i == 1 else "other"
    if locale == "ar":
        r = i % 100
        return {0: "zero", 1: "one", 2: "two"}.get(i) or ("few" if 3 <= r <= 10 else "many" if 11 <= r <= 99
                                                           else "other")
    d, h = i % 10, i % 100
    if locale == "ru":
        if d == 1 and h != 11:
            return "one"
        return "few" if 2 <= d <= 4 and not 12 <= h <= 14 else "many"
    if i == 1:  # pl
        return "one"
    return "few" if 2 <= d <= 4 and not 12 <= h <= 14 else "many"


LOCALES = st.sampled_from(["ru", "en", "pl", "ar"])


@given(n=st.integers(min_value=0), locale=LOCALES)
def test_plural_of_any_count_is_one_of_the_given_forms_and_the_cldr_one(n, locale):
    assert category(locale, n) == cldr_integer_category(locale, n)


@given(n=st.integers(min_value=0), locale=LOCALES,
       given_forms=st.sets(st.sampled_from(["zero", "one", "two", "few", "many"])))
def test_plural_never_fails_and_returns_a_provided_form_whichever_are_missing(n, locale, given_forms):
    forms = {c: f"form-{c}" for c in given_forms} | {"other": "form-other"}

    assert plural(n, locale=locale, **forms) in forms.values()


def test_missing_category_falls_back_to_other():
    assert plural(5, one="балл", other="баллов?", locale="ru") == "баллов?"
    assert plural(1, one="балл", other="баллов?", locale="ru") == "балл"


def test_n_in_the_chosen_form_is_the_number_formatted_in_the_locale():
    ru = {"one": "{n} балл", "few": "{n} балла", "many": "{n} баллов", "other": "{n} балла"}

    assert plural(1234, locale="ru", **ru) == f"1{NBSP}234 балла"
    assert plural(1_000_000, locale="ru", **ru) == f"1{NBSP}000{NBSP}000 баллов"
    assert plural(21, locale="ru", **ru) == "21 балл"
    assert plural(1.5, locale="ru", **ru) == "1,5 балла"
    assert plural(1234, one="{n} point", other="{n} points", locale="en-US") == "1,234 points"


def test_plural_follows_the_number_as_shown():
    # CLDR picks by visible digits; number() shows Decimal("1.0") and 1.0001 as "1", so the form is "one"
    ru = {"one": "{n} балл", "few": "{n} балла", "many": "{n} баллов", "other": "{n} балла"}

    assert plural(Decimal("1.0"), locale="ru", **ru) == "1 балл"
    assert plural(1.0001, locale="ru", **ru) == "1 балл"
    assert plural("21", locale="ru", **ru) == "21 балл"


def test_braces_other_than_n_are_left_alone():
    assert plural(2, one="{n} {item}", other="{n} {items} {0}", locale="en") == "2 {items} {0}"


@pytest.mark.parametrize(("n", "expected"), [
    (1, "1st"), (2, "2nd"), (3, "3rd"), (4, "4th"), (11, "11th"), (12, "12th"), (13, "13th"),
    (21, "21st"), (22, "22nd"), (23, "23rd"), (101, "101st"), (111, "111th"), (112, "112th"), (1001, "1,001st"),
])
def test_ordinal_picks_the_english_suffix_cldr_gives(n, expected):
    # en ordinal: one n%10=1 and n%100!=11; two n%10=2 and n%100!=12; few n%10=3 and n%100!=13
    assert ordinal(n, one="{n}st", two="{n}nd", few="{n}rd", other="{n}th", locale="en") == expected


# --- numbers, percents, money -----------------------------------------------------------------


@pytest.mark.parametrize(("value", "locale", "expected"), [
    (1234567.891, "ru", f"1{NBSP}234{NBSP}567,891"),
    (1234567.891, "en-US", "1,234,567.891"),
    (1234567.891, "de", "1.234.567,891"),
    (1234.5, "fr", f"1{NNBSP}234,5"),
    (-1234.5, "ru", f"-1{NBSP}234,5"),
    (Decimal("1234.50"), "en", "1,234.5"),
    ("1234.5", "pl", f"1{NBSP}234,5"),
    (" -1e3 ", "en", "-1,000"),
    (0.1 + 0.2, "en", "0.3"),
    (2.0005, "en", "2"),               # half-even to 3 digits: 2.000
    (10**30, "en", "1,000,000,000,000,000,000,000,000,000,000"),
])
def test_number_in_the_locale(value, locale, expected):
    assert number(value, locale=locale) == expected


def test_number_with_fixed_digits():
    assert number(2.5, 2, locale="de") == "2,50"
    assert number(1234.5678, 0, locale="en") == "1,235"


@pytest.mark.parametrize(("value", "digits", "locale", "expected"), [
    (0.256, None, "en-US", "26%"),
    (0.256, None, "de", f"26{NBSP}%"),
    (0.256, None, "ru", f"26{NBSP}%"),
    (Decimal("0.2555"), 1, "en", "25.6%"),
    (1, None, "en", "100%"),
    (0.125, None, "en", "12%"),        # half-even, CLDR's default rounding
    (0.135, None, "en", "14%"),
])
def test_percent_of_a_fraction(value, digits, locale, expected):
    assert percent(value, digits, locale=locale) == expected


@pytest.mark.parametrize(("value", "currency", "locale", "expected"), [
    # ru: U+00A0 both as the group separator and before the symbol (Babel 2.19 / CLDR 49)
    (1234.5, "RUB", "ru", f"1{NBSP}234,50{NBSP}₽"),
    (1234.5, "USD", "en-US", "$1,234.50"),
    (1234.5, "EUR", "de", f"1.234,50{NBSP}€"),
    (1234.5, "PLN", "pl", f"1{NBSP}234,50{NBSP}zł"),
    (1234.5, "BRL", "pt-BR", f"R${NBSP}1.234,50"),
    (1234.5, "EUR", "ar", f"\u200f1,234.50{NBSP}€"),   # Latin digits, as in dates
    (-1234.5, "USD", "en-US", "-$1,234.50"),
    (Decimal("1234.50"), "RUB", "ru", f"1{NBSP}234,50{NBSP}₽"),
    ("99.9", "usd", "en", "$99.90"),
])
def test_money_in_the_locale_with_cldr_symbol(value, currency, locale, expected):
    assert money(value, currency, locale=locale) == expected


def test_a_symbol_made_of_letters_gets_cldr_currency_spacing():
    # CLDR currencySpacing puts U+00A0 between a letter of the symbol and a digit (Babel alone gives RUB1,234.50)
    assert money(1234.5, "RUB", locale="en-US") == f"RUB{NBSP}1,234.50"
    assert money(-5, "CHF", locale="en") == f"-CHF{NBSP}5.00"
    assert money(5, "CHF", locale="de") == f"5,00{NBSP}CHF"


def test_money_uses_the_currency_digits_unless_told():
    assert money(1234.5, "JPY", locale="en-US") == "¥1,234"      # 0 digits; half-even
    assert money(1234.5, "BHD", locale="en-US") == f"BHD{NBSP}1,234.500"
    assert money(1234.5, "RUB", 0, locale="ru") == f"1{NBSP}234{NBSP}₽"
    assert money(1234.5, "RUB", digits=0, locale="ru") == f"1{NBSP}234{NBSP}₽"


def test_money_rounds_half_even_and_never_shows_negative_zero():
    assert money(2.345, "EUR", locale="en") == "€2.34"
    assert money(2.355, "EUR", locale="en") == "€2.36"
    assert money("-0.001", "USD", locale="en") == "$0.00"


def test_formatting_ignores_the_threads_decimal_context():
    expected = (money(1234567.895, "USD", locale="en"), number(Decimal("12345678901234567890123.5"), locale="en"))

    with decimal.localcontext(decimal.Context(prec=5, rounding=decimal.ROUND_DOWN)):
        assert (money(1234567.895, "USD", locale="en"),
                number(Decimal("12345678901234567890123.5"), locale="en")) == expected
    assert expected == ("$1,234,567.90", "12,345,678,901,234,567,890,123.5")


# --- dates and times --------------------------------------------------------------------------


@pytest.mark.parametrize(("fmt", "locale", "expected"), [
    ("long", "ru", f"1 декабря 2026{NNBSP}г."),
    ("medium", "ru", f"1 дек. 2026{NNBSP}г."),
    ("short", "ru", "01.12.2026"),
    ("full", "ru", f"вторник, 1 декабря 2026{NNBSP}г."),
    ("long", "en-US", "December 1, 2026"),
    ("medium", "en-US", "Dec 1, 2026"),
    ("short", "en-US", "12/1/26"),
    ("dd.MM.yyyy", "en-US", "01.12.2026"),
])
def test_date_in_the_locale(fmt, locale, expected):
    assert date(dt.date(2026, 12, 1), fmt, locale=locale) == expected
    assert date("2026-12-01", fmt, locale=locale) == expected


def test_date_skeleton_puts_the_fields_in_the_locales_order():
    assert date("2026-12-01", skeleton="MMMMd", locale="ru") == "1 декабря"
    assert date("2026-12-01", skeleton="MMMMd", locale="en-US") == "December 1"
    assert date("2026-12-01", skeleton="MMMMd", locale="de") == "1. Dezember"


def test_an_instant_is_shown_on_the_members_own_calendar_day():
    assert date("2026-12-01T02:00:00Z", "long", locale="en-US", time_zone="America/New_York") == "November 30, 2026"
    assert date("2026-12-01T02:00:00Z", "long", locale="en-US", time_zone="Europe/Moscow") == "December 1, 2026"
    # a date alone is a calendar day everywhere
    assert date("2026-12-01", "long", locale="en-US", time_zone="America/New_York") == "December 1, 2026"


def test_utc_instant_in_moscow_and_new_york_summer_time():
    instant = dt.datetime(2026, 7, 1, 12, 30, tzinfo=dt.UTC)

    assert datetime(instant, locale="ru", time_zone="Europe/Moscow") == f"1 июл. 2026{NNBSP}г., 15:30:00"
    assert datetime(instant, "long", locale="en-US", time_zone="America/New_York") == \
        f"July 1, 2026, 8:30:00{NNBSP}AM EDT"
    assert time(instant, "short", locale="en-US", time_zone="America/New_York") == f"8:30{NNBSP}AM"
    assert time(instant, "short", locale="ru", time_zone="Europe/Moscow") == "15:30"


def test_new_york_winter_time_and_the_dst_switch():
    def ny(iso: str) -> str:
        return datetime(iso, "short", locale="en-US", time_zone="America/New_York")

    assert ny("2026-01-15T12:30:00Z") == f"1/15/26, 7:30{NNBSP}AM"                      # EST, UTC-5
    # clocks spring forward at 2:00 on 8 March 2026: one UTC hour apart, two hours apart on the wall
    assert ny("2026-03-08T06:30:00Z") == f"3/8/26, 1:30{NNBSP}AM"
    assert ny("2026-03-08T07:30:00Z") == f"3/8/26, 3:30{NNBSP}AM"
    # Moscow has no DST: the same two instants are an hour apart there too
    assert time("2026-03-08T06:30:00Z", "short", locale="ru", time_zone="Europe/Moscow") == "09:30"
    assert time("2026-03-08T07:30:00Z", "short", locale="ru", time_zone="Europe/Moscow") == "10:30"


@pytest.mark.parametrize("value", [
    "2026-07-01T12:30:00Z",
    "2026-07-01T12:30:00+00:00",
    "2026-07-01T15:30:00+03:00",
    "2026-07-01 12:30:00",                       # naive: UTC, as storage keeps it
    dt.datetime(2026, 7, 1, 12, 30),
    dt.datetime(2026, 7, 1, 8, 30, tzinfo=dt.timezone(dt.timedelta(hours=-4))),
])
def test_iso_strings_and_datetimes_name_the_same_instant(value):
    assert datetime(value, "short", locale="ru", time_zone="Europe/Moscow") == "01.07.2026, 15:30"


def test_time_of_day_is_shown_as_is():
    assert time("10:30", "short", locale="ru", time_zone="America/New_York") == "10:30"
    assert time(dt.time(10, 30), "short", locale="en-US") == f"10:30{NNBSP}AM"


def test_unknown_time_zone_falls_back_to_utc():
    assert time("2026-07-01T12:30:00Z", "short", locale="ru", time_zone="Mars/Olympus_Mons") == "12:30"
    assert time("2026-07-01T12:30:00Z", "short", locale="ru", time_zone="../../etc/passwd") == "12:30"
    assert time("2026-07-01T12:30:00Z", "short", locale="ru", time_zone=None) == "12:30"


# --- locales ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("tag", "expected"), [
    ("ru", "ru"), ("en-US", "en_US"), ("pt-BR", "pt_BR"), ("pt_br", "pt_BR"), ("RU-ru", "ru_RU"),
    ("zh-TW", "zh_Hant_TW"), ("sr-Latn-RS", "sr_Latn_RS"), ("en-US-u-ca-gregory", "en_US"),
    ("ru_RU.UTF-8", "ru_RU"), ("de-XX", "de"), ("ar", "ar"),
    ("xx", "en"), ("klingon", "en"), ("", "en"), ("und", "en"), ("root", "en"), ("x-private", "en"),
    (None, "en"), (42, "en"),
])
def test_normalize_maps_bcp47_to_babel_and_falls_back_to_english(tag, expected):
    assert normalize(tag) == expected


def test_unknown_locale_formats_as_english():
    assert money(1234.5, "USD", locale="tlh") == "$1,234.50"
    assert plural(1, one="{n} point", other="{n} points", locale="xx-YY") == "1 point"
    assert plural(2, one="{n} point", other="{n} points", locale=None) == "2 points"
    assert date("2026-12-01", "long", locale="zz") == "December 1, 2026"


# --- wrong arguments --------------------------------------------------------------------------


@pytest.mark.parametrize(("call", "message"), [
    (lambda: money([1], "RUB"), r"^money: .*got list$"),
    (lambda: money(True, "RUB"), r"^money: .*got bool$"),
    (lambda: number(None), r"^number: .*got NoneType$"),
    (lambda: number("anna@example.com"), r"^number: .*str that is not a decimal number$"),
    (lambda: number(float("nan")), r"^number: .*not finite$"),
    (lambda: percent(Decimal("Infinity")), r"^percent: .*not finite$"),
    (lambda: plural("five", one="x", other="y"), r"^plural: "),
    (lambda: plural(1, one="x"), r"^plural: give other="),
    (lambda: ordinal({}, other="x"), r"^ordinal: .*got dict$"),
    (lambda: money(1, "RUBLE"), r"^money: currency must be .*got str$"),
    (lambda: money(1, 643), r"^money: currency must be .*got int$"),
    (lambda: money(1, "EUR", "ru"), r"^money: digits must be .*locale="),
    (lambda: number(1, 2.5), r"^number: digits must be .*got float$"),
    (lambda: date(20261201), r"^date: .*got int$"),
    (lambda: date("1 December"), r"^date: .*str that is not"),
    (lambda: date("10:30"), r"^date: got a time of day"),
    (lambda: time("2026-12-01"), r"^time: got a date without a time$"),
    (lambda: datetime(dt.date(2026, 12, 1)), r"^datetime: "),
    (lambda: date("2026-12-01", 5), r"^date: format must be"),
    (lambda: date("2026-12-01", skeleton="d MMM"), r"^date: skeleton must be"),
])
def test_wrong_argument_is_a_value_error_naming_the_helper(call, message):
    with pytest.raises(ValueError, match=message) as info:
        call()

    assert isinstance(info.value, HelperError)
    assert "anna" not in str(info.value)


def test_too_large_a_number_is_refused_not_rendered_for_ever():
    with pytest.raises(HelperError, match="^number: number too large"):
        number("1e100000")


# --- inside a sandboxed Jinja environment -----------------------------------------------------


def sandbox(autoescape: bool = False) -> SandboxedEnvironment:
    env = SandboxedEnvironment(autoescape=autoescape, undefined=StrictUndefined)
    env.globals.update(i18n.helpers())
    env.filters.update(i18n.filters())
    return env


MESSAGE = ('{{ plural(points, one="{n} балл", few="{n} балла", many="{n} баллов", other="{n} балла") }} '
           'на {{ money(amount, currency) }} до {{ expires_at|date("long") }}, {{ expires_at|time("short") }}; '
           '{{ share|percent }}')


def test_helpers_render_in_the_members_locale_and_zone():
    text = sandbox().from_string(MESSAGE).render(
        locale="ru", time_zone="Europe/Moscow", points=1234, amount=Decimal("1234.50"), currency="RUB",
        expires_at="2026-11-30T21:30:00Z", share=0.1)

    assert text == (f"1{NBSP}234 балла на 1{NBSP}234,50{NBSP}₽ до 1 декабря 2026{NNBSP}г., 00:30; 10{NBSP}%")


def test_the_same_template_in_english_and_new_york():
    env = sandbox()
    source = ('{{ points|plural(one="{n} point", other="{n} points") }}, {{ money(amount, "USD") }}, '
              '{{ datetime(at, "short") }}, {{ 22|ordinal(one="{n}st", two="{n}nd", few="{n}rd", other="{n}th") }}')

    text = env.from_string(source).render(locale="en-US", time_zone="America/New_York", points=1, amount=1234.5,
                                          at="2026-07-01T12:30:00Z")

    assert text == f"1 point, $1,234.50, 7/1/26, 8:30{NNBSP}AM, 22nd"


def test_context_without_locale_or_zone_renders_english_in_utc():
    text = sandbox().from_string('{{ money(5, "EUR") }} {{ time("2026-07-01T12:30:00Z", "short") }}').render()

    assert text == f"€5.00 12:30{NNBSP}PM"


def test_a_template_may_override_the_locale():
    text = sandbox().from_string('{{ money(1234.5, "EUR", locale="de") }}').render(locale="ru")

    assert text == f"1.234,50{NBSP}€"


def test_output_is_escaped_in_an_html_environment():
    text = sandbox(autoescape=True).from_string('{{ plural(n, one="<b>{n}</b> point", other="{n} points") }}').render(
        locale="en", n=1)

    assert text == "&lt;b&gt;1&lt;/b&gt; point"


def test_undefined_variable_stays_jinjas_undefined_error():
    with pytest.raises(UndefinedError, match="'amount' is undefined"):
        sandbox().from_string('{{ money(amount, "RUB") }}').render(locale="ru")


def test_a_wrong_call_in_a_template_is_a_helper_error():
    with pytest.raises(HelperError, match=r"^plural: .*unexpected keyword argument 'singular'"):
        sandbox().from_string('{{ plural(1, singular="x", other="y") }}').render(locale="en")
    with pytest.raises(HelperError, match=r"^money: .*missing 1 required positional argument: 'currency'"):
        sandbox().from_string("{{ money(1) }}").render(locale="en")
    with pytest.raises(HelperError, match=r"^money: expected a number"):
        sandbox().from_string('{{ money(x, "RUB") }}').render(locale="ru", x="n/a")


def test_helpers_do_not_open_the_sandbox():
    with pytest.raises(SecurityError):
        sandbox().from_string("{{ money.__globals__ }}").render(locale="en")


def test_helpers_and_filters_have_the_documented_names():
    names = {"plural", "ordinal", "number", "percent", "money", "date", "time", "datetime"}

    assert set(i18n.helpers()) == names
    assert set(i18n.filters()) == names
    for name in names:
        assert f"``{name}(" in i18n.__doc__
