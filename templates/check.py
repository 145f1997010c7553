"""Validating templates before anyone gets them: every channel body in every locale compiles (MJML with its
Jinja intact, the sandbox, Telegram's HTML subset) and renders with a sample member under StrictUndefined,
so a misspelt variable is found now and named with its template, file, line and name, not at 3 a.m. in a
campaign. Also the per-channel limits a provider would refuse or cut: SMS segments, push title and body,
the 4 KB push payload, receipt width.

    check(renderer, name, version=None) -> list[Problem]     empty: good to use
"""

from __future__ import annotations

import re
import sys
import traceback
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from jinja2 import TemplateError, UndefinedError
from jinja2.exceptions import SecurityError

from channels.sms_text import sms_segments
from templates.render import CHANNEL_FILES, Renderer, TemplateProblem
from templates.sandbox import OverLimit

PUSH_TITLE_MAX = 65          # what Android shows before it cuts the title
PUSH_BODY_MAX = 240
SMS_SEGMENTS_WARN = 3

SAMPLE_MEMBER = {"first_name": "Anna", "last_name": "Smirnova", "kind": "individual", "locale": "ru",
                 "tier": "gold", "points_balance": 1250, "points_expire_on": "2026-12-31", "birthday": "1990-05-17",
                 "city": "Kazan"}


def sample_context(locale: str = "en") -> dict[str, Any]:
    """What a real send puts in the context (activities.messages), with a plausible member."""
    return {
        "member": dict(SAMPLE_MEMBER, locale=locale),
        "program": {"key": "shop", "name": "Shop & Co", "currency": "RUB",
                    "brand": {"color": "#1a56db", "logo_url": None, "footer": None}},
        "campaign": {"key": "sample", "name": "Sample campaign"},
        "unsubscribe_url": "https://clarion.example/u/SAMPLE", "preferences_url": "https://clarion.example/p/SAMPLE",
        "card": {"number": "2770000012345678", "status": "active"},
        "last_purchase": {"amount": "2350.00", "currency": "RUB", "occurred_at": datetime(2026, 11, 28, 14, 5,
                                                                                          tzinfo=UTC).isoformat(),
                          "store": "store-12"},
        "coupon": "SAMPLE-COUPON",
        "event": {"id": "e-1", "type": "purchase", "occurred_at": "2026-11-28T14:05:00+00:00", "amount": 2350,
                  "currency": "RUB", "store": "store-12"},
        "time_zone": "Europe/Moscow",
        "confirm_url": "https://clarion.example/c/SAMPLE",    # the double opt-in message
    }


@dataclass(frozen=True)
class Problem:
    template: str
    where: str                # "email.ru", "sms.en", "template.yaml"
    message: str
    severity: str = "error"   # error | warning

    def __str__(self) -> str:
        return f"{self.template}/{self.where}: {self.message}" + (" (warning)" if self.severity == "warning" else "")


_LINE = re.compile(r"line (\d+)")


def _template_line(exc: BaseException) -> int | None:
    """The line of the template Jinja was running when it failed (its frames are named <template>)."""
    for frame, lineno in traceback.walk_tb(exc.__traceback__):
        if frame.f_code.co_filename in ("<template>",) or frame.f_code.co_filename.startswith("_shared/"):
            last = lineno
            return last
    return None


def _explain(exc: BaseException) -> str:
    if isinstance(exc, OverLimit):
        line = _template_line(exc)
        return f"{f'line {line}: ' if line else ''}{exc}"
    if isinstance(exc, SecurityError):
        return f"not allowed in a template: {exc}"
    if isinstance(exc, UndefinedError):
        line = _template_line(exc)
        return f"line {line}: {exc.message}" if line else str(exc.message)
    if not isinstance(exc, (TemplateError, ValueError)):   # TypeError, ZeroDivisionError, ... with the sample
        line = _template_line(exc)
        return f"{f'line {line}: ' if line else ''}{type(exc).__name__}: {exc}"
    return str(exc)


def check(renderer: Renderer, name: str, version: int | None = None) -> list[Problem]:
    problems: list[Problem] = []
    try:
        meta = renderer.meta(name, version)
    except TemplateProblem as exc:
        return [Problem(name, "template.yaml", str(exc))]
    for channel, locales in meta["channel_locales"].items():
        for locale in locales:
            where = f"{channel}.{locale}"
            ctx = sample_context(locale)
            try:
                if channel == "email":
                    problems += _check_email(renderer, name, locale, ctx, version)
                    continue
                msg = renderer.render(name, channel, locale, ctx, version)
            except TemplateProblem as exc:
                cause = exc.__cause__
                problems.append(Problem(name, where, _explain(cause) if cause else str(exc).split(": ", 1)[-1]))
                continue
            except (TemplateError, SecurityError) as exc:          # pragma: no cover - wrapped above
                problems.append(Problem(name, where, _explain(exc)))
                continue
            problems += _limits(name, where, channel, msg)
    if not any(meta["channel_locales"].values()):
        problems.append(Problem(name, "template.yaml", "no channel body in any locale"))
    default = meta["default_locale"]
    for channel, locales in meta["channel_locales"].items():
        if locales and default not in locales:
            ext = "mjml" if channel == "email" else CHANNEL_FILES[channel][0]
            problems.append(Problem(name, f"{channel}.{default}", f"the default locale has no {channel}.{default}.{ext}"))
    return problems


_NAME_IN = re.compile(r"'([A-Za-z_][A-Za-z0-9_]*)'")


def _check_email(renderer: Renderer, name: str, locale: str, ctx: dict[str, Any], version: int | None) -> list[Problem]:
    """Each part on its own, so a problem names its file: the subject and preheader (template.yaml), the
    text (email.xx.txt, with its line) and the HTML (email.xx.mjml: the line of the source that uses the
    missing name, since MJML renumbers the compiled HTML)."""
    try:
        c = renderer.compiled(name, locale, version)
    except TemplateProblem as exc:
        return [Problem(name, f"email.{locale}", str(exc).split(": ", 1)[-1])]
    files = renderer.store.get(name, renderer.meta(name, version)["version"]).files
    ctx = {**ctx, "locale": locale, "preheader": ""}
    out = []
    for part, template, source in (("template.yaml (subject)", c.subject, None),
                                   ("template.yaml (preheader)", c.preheader, None),
                                   (f"email.{locale}.txt", c.text, None),
                                   (f"email.{locale}.mjml", c.html, files.get(f"email.{locale}.mjml", ""))):
        if template is None:
            continue
        try:
            rendered = template.render(ctx)
        except (TemplateError, SecurityError) as exc:
            message = _explain(exc)
            if source is not None and isinstance(exc, UndefinedError):
                found = _NAME_IN.findall(exc.message or "")
                line = next((i for i, text in enumerate(source.splitlines(), 1) if found and found[-1] in text), None)
                message = f"line {line}: {exc.message}" if line else str(exc.message)
            out.append(Problem(name, part, message))
            continue
        except Exception as exc:  # noqa: BLE001 - a text minus a number, a division by zero: name file and line
            line = _template_line(exc)
            out.append(Problem(name, part, f"{f'line {line}: ' if line else ''}{type(exc).__name__}: {exc}"))
            continue
        if part.endswith("(subject)") and not rendered.strip():
            out.append(Problem(name, part, "the subject renders empty"))
    return out


def _limits(name: str, where: str, channel: str, msg: Any) -> list[Problem]:
    out: list[Problem] = []
    if channel == "sms":
        info = sms_segments(msg.text)
        if info.segments > SMS_SEGMENTS_WARN:
            out.append(Problem(name, where, f"{info.segments} SMS segments ({info.encoding}, {info.units} units): "
                                            "each is paid", "warning"))
    if channel == "push":
        if msg.title and len(msg.title) > PUSH_TITLE_MAX:
            out.append(Problem(name, where, f"push title of {len(msg.title)} characters: phones cut it at about "
                                            f"{PUSH_TITLE_MAX}", "warning"))
        if len(msg.text) > PUSH_BODY_MAX:
            out.append(Problem(name, where, f"push body of {len(msg.text)} characters: phones cut it at about "
                                            f"{PUSH_BODY_MAX}", "warning"))
        from channels.push_fcm import MAX_PAYLOAD, payload_size

        size = payload_size(msg.title, msg.text, msg.image, {"link": msg.link} if msg.link else {})
        if size > MAX_PAYLOAD:
            out.append(Problem(name, where, f"push payload of {size} bytes: FCM refuses more than {MAX_PAYLOAD}"))
    if not msg.text.strip():
        out.append(Problem(name, where, "the body renders empty"))
    return out


def main_check_all(renderer: Renderer) -> list[Problem]:
    """Every template of the store (its newest version)."""
    problems: list[Problem] = []
    for name in renderer.store.names():
        problems += check(renderer, name)
    return problems


if __name__ == "__main__":  # pragma: no cover
    found = main_check_all(Renderer())
    for p in found:
        print(p)
    sys.exit(1 if any(p.severity == "error" for p in found) else 0)
