"""Rendering: MJML compiled once per (template, locale, version), sandboxed Jinja per member.

Library layout: ``templates/library/<name>/template.yaml`` (default locale, version, subject per
locale) and ``email.<locale>.mjml`` + ``email.<locale>.txt`` beside it.

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


class TemplateProblem(ValueError):
    """A template cannot be used: names the template, locale, line and what is wrong."""


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    html: str
    text: str
    locale: str


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
            self._meta[name] = meta
        return self._meta[name]

    def resolve_locale(self, name: str, wanted: str | None, fallback: str | None = None) -> str:
        """Member locale → its language → the program's default → the template's default."""
        available = self.meta(name)["locales"]
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
            raise TemplateProblem(f"template {name!r}: default locale {default!r} has no email.{default}.mjml")
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
