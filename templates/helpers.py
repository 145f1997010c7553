"""What templates may call: the locale-aware helpers of ``templates.i18n`` (plural forms, numbers, money,
percentages, dates and times in the member's locale and time zone), installed as globals and filters on
every sandboxed environment. They read ``locale`` and ``time_zone`` from the render context."""

from __future__ import annotations

from jinja2 import Environment

from templates import i18n

HelperError = i18n.HelperError


def install_helpers(env: Environment) -> None:
    env.globals.update(i18n.helpers())
    env.filters.update(i18n.filters())
