"""Babel-backed template helpers for any CLDR language: plural forms, numbers, money, dates, times.

Every helper reads the member's ``locale`` (a BCP 47 tag: ``ru``, ``en-US``, ``pt-BR``, ``ar``) and
``time_zone`` (an IANA name; UTC when absent) from the Jinja render context, so a template names only
what it shows. Install them once per environment, pass both per render::

    env.globals.update(i18n.helpers())
    env.filters.update(i18n.filters())
    template.render(locale="ru", time_zone="Europe/Moscow", **data)

Examples (the blanks in ru/de/pl/fr output are CLDR's no-break spaces: U+00A0 in ru numbers and
money, U+202F before ru "г." and before en "AM"/"PM", U+202F in fr numbers)::

    {{ plural(n, one="{n} балл", few="{n} балла", many="{n} баллов", other="{n} балла") }}
                                          ru, n=5 → 5 баллов     n=1234 → 1 234 балла
    {{ points|plural(one="{n} point", other="{n} points") }}          en, 1 → 1 point
    {{ ordinal(n, one="{n}st", two="{n}nd", few="{n}rd", other="{n}th") }}  en, 22 → 22nd
    {{ number(1234567.891) }}            ru → 1 234 567,891      en → 1,234,567.891
    {{ number(2.5, 2) }}                 de → 2,50
    {{ percent(0.256) }}                 en-US → 26%             de → 26 %
    {{ money(1234.5, "RUB") }}           ru → 1 234,50 ₽         en-US → RUB 1,234.50
    {{ money(1234.5, "USD") }}           en-US → $1,234.50
    {{ amount|money("EUR") }}            de → 1.234,50 €         (amount=1234.5)
    {{ date("2026-12-01", "long") }}     ru → 1 декабря 2026 г.  en-US → December 1, 2026
    {{ date(expires_on, skeleton="MMMMd") }}   ru → 1 декабря    en-US → December 1
    {{ time("2026-07-01T12:30:00Z", "short") }}      en-US, America/New_York → 8:30 AM
    {{ datetime("2026-07-01T12:30:00Z") }}   ru, Europe/Moscow → 1 июл. 2026 г., 15:30:00

The helpers (``digits`` is a count of fraction digits; ``format`` is ``short``, ``medium``,
``long``, ``full`` or an LDML pattern such as ``"dd.MM.yyyy"``; ``skeleton``, e.g. ``"MMMMd"``,
``"yMMM"``, ``"Hm"``, asks for those fields in the locale's own best order and replaces ``format``):

- ``plural(n, *, zero, one, two, few, many, other)``: the form CLDR's cardinal plural rules pick
  for ``n`` as ``number(n)`` shows it (``Decimal("1.0")`` is shown "1", so it is "one"; 1.5 is
  "other" in ru); a category not given falls back to ``other``, which is required; ``{n}`` in the
  chosen text becomes ``number(n)`` (plain ``str.replace``: other braces stay as they are).
- ``ordinal(n, *, zero, one, two, few, many, other)``: the same with CLDR's ordinal rules. Babel
  has no spelled-out ordinals ("1st", "1-й"), so the forms say how the number is dressed.
- ``number(x, digits=None)``: the locale's decimal pattern (up to 3 fraction digits by default).
- ``percent(x, digits=None)``: ``x`` is a fraction: 0.25 → 25%.
- ``money(x, currency, digits=None)``: the locale's currency pattern and symbol for an ISO 4217
  code, with the currency's own fraction digits (JPY 0, BHD 3) unless ``digits`` is given. CLDR's
  currency spacing, which Babel leaves out, is applied: ``RUB 1,234.50`` in en, not ``RUB1,234.50``.
- ``date(d, format="medium", *, skeleton=None)``, ``time(t, ...)``, ``datetime(dt, ...)``: a
  ``date``, ``time``, ``datetime`` or ISO 8601 string (event payloads are JSON: ``"2026-12-01"``,
  ``"2026-07-01T12:30:00Z"``, ``"10:30"``). An instant (a datetime) is shown in the member's time
  zone, a naive one taken to be UTC (what storage keeps); a bare date or time of day is shown as is.

Numbers may be ``int``, ``float`` (by its shortest repr: 0.1 is 0.1), ``Decimal`` or a numeric
string (``"1234.50"``, ``"-1e3"``). Rounding is half-even (CLDR's and ICU's default) whatever the
thread's decimal context, and never shows "-0.00". Digits are Latin in every locale (Babel's default;
Babel's dates know no other), so one message never mixes digit systems.

Fallbacks, so that member data never fails a render:
- a locale CLDR does not know loses subtags until CLDR knows it (``de-XX`` → ``de``), else it is
  ``en``, as are ``None``, ``""``, ``und``, ``root`` and non-strings (:func:`normalize`);
- an unknown or empty time zone is UTC.
Template mistakes fail whatever the member, so a preview catches them: a wrong argument type, a
non-finite or absurdly large number, a bad currency code, ``digits`` or format, a plural without
``other`` raise :class:`HelperError` (a ``ValueError``) naming the helper and the type, never the
value (it may be personal data). An undefined variable passed in raises Jinja's ``UndefinedError``.

The same functions are importable with ``locale=``/``time_zone=`` keywords for Python code that
builds text without a template; a template may pass them too, to override the context
(``money(x, "EUR", locale="de")``). A context variable shadows a global of the same name: a
payload key called ``date`` hides the ``date`` helper (the filter form ``|date`` still works).

Speed: Locale objects, time zones, number and currency patterns and plural categories are cached
(``functools.lru_cache``), so a ``money()`` or ``plural()`` call costs a few microseconds.
"""

from __future__ import annotations

import copy
import datetime as _dt
import decimal
import re
import unicodedata
from collections.abc import Callable
from decimal import Decimal
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from babel import Locale, UnknownLocaleError
from babel.dates import format_date, format_datetime, format_time, match_skeleton
from babel.numbers import NumberPattern, get_currency_precision, get_currency_symbol
from jinja2 import Undefined, pass_context

__all__ = ["HelperError", "date", "datetime", "filters", "helpers", "money", "normalize", "number",
           "ordinal", "percent", "plural", "time"]

FALLBACK_LOCALE = "en"
_UTC = _dt.UTC
# Numbers up to 10**_MAX_DIGITS are shown in full; rounding never depends on the thread's context.
_MAX_DIGITS = 1000
_DECIMAL = decimal.Context(prec=_MAX_DIGITS + 100, rounding=decimal.ROUND_HALF_EVEN,
                           Emax=_MAX_DIGITS + 100, Emin=-_MAX_DIGITS - 100)
_QUANTUM = tuple(Decimal(1).scaleb(-d) for d in range(21))
_NUMERIC = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?")
_CURRENCY = re.compile(r"[A-Z]{3}")


class HelperError(ValueError):
    """A template called a helper with an argument it cannot use: names the helper and the type."""


# --- locale, zone, patterns (cached) ----------------------------------------------------------


def normalize(locale: Any) -> str:
    """BCP 47 tag → Babel locale identifier: ``pt-BR`` → ``pt_BR``, ``zh-TW`` → ``zh_Hant_TW``.

    Case, ``_`` or ``-``, BCP 47 extensions (``-u-ca-gregory``, ``-x-...``) and POSIX suffixes
    (``.UTF-8``, ``@euro``) are all accepted. An unknown tag loses subtags from the end until CLDR
    knows it (``de-XX`` → ``de``); failing that, and for ``None``, ``""``, ``und``, ``root`` or a
    non-string, the result is ``"en"``. Never raises.
    """
    if isinstance(locale, Locale):
        return str(locale)
    if not isinstance(locale, str):
        return FALLBACK_LOCALE
    return _normalize(locale)


@lru_cache(maxsize=1024)
def _normalize(tag: str) -> str:
    tag = re.split(r"[.@]", tag.strip(), maxsplit=1)[0].replace("_", "-")
    subtags: list[str] = []
    for part in tag.split("-"):
        if len(part) <= 1:  # a BCP 47 singleton: extensions and private use follow
            break
        subtags.append(part)
    while subtags:
        if subtags[0].lower() in ("und", "root"):
            break
        try:
            return str(Locale.parse("_".join(subtags)))
        except (UnknownLocaleError, ValueError, TypeError):
            subtags.pop()
    return FALLBACK_LOCALE


@lru_cache(maxsize=1024)
def _locale(identifier: str) -> Locale:
    return Locale.parse(identifier)


def _zone(time_zone: Any) -> _dt.tzinfo:
    if isinstance(time_zone, _dt.tzinfo):
        return time_zone
    if not isinstance(time_zone, str) or not time_zone.strip():
        return _UTC
    return _named_zone(time_zone.strip())


@lru_cache(maxsize=512)
def _named_zone(name: str) -> _dt.tzinfo:
    try:
        return ZoneInfo(name)
    except (KeyError, ValueError, OSError):  # ZoneInfoNotFoundError is a KeyError; "../x" a ValueError
        return _UTC


@lru_cache(maxsize=4096)
def _pattern(identifier: str, kind: str, digits: int | None) -> NumberPattern:
    loc = _locale(identifier)
    if kind == "currency":
        base = loc.currency_formats["standard"]
    elif kind == "percent":
        base = loc.percent_formats[None]
    else:
        base = loc.decimal_formats[None]
    if digits is None:
        return base
    pattern = copy.copy(base)
    pattern.frac_prec = (digits, digits)
    return pattern


@lru_cache(maxsize=4096)
def _money_pattern(identifier: str, code: str, digits: int | None) -> NumberPattern:
    """The locale's currency pattern with ``code``'s symbol and fraction digits built in.

    Babel leaves out CLDR's currency spacing (root ``currencySpacing``: a letter of the symbol
    next to a digit gets U+00A0 between them), so ``RUB1,234.50`` in en: it is added here,
    giving ``RUB 1,234.50`` as ICU does, while ``$1,234.50`` and ``1 234,50 ₽`` stay as they are.
    """
    pattern = copy.copy(_pattern(identifier, "currency", None))
    symbol = get_currency_symbol(code, _locale(identifier))
    fraction = get_currency_precision(code) if digits is None else digits
    pattern.frac_prec = (fraction, fraction)
    if "¤¤" not in pattern.pattern and symbol:
        before = "\xa0" if _letterlike(symbol[-1]) else ""
        after = "\xa0" if _letterlike(symbol[0]) else ""
        pattern.prefix = tuple(_bake(p, symbol, before, at_end=True) for p in pattern.prefix)
        pattern.suffix = tuple(_bake(s, symbol, after, at_end=False) for s in pattern.suffix)
    return pattern


def _letterlike(char: str) -> bool:
    return unicodedata.category(char)[0] not in "SZ"  # CLDR's currencyMatch [[:^S:]&[:^Z:]]


def _bake(affix: str, symbol: str, space: str, *, at_end: bool) -> str:
    if at_end and affix.endswith("¤"):
        return affix[:-1].replace("¤", symbol) + symbol + space
    if not at_end and affix.startswith("¤"):
        return space + symbol + affix[1:].replace("¤", symbol)
    return affix.replace("¤", symbol)


@lru_cache(maxsize=65536)
def _category(identifier: str, ordinal: bool, n: int | str) -> str:
    rule = _locale(identifier).ordinal_form if ordinal else _locale(identifier).plural_form
    return rule(n if isinstance(n, int) else Decimal(n))


# --- argument checks --------------------------------------------------------------------------


def _type(value: Any) -> str:
    return type(value).__name__


def _fail_if_undefined(value: Any) -> None:
    if isinstance(value, Undefined):
        value._fail_with_undefined_error()  # raises Jinja's UndefinedError naming the variable


def _number(helper: str, value: Any) -> int | Decimal:
    _fail_if_undefined(value)
    if isinstance(value, bool):
        raise HelperError(f"{helper}: expected a number, got bool")
    if isinstance(value, int):
        if value.bit_length() > 3 * _MAX_DIGITS:
            raise HelperError(f"{helper}: number too large to show, got int")
        return value
    if isinstance(value, float):
        value = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if not _NUMERIC.fullmatch(text):
            raise HelperError(f"{helper}: expected a number, got a str that is not a decimal number")
        value = Decimal(text)
    elif not isinstance(value, Decimal):
        raise HelperError(f"{helper}: expected a number (int, float, Decimal or numeric str), got {_type(value)}")
    if not value.is_finite():
        raise HelperError(f"{helper}: expected a finite number, got {_type(value)} that is not finite")
    if value.adjusted() >= _MAX_DIGITS:
        raise HelperError(f"{helper}: number too large to show, got {_type(value)}")
    return value


def _digits(helper: str, digits: Any) -> int | None:
    _fail_if_undefined(digits)
    if digits is None:
        return None
    if isinstance(digits, int) and not isinstance(digits, bool) and 0 <= digits <= 20:
        return digits
    hint = " (pass a locale as locale=...)" if isinstance(digits, str) else ""
    raise HelperError(f"{helper}: digits must be an int from 0 to 20, got {_type(digits)}{hint}")


def _currency(code: Any) -> str:
    _fail_if_undefined(code)
    if isinstance(code, str) and _CURRENCY.fullmatch(upper := code.strip().upper()):
        return upper
    raise HelperError(f"money: currency must be a 3-letter ISO 4217 code such as 'EUR', got {_type(code)}")


def _round(value: int | Decimal, digits: int, scale: int = 0) -> Decimal:
    """``value`` rounded half-even to what ``digits`` shows (after a pattern's ``scale``: % is 2)."""
    shown = Decimal(value).scaleb(scale, _DECIMAL).quantize(_QUANTUM[digits], context=_DECIMAL)
    shown = shown.scaleb(-scale, _DECIMAL) if scale else shown
    return shown.copy_abs() if not shown else shown  # no "-0.00"


def _apply(pattern: NumberPattern, loc: Locale, value: int | Decimal, **kwargs: Any) -> str:
    with decimal.localcontext(_DECIMAL):  # Babel normalizes and quantizes in the thread's context
        return pattern.apply(value, loc, **kwargs)


# --- numbers ----------------------------------------------------------------------------------


def _shown(value: int | Decimal, pattern: NumberPattern) -> int | Decimal:
    """The number as the decimal pattern prints it, with exactly its visible fraction digits."""
    if isinstance(value, int):
        return value
    low, high = pattern.frac_prec
    whole, _, frac = f"{_round(value, high):f}".partition(".")
    frac = frac.rstrip("0").ljust(low, "0")
    return Decimal(f"{whole}.{frac}") if frac else int(whole)


def number(value: Any, digits: Any = None, *, locale: Any = None) -> str:
    """``1234567.891`` → ``1,234,567.891`` (en), ``1 234 567,891`` (ru); ``digits`` fixes the fraction."""
    fixed = _digits("number", digits)
    identifier = normalize(locale)
    pattern = _pattern(identifier, "decimal", fixed)
    shown = _shown(_number("number", value), pattern)
    return _apply(pattern, _locale(identifier), shown)


def percent(value: Any, digits: Any = None, *, locale: Any = None) -> str:
    """A fraction as a percentage: ``0.256`` → ``26%`` (en), ``26 %`` (de, ru)."""
    fixed = _digits("percent", digits)
    identifier = normalize(locale)
    pattern = _pattern(identifier, "percent", fixed)
    shown = _round(_number("percent", value), pattern.frac_prec[1], pattern.scale)
    return _apply(pattern, _locale(identifier), shown)


def money(value: Any, currency: Any, digits: Any = None, *, locale: Any = None) -> str:
    """``money(1234.5, "RUB")`` → ``1 234,50 ₽`` (ru), ``RUB 1,234.50`` (en-US); symbol and layout per CLDR."""
    fixed = _digits("money", digits)
    code = _currency(currency)
    amount = _number("money", value)
    identifier = normalize(locale)
    pattern = _money_pattern(identifier, code, fixed)
    shown = _round(amount, pattern.frac_prec[1])
    return _apply(pattern, _locale(identifier), shown, currency=code, currency_digits=False)


# --- plural and ordinal forms ---------------------------------------------------------------


def _forms(helper: str, n: Any, forms: dict[str, Any], locale: Any, *, ordinal: bool) -> Any:
    other = forms.get("other")
    _fail_if_undefined(other)
    if other is None:
        raise HelperError(f"{helper}: give other=, the form every language falls back to")
    identifier = normalize(locale)
    pattern = _pattern(identifier, "decimal", None)
    shown = _shown(_number(helper, n), pattern)
    category = _category(identifier, ordinal, shown if isinstance(shown, int) else str(shown))
    text = forms.get(category)
    if text is None:
        text = other
    _fail_if_undefined(text)
    if not isinstance(text, str):
        raise HelperError(f"{helper}: the {category!r} form must be a str, got {_type(text)}")
    if "{n}" in text:
        text = text.replace("{n}", _apply(pattern, _locale(identifier), shown))
    return text


def plural(n: Any, *, zero: Any = None, one: Any = None, two: Any = None, few: Any = None,
           many: Any = None, other: Any = None, locale: Any = None) -> str:
    """The text CLDR's cardinal rules pick for ``n``; ``{n}`` in it becomes the formatted number.

    ``plural(5, one="{n} балл", few="{n} балла", many="{n} баллов", other="{n} балла", locale="ru")``
    → ``5 баллов``. A category the locale uses but the call does not give falls back to ``other``.
    """
    forms = {"zero": zero, "one": one, "two": two, "few": few, "many": many, "other": other}
    return _forms("plural", n, forms, locale, ordinal=False)


def ordinal(n: Any, *, zero: Any = None, one: Any = None, two: Any = None, few: Any = None,
            many: Any = None, other: Any = None, locale: Any = None) -> str:
    """The text CLDR's ordinal rules pick for ``n``: ``ordinal(22, one="{n}st", two="{n}nd",
    few="{n}rd", other="{n}th", locale="en")`` → ``22nd``."""
    forms = {"zero": zero, "one": one, "two": two, "few": few, "many": many, "other": other}
    return _forms("ordinal", n, forms, locale, ordinal=True)


# --- dates and times --------------------------------------------------------------------------


def _parse_iso(helper: str, text: str) -> _dt.date | _dt.time | _dt.datetime:
    text = text.strip()
    for parse in (_dt.date.fromisoformat, _dt.datetime.fromisoformat, _dt.time.fromisoformat):
        try:
            return parse(text)
        except ValueError:
            continue
    raise HelperError(f"{helper}: expected an ISO 8601 date or time, got a str that is not one")


def _moment(helper: str, value: Any, time_zone: Any) -> _dt.date | _dt.time | _dt.datetime:
    """A date or a time of day as is; an instant (datetime, naive = UTC) in the member's zone."""
    _fail_if_undefined(value)
    if isinstance(value, str):
        value = _parse_iso(helper, value)
    if isinstance(value, _dt.datetime):
        aware = value if value.tzinfo is not None else value.replace(tzinfo=_UTC)
        return aware.astimezone(_zone(time_zone))
    if isinstance(value, (_dt.date, _dt.time)):
        return value
    raise HelperError(f"{helper}: expected a date, time, datetime or ISO 8601 str, got {_type(value)}")


def _format(helper: str, format: Any, skeleton: Any) -> tuple[str, str | None]:
    _fail_if_undefined(format)
    _fail_if_undefined(skeleton)
    if skeleton is not None and not (isinstance(skeleton, str) and skeleton.isalpha()):
        raise HelperError(f"{helper}: skeleton must be letters such as 'MMMMd', got {_type(skeleton)}")
    if not isinstance(format, str) or not format:
        raise HelperError(f"{helper}: format must be short, medium, long, full or a pattern, got {_type(format)}")
    return format, skeleton


@lru_cache(maxsize=1024)
def _skeleton_pattern(identifier: str, skeleton: str) -> str:
    skeletons = _locale(identifier).datetime_skeletons
    best = skeleton if skeleton in skeletons else match_skeleton(skeleton, skeletons)
    if best is None:
        return skeleton  # no close match: the skeleton's letters are a usable pattern
    return skeletons[best]


def date(value: Any, format: Any = "medium", *, skeleton: Any = None, locale: Any = None,
         time_zone: Any = None) -> str:
    """``date("2026-12-01", "long")`` → ``1 декабря 2026 г.`` (ru), ``December 1, 2026`` (en-US)."""
    format, skeleton = _format("date", format, skeleton)
    moment = _moment("date", value, time_zone)
    if isinstance(moment, _dt.datetime):
        moment = moment.date()
    elif isinstance(moment, _dt.time):
        raise HelperError("date: got a time of day without a date")
    identifier = normalize(locale)
    if skeleton:
        format = _skeleton_pattern(identifier, skeleton)
    return _babel("date", format_date, moment, format, identifier)


def time(value: Any, format: Any = "medium", *, skeleton: Any = None, locale: Any = None,
         time_zone: Any = None) -> str:
    """``time("2026-07-01T12:30:00Z", "short")`` → ``8:30 AM`` (en-US, America/New_York)."""
    format, skeleton = _format("time", format, skeleton)
    moment = _moment("time", value, time_zone)
    if not isinstance(moment, (_dt.datetime, _dt.time)):
        raise HelperError("time: got a date without a time")
    identifier = normalize(locale)
    if skeleton:
        format = _skeleton_pattern(identifier, skeleton)
    return _babel("time", format_time, moment, format, identifier)


def datetime(value: Any, format: Any = "medium", *, skeleton: Any = None, locale: Any = None,
             time_zone: Any = None) -> str:
    """An instant in the member's zone: ``1 июл. 2026 г., 15:30:00`` (ru, Europe/Moscow)."""
    format, skeleton = _format("datetime", format, skeleton)
    moment = _moment("datetime", value, time_zone)
    if not isinstance(moment, _dt.datetime):
        raise HelperError("datetime: expected a date and a time, got only one of them")
    identifier = normalize(locale)
    if skeleton:
        format = _skeleton_pattern(identifier, skeleton)
    return _babel("datetime", format_datetime, moment, format, identifier)


def _babel(helper: str, formatter: Callable[..., str], moment: Any, format: str, identifier: str) -> str:
    try:
        return formatter(moment, format, locale=_locale(identifier))
    except (ValueError, KeyError, TypeError) as exc:  # an LDML pattern Babel cannot read
        raise HelperError(f"{helper}: cannot use this format ({type(exc).__name__})") from None


# --- Jinja ------------------------------------------------------------------------------------


def _in_context(fn: Callable[..., str], *, zoned: bool = False) -> Callable[..., str]:
    """``fn`` as a Jinja global/filter that reads ``locale`` (and ``time_zone``) from the context."""

    @pass_context
    def helper(context: Any, *args: Any, **kwargs: Any) -> str:
        if "locale" not in kwargs:
            kwargs["locale"] = context.get("locale")
        if zoned and "time_zone" not in kwargs:
            kwargs["time_zone"] = context.get("time_zone")
        try:
            return fn(*args, **kwargs)
        except TypeError as exc:
            if exc.__traceback__ is None or exc.__traceback__.tb_next is not None:
                raise  # raised inside fn: a bug of ours, not a call the template got wrong
            raise HelperError(f"{fn.__name__}: {exc}") from None  # names arguments, never values

    helper.__name__ = helper.__qualname__ = fn.__name__
    helper.__doc__ = fn.__doc__
    return helper


_HELPERS: dict[str, Callable[..., str]] = {
    "plural": _in_context(plural),
    "ordinal": _in_context(ordinal),
    "number": _in_context(number),
    "percent": _in_context(percent),
    "money": _in_context(money),
    "date": _in_context(date, zoned=True),
    "time": _in_context(time, zoned=True),
    "datetime": _in_context(datetime, zoned=True),
}


def helpers() -> dict[str, Callable[..., str]]:
    """The Jinja globals: ``{{ money(1234.5, "RUB") }}``, ``{{ plural(n, one=..., other=...) }}``..."""
    return dict(_HELPERS)


def filters() -> dict[str, Callable[..., str]]:
    """The same callables as Jinja filters, value first: ``{{ points|plural(one=..., other=...) }}``,
    ``{{ amount|money("RUB") }}``, ``{{ expires_at|date("long") }}``."""
    return dict(_HELPERS)
