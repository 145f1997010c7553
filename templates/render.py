"""Rendering: MJML compiled once per (template, locale, version), sandboxed Jinja per member.

Library layout: ``templates/library/<name>/template.yaml`` (default locale, version, subject per
locale) and ``email.<locale>.mjml`` + ``email.<locale>.txt`` beside it; the other channels have one body
file per locale beside them (``CHANNEL_FILES``): ``sms.ru.txt``, ``telegram.ru.html`` (Telegram's HTML
subset), ``push.ru.txt``, ``whatsapp.ru.txt``, ``inbox.ru.txt``, ``receipt.ru.txt``,
``direct_mail.ru.html`` (the letter body). ``template.yaml`` may also give, per locale where it is text:
``title`` (push, inbox, receipt and letter heading), ``link`` (deep link), ``image`` (push), ``coupon``,
``buttons`` (Telegram URL buttons: ``[{text: {en: ...}, url: ...}]``) and ``whatsapp`` (the approved
template for outside the 24 h window: ``{content_sid: {en: HX...}, variables: {"1": "{{ ... }}"}}``).
Every value is a sandboxed Jinja template like the bodies.

The ``mjml`` package escapes ``<``/``>`` inside Jinja tags and drops ``{% if %}`` that stand between
sections, so Jinja tags are swapped for placeholders before compiling (block tags standing between
components go inside ``<mj-raw>``) and restored after; a tag that does not come back is an error.
"""

from __future__ import annotations

import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mjml
import yaml
from babel import Locale, UnknownLocaleError
from babel.numbers import format_currency, format_decimal
from jinja2 import StrictUndefined, TemplateError, TemplateSyntaxError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

LIBRARY = Path(__file__).with_name("library")

_JINJA = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.DOTALL)
_ENDING = re.compile(r"<(mj-text|mj-button|mj-raw|mj-table|mj-navbar-link|mj-accordion-text|"
                     r"mj-accordion-title|mj-social-element)\b.*?</\1>", re.DOTALL)
_PLACEHOLDER = "CLRNJ{:05d}X"


# channel → (file stem, extension, HTML-escaped): the body file of each non-email channel
CHANNEL_FILES: dict[str, tuple[str, bool]] = {
    "sms": ("txt", False), "whatsapp": ("txt", False), "telegram": ("html", True), "push": ("txt", False),
    "inbox": ("txt", False), "receipt": ("txt", False), "direct_mail": ("html", True),
}
# Telegram's HTML subset (https://core.telegram.org/bots/api#html-style)
TELEGRAM_TAGS = frozenset({"b", "strong", "i", "em", "u", "ins", "s", "strike", "del", "span", "tg-spoiler",
                           "a", "code", "pre", "blockquote", "tg-emoji"})
_TAG = re.compile(r"</?\s*([a-zA-Z][a-zA-Z0-9-]*)")


class TemplateProblem(ValueError):
    """A template cannot be used: names the template, locale, line and what is wrong."""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str
    locale: str


@dataclass(frozen=True, slots=True)
class RenderedMessage:
    """A non-email message as the member gets it (the fields its channel uses)."""

    channel: str
    locale: str
    text: str
    title: str | None = None
    link: str | None = None
    image: str | None = None
    coupon: str | None = None
    buttons: tuple[tuple[str, str], ...] = ()
    content_sid: str | None = None
    content_variables: dict[str, str] | None = None


def normalize_locale(value: str) -> str:
    """``ru_RU``/``ru-ru`` → ``ru-RU``; raises ValueError for what CLDR does not know."""
    try:
        loc = Locale.parse(value.replace("-", "_"))
    except (UnknownLocaleError, ValueError) as exc:
        raise ValueError(f"unknown locale {value!r}") from exc
    return str(loc).replace("_", "-")


def compile_mjml(source: str, *, where: str = "template") -> str:
    """MJML → HTML with every Jinja tag intact."""
    ending = [(m.start(), m.end()) for m in _ENDING.finditer(source)]
    originals: list[str] = []

    def inside_ending(pos: int) -> bool:
        return any(a <= pos < b for a, b in ending)

    def swap(m: re.Match[str]) -> str:
        originals.append(m.group(0))
        ph = _PLACEHOLDER.format(len(originals) - 1)
        line_start = source.rfind("\n", 0, m.start()) + 1
        line_end = source.find("\n", m.end())
        line_end = len(source) if line_end < 0 else line_end
        alone = not source[line_start:m.start()].strip() and not source[m.end():line_end].strip()
        if m.group(0).startswith("{%") and alone and not inside_ending(m.start()):
            return f"<mj-raw>{ph}</mj-raw>"
        return ph

    protected = _JINJA.sub(swap, source)
    result = mjml.mjml_to_html(protected)
    if result.errors:
        raise TemplateProblem(f"{where}: MJML errors: {result.errors}")
    html = result.html
    for i, original in enumerate(originals):
        ph = _PLACEHOLDER.format(i)
        if ph not in html:
            raise TemplateProblem(f"{where}: MJML dropped the Jinja tag {original!r}")
        html = html.replace(ph, original)
    return html


def _money(value: Any, currency: str, locale: str) -> str:
    return format_currency(value, currency, locale=locale.replace("-", "_"))


def _number(value: Any, locale: str) -> str:
    return format_decimal(value, locale=locale.replace("-", "_"))


def _environment(autoescape: bool) -> SandboxedEnvironment:
    env = SandboxedEnvironment(autoescape=autoescape, undefined=StrictUndefined,
                               trim_blocks=True, lstrip_blocks=True)
    env.globals.update(money=_money, number=_number)
    return env


@dataclass(frozen=True)
class _Compiled:
    subject: Any
    html: Any
    text: Any
    locale: str


class Renderer:
    """Finds, compiles (once) and renders templates of a library folder. Thread-safe."""

    def __init__(self, library: Path = LIBRARY) -> None:
        self._library = library
        self._html_env = _environment(autoescape=True)
        self._text_env = _environment(autoescape=False)
        self._cache: dict[tuple[str, str, int], _Compiled] = {}
        self._channel_cache: dict[tuple[str, str, str, int], dict[str, Any]] = {}
        self._meta: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()

    def meta(self, name: str) -> dict[str, Any]:
        if name not in self._meta:
            if not re.fullmatch(r"[a-z0-9][a-z0-9_\-]{0,63}", name):
                raise TemplateProblem(f"template name {name!r}: use a-z, 0-9, _ and -")
            path = self._library / name / "template.yaml"
            if not path.is_file():
                raise TemplateProblem(f"template {name!r} not found in {self._library}")
            meta = yaml.safe_load(path.read_text("utf-8")) or {}
            meta.setdefault("version", 1)
            meta.setdefault("default_locale", "en")
            meta["locales"] = sorted(p.name.split(".")[1] for p in path.parent.glob("email.*.mjml"))
            meta["channel_locales"] = {"email": meta["locales"]} | {
                channel: sorted(p.name.split(".")[1] for p in path.parent.glob(f"{channel}.*.{ext}"))
                for channel, (ext, _) in CHANNEL_FILES.items()}
            self._meta[name] = meta
        return self._meta[name]

    def channels(self, name: str) -> list[str]:
        """The channels this template has a body for."""
        return [c for c, locales in self.meta(name)["channel_locales"].items() if locales]

    def resolve_locale(self, name: str, wanted: str | None, fallback: str | None = None,
                       channel: str = "email") -> str:
        """Member locale → its language → the program's default → the template's default."""
        available = self.meta(name)["channel_locales"].get(channel) or []
        for candidate in (wanted, fallback):
            if not candidate:
                continue
            if candidate in available:
                return candidate
            language = candidate.split("-")[0]
            if language in available:
                return language
        default = self.meta(name)["default_locale"]
        if default not in available:
            ext = "mjml" if channel == "email" else CHANNEL_FILES.get(channel, ("txt", False))[0]
            raise TemplateProblem(f"template {name!r}: default locale {default!r} has no {channel}.{default}.{ext}")
        return default

    def compiled(self, name: str, locale: str) -> _Compiled:
        meta = self.meta(name)
        key = (name, locale, int(meta["version"]))
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            folder = self._library / name
            where = f"{name}/email.{locale}"
            subjects = meta.get("subject") or {}
            if locale not in subjects:
                raise TemplateProblem(f"{name}/template.yaml: no subject for locale {locale!r}")
            try:
                html_src = compile_mjml((folder / f"email.{locale}.mjml").read_text("utf-8"), where=where)
                text_path = folder / f"email.{locale}.txt"
                compiled = _Compiled(
                    subject=self._text_env.from_string(subjects[locale]),
                    html=self._html_env.from_string(html_src),
                    text=self._text_env.from_string(text_path.read_text("utf-8")),
                    locale=locale,
                )
            except TemplateSyntaxError as exc:
                raise TemplateProblem(f"{where}: line {exc.lineno}: {exc.message}") from exc
            except FileNotFoundError as exc:
                raise TemplateProblem(f"{where}: missing file {Path(exc.filename).name}") from exc
            self._cache[key] = compiled
            return compiled

    def render_email(self, name: str, locale: str, context: dict[str, Any]) -> RenderedEmail:
        c = self.compiled(name, locale)
        ctx = {**context, "locale": locale}
        try:
            return RenderedEmail(
                subject=" ".join(c.subject.render(ctx).split()),
                html=c.html.render(ctx),
                text=c.text.render(ctx),
                locale=locale,
            )
        except UndefinedError as exc:
            raise TemplateProblem(f"{name}/email.{locale}: {exc.message}") from exc
        except TemplateError as exc:
            raise TemplateProblem(f"{name}/email.{locale}: {exc}") from exc

    # --- the other channels ---------------------------------------------------------------------

    def channel_compiled(self, name: str, channel: str, locale: str) -> dict[str, Any]:
        meta = self.meta(name)
        key = (name, channel, locale, int(meta["version"]))
        found = self._channel_cache.get(key)
        if found is not None:
            return found
        if channel not in CHANNEL_FILES:
            raise TemplateProblem(f"{name}: no such channel {channel!r}")
        ext, escaped = CHANNEL_FILES[channel]
        where = f"{name}/{channel}.{locale}"
        env = self._html_env if escaped else self._text_env
        path = self._library / name / f"{channel}.{locale}.{ext}"

        def per_locale(value: Any) -> Any:
            return value.get(locale, value.get(meta["default_locale"])) if isinstance(value, dict) else value

        def text_template(value: Any, field: str) -> Any:
            value = per_locale(value)
            if value is None:
                return None
            if not isinstance(value, str):
                raise TemplateProblem(f"{name}/template.yaml: {field} must be text")
            return self._text_env.from_string(value)

        with self._lock:
            try:
                source = path.read_text("utf-8")
                if channel == "telegram":
                    bad = sorted({t.lower() for t in _TAG.findall(source)} - TELEGRAM_TAGS)
                    if bad:
                        raise TemplateProblem(f"{where}: Telegram does not allow the tag(s) {', '.join(bad)}")
                wa = meta.get("whatsapp") or {}
                compiled = {
                    "body": env.from_string(source),
                    "title": text_template(meta.get("title"), "title"),
                    "link": text_template(meta.get("link"), "link"),
                    "image": text_template(meta.get("image"), "image"),
                    "coupon": text_template(meta.get("coupon"), "coupon"),
                    "buttons": [(text_template(b.get("text"), "buttons.text"), text_template(b.get("url"), "buttons.url"))
                                for b in (meta.get("buttons") or []) if isinstance(b, dict)],
                    "content_sid": per_locale(wa.get("content_sid")),
                    "variables": {str(k): text_template(v, f"whatsapp.variables.{k}")
                                  for k, v in (wa.get("variables") or {}).items()},
                }
            except TemplateSyntaxError as exc:
                raise TemplateProblem(f"{where}: line {exc.lineno}: {exc.message}") from exc
            except FileNotFoundError as exc:
                raise TemplateProblem(f"{where}: missing file {Path(exc.filename).name}") from exc
            self._channel_cache[key] = compiled
            return compiled

    def render(self, name: str, channel: str, locale: str, context: dict[str, Any]) -> RenderedMessage:
        """A message for ``channel`` (any but email: see :meth:`render_email`) in ``locale``."""
        c = self.channel_compiled(name, channel, locale)
        ctx = {**context, "locale": locale}

        def run(t: Any) -> str | None:
            return None if t is None else t.render(ctx).strip()

        try:
            body = c["body"].render(ctx).strip()
            return RenderedMessage(
                channel=channel, locale=locale, text=body, title=run(c["title"]), link=run(c["link"]),
                image=run(c["image"]), coupon=run(c["coupon"]) or None,
                buttons=tuple((run(t) or "", run(u) or "") for t, u in c["buttons"]),
                content_sid=c["content_sid"],
                content_variables={k: run(v) or "" for k, v in c["variables"].items()} or None,
            )
        except UndefinedError as exc:
            raise TemplateProblem(f"{name}/{channel}.{locale}: {exc.message}") from exc
        except TemplateError as exc:
            raise TemplateProblem(f"{name}/{channel}.{locale}: {exc}") from exc
