"""Rendering: MJML compiled once per (template, version, locale), sandboxed Jinja per member.

Templates come from ``templates.store`` by version (the library on disk; versions pinned at launch or
imported, in the database). Layout of a version: ``template.yaml`` (default locale, version, subject and
preheader per locale) and ``email.<locale>.mjml`` + ``email.<locale>.txt``; shared layouts and partials
under ``_shared/`` are pulled in with ``<mj-include path="_shared/..."/>`` (MJML, expanded before
compiling) or ``{% include "_shared/..." %}`` (Jinja, text bodies); the other channels have one body
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
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mjml
import yaml
from babel import Locale, UnknownLocaleError
from jinja2 import (
    DictLoader,
    StrictUndefined,
    TemplateError,
    TemplateSyntaxError,
    UndefinedError,
)
from jinja2.sandbox import SandboxedEnvironment

from templates.helpers import HelperError, install_helpers
from templates.sandbox import BoundedSandbox, OverLimit
from templates.store import LIBRARY, TemplateNotFound, TemplateStore, Version

_JINJA = re.compile(r"{{.*?}}|{%.*?%}|{#.*?#}", re.DOTALL)
_ENDING = re.compile(r"<(mj-text|mj-button|mj-raw|mj-table|mj-navbar-link|mj-accordion-text|"
                     r"mj-accordion-title|mj-social-element)\b.*?</\1>", re.DOTALL)
_PLACEHOLDER = "CLRNJ{:05d}X"


# channel → (file stem, extension, HTML-escaped): the body file of each non-email channel
CHANNEL_FILES: dict[str, tuple[str, bool]] = {
    "sms": ("txt", False), "whatsapp": ("txt", False), "telegram": ("html", True), "push": ("txt", False),
    "inbox": ("txt", False), "receipt": ("txt", False), "direct_mail": ("html", True),
}
# what each channel carries besides its body (only these are rendered per message)
CHANNEL_FIELDS: dict[str, frozenset[str]] = {
    "sms": frozenset(), "whatsapp": frozenset({"whatsapp"}), "telegram": frozenset({"buttons"}),
    "push": frozenset({"title", "link", "image"}), "inbox": frozenset({"title", "link", "coupon"}),
    "receipt": frozenset({"title", "coupon"}), "direct_mail": frozenset({"title"}),
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
    preheader: str | None = None


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


def template_line(exc: BaseException) -> int | None:
    """The line of the template (or of a shared file it includes) that was running when ``exc`` was raised."""
    return next((n for frame, n in reversed(list(traceback.walk_tb(exc.__traceback__)))
                 if frame.f_code.co_filename == "<template>" or frame.f_code.co_filename.startswith("_shared/")),
                None)


def runtime_problem(where: str, exc: BaseException) -> TemplateProblem:
    """A template that failed while rendering (``{{ member.points - 10 }}`` with a text, a division by zero):
    named by template, locale, the template's line and the error's type, never its message (which may quote
    the member's data). A value too large to make or a render too slow (templates.sandbox) is named with
    what it was (a size, or the time limit)."""
    line = template_line(exc)
    what = str(exc) if isinstance(exc, OverLimit) else f"{type(exc).__name__} while rendering"
    return TemplateProblem(f"{where}: {f'line {line}: ' if line else ''}{what}")


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
    # the mjml library reads the file an <mj-include> names from the server's disk: only the includes
    # expand_includes replaced (files of the same template version) may be in a template
    if MJ_INCLUDE_TAG.search(protected):
        raise TemplateProblem(f"{where}: {STRAY_INCLUDE}")
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


MAX_INCLUDE_DEPTH = 8
_MJ_INCLUDE = re.compile(r"""<mj-include\s+path\s*=\s*["']([^"']+)["']\s*/?>(?:\s*</mj-include>)?""")
_MJ_HEAD = re.compile(r"<mj-head\b[^>]*>")
#: any opening mj-include tag, whatever its case and attributes (what the mjml library would act on)
MJ_INCLUDE_TAG = re.compile(r"<\s*mj-include", re.IGNORECASE)
STRAY_INCLUDE = ('an <mj-include> other than <mj-include path="_shared/..."/> (a file of the same template) '
                 "is not allowed")


def stray_includes(text: str) -> list[int]:
    """The lines of ``text`` holding an ``<mj-include>`` that :func:`expand_includes` would not replace (another
    case, another attribute, unquoted): the mjml library would read the file it names from the server."""
    return [text.count("\n", 0, m.start()) + 1 for m in MJ_INCLUDE_TAG.finditer(text)
            if not _MJ_INCLUDE.match(text, m.start())]


def format_locale(template_locale: str, context: dict[str, Any]) -> str:
    """How numbers and dates are written: the member's own locale when it has the template's language
    (an ``en`` text for an ``en-GB`` member writes 1 December and £), else the template's."""
    member = context.get("member")
    wanted = member.get("locale") if isinstance(member, dict) else None
    if isinstance(wanted, str) and wanted.split("-")[0].lower() == template_locale.split("-")[0].lower():
        return wanted
    return template_locale


def expand_includes(source: str, files: Mapping[str, str], *, where: str, depth: int = 0) -> str:
    """``<mj-include path="_shared/partials/footer.mjml"/>`` replaced by that file of the same template
    version (shared layouts and partials), before MJML compiles the whole. Paths are keys of ``files``:
    nothing outside the version can be read."""
    if depth > MAX_INCLUDE_DEPTH:
        raise TemplateProblem(f"{where}: mj-include nested more than {MAX_INCLUDE_DEPTH} deep")

    def one(m: re.Match[str]) -> str:
        path = m.group(1).strip().lstrip("./")
        if path not in files:
            raise TemplateProblem(f"{where}: mj-include of {m.group(1)!r}: no such file in the template")
        return expand_includes(files[path], files, where=where, depth=depth + 1)

    return _MJ_INCLUDE.sub(one, source)


def with_preheader(source: str) -> str:
    """An MJML document without an ``<mj-preview>`` gets one holding ``{{ preheader }}``."""
    if "<mj-preview" in source:
        return source
    tag = "<mj-preview>{{ preheader }}</mj-preview>"
    head = _MJ_HEAD.search(source)
    if head:
        return source[:head.end()] + tag + source[head.end():]
    return re.sub(r"(<mjml\b[^>]*>)", r"\1<mj-head>" + tag + "</mj-head>", source, count=1)


def _environment(autoescape: bool, files: Mapping[str, str] | None = None) -> SandboxedEnvironment:
    env = BoundedSandbox(autoescape=autoescape, undefined=StrictUndefined, trim_blocks=True,
                         lstrip_blocks=True, loader=DictLoader(dict(files or {})))
    install_helpers(env)
    return env


@dataclass(frozen=True)
class _Compiled:
    subject: Any
    html: Any
    text: Any
    preheader: Any
    locale: str


@dataclass
class _Loaded:
    """A template version, parsed once: its meta, its locales per channel, its Jinja environments."""

    version: Version
    meta: dict[str, Any]
    html_env: SandboxedEnvironment
    text_env: SandboxedEnvironment


class Renderer:
    """Finds, compiles (once per template, version and locale) and renders templates. Thread-safe.

    Every method takes an optional ``version``: None is the newest; a campaign passes the version it
    launched with (``Campaign.template_versions``)."""

    def __init__(self, library: Path = LIBRARY, *, store: TemplateStore | None = None) -> None:
        self.store = store or TemplateStore(library=library)
        self._loaded: dict[tuple[str, int], _Loaded] = {}
        self._cache: dict[tuple[str, int, str], _Compiled] = {}
        self._channel_cache: dict[tuple[str, int, str, str], dict[str, Any]] = {}
        self._lock = threading.RLock()

    def _load(self, name: str, version: int | None = None) -> _Loaded:
        try:
            number = self.store.latest(name) if version is None else int(version)
        except ValueError as exc:
            raise TemplateProblem(str(exc)) from None
        except TemplateNotFound as exc:
            raise TemplateProblem(str(exc)) from None
        key = (name, number)
        found = self._loaded.get(key)
        if found is not None:
            return found
        with self._lock:
            if key in self._loaded:
                return self._loaded[key]
            try:
                v = self.store.get(name, number)
            except TemplateNotFound as exc:
                raise TemplateProblem(str(exc)) from None
            try:
                meta = v.meta()
            except yaml.YAMLError as exc:
                raise TemplateProblem(f"{name}/template.yaml: not valid YAML: {exc}") from None
            if not isinstance(meta, dict):
                raise TemplateProblem(f"{name}/template.yaml: must be a mapping of settings")
            meta.setdefault("default_locale", "en")
            meta["version"] = v.version
            own = [p for p in v.files if "/" not in p]
            meta["locales"] = sorted(p.split(".")[1] for p in own if p.startswith("email.") and p.endswith(".mjml"))
            meta["channel_locales"] = {"email": meta["locales"]} | {
                channel: sorted(p.split(".")[1] for p in own if p.startswith(f"{channel}.") and p.endswith(f".{ext}")
                                and p.count(".") == 2)
                for channel, (ext, _) in CHANNEL_FILES.items()}
            loaded = _Loaded(v, meta, _environment(True, v.files), _environment(False, v.files))
            self._loaded[key] = loaded
            return loaded

    def meta(self, name: str, version: int | None = None) -> dict[str, Any]:
        return self._load(name, version).meta

    def channels(self, name: str, version: int | None = None) -> list[str]:
        """The channels this template has a body for."""
        return [c for c, locales in self.meta(name, version)["channel_locales"].items() if locales]

    def resolve_locale(self, name: str, wanted: str | None, fallback: str | None = None,
                       channel: str = "email", version: int | None = None) -> str:
        """Member locale → its language → the program's default → the template's default."""
        meta = self.meta(name, version)
        available = meta["channel_locales"].get(channel) or []
        for candidate in (wanted, fallback):
            if not candidate:
                continue
            if candidate in available:
                return candidate
            language = candidate.split("-")[0]
            if language in available:
                return language
        default = meta["default_locale"]
        if default not in available:
            ext = "mjml" if channel == "email" else CHANNEL_FILES.get(channel, ("txt", False))[0]
            raise TemplateProblem(f"template {name!r}: default locale {default!r} has no {channel}.{default}.{ext}")
        return default

    def compiled(self, name: str, locale: str, version: int | None = None) -> _Compiled:
        loaded = self._load(name, version)
        meta, files = loaded.meta, loaded.version.files
        key = (name, loaded.version.version, locale)
        found = self._cache.get(key)
        if found is not None:
            return found
        with self._lock:
            if key in self._cache:
                return self._cache[key]
            where = f"{name}/email.{locale}"
            subjects = meta.get("subject") or {}
            if locale not in subjects:
                raise TemplateProblem(f"{name}/template.yaml: no subject for locale {locale!r}")
            preheaders = meta.get("preheader") or {}
            try:
                mjml_src = files.get(f"email.{locale}.mjml")
                text_src = files.get(f"email.{locale}.txt")
                if mjml_src is None:
                    raise TemplateProblem(f"{where}: missing file email.{locale}.mjml")
                if text_src is None:
                    raise TemplateProblem(f"{where}: missing file email.{locale}.txt")
                source = expand_includes(mjml_src, files, where=where)
                if isinstance(preheaders, dict) and locale in preheaders:
                    source = with_preheader(source)
                compiled = _Compiled(
                    subject=loaded.text_env.from_string(subjects[locale]),
                    html=loaded.html_env.from_string(compile_mjml(source, where=where)),
                    text=loaded.text_env.from_string(text_src),
                    preheader=loaded.text_env.from_string(preheaders[locale])
                    if isinstance(preheaders, dict) and locale in preheaders else None,
                    locale=locale,
                )
            except TemplateSyntaxError as exc:
                raise TemplateProblem(f"{where}: line {exc.lineno}: {exc.message}") from exc
            self._cache[key] = compiled
            return compiled

    def render_email(self, name: str, locale: str, context: dict[str, Any], version: int | None = None) -> RenderedEmail:
        c = self.compiled(name, locale, version)
        ctx = {**context, "locale": format_locale(locale, context)}
        try:
            preheader = " ".join(c.preheader.render(ctx).split()) if c.preheader is not None else ""
            ctx["preheader"] = preheader
            return RenderedEmail(
                subject=" ".join(c.subject.render(ctx).split()),
                html=c.html.render(ctx),
                text=c.text.render(ctx),
                locale=locale,
                preheader=preheader or None,
            )
        except UndefinedError as exc:
            raise TemplateProblem(f"{name}/email.{locale}: {exc.message}") from exc
        except OverLimit as exc:
            raise runtime_problem(f"{name}/email.{locale}", exc) from exc
        except (TemplateError, HelperError) as exc:
            raise TemplateProblem(f"{name}/email.{locale}: {exc}") from exc
        except Exception as exc:   # any other failure of one member's render is that message's problem
            raise runtime_problem(f"{name}/email.{locale}", exc) from exc

    # --- the other channels ---------------------------------------------------------------------

    def channel_compiled(self, name: str, channel: str, locale: str, version: int | None = None) -> dict[str, Any]:
        loaded = self._load(name, version)
        meta, files = loaded.meta, loaded.version.files
        key = (name, loaded.version.version, channel, locale)
        found = self._channel_cache.get(key)
        if found is not None:
            return found
        if channel not in CHANNEL_FILES:
            raise TemplateProblem(f"{name}: no such channel {channel!r}")
        ext, escaped = CHANNEL_FILES[channel]
        where = f"{name}/{channel}.{locale}"
        env = loaded.html_env if escaped else loaded.text_env

        def per_locale(value: Any) -> Any:
            return value.get(locale, value.get(meta["default_locale"])) if isinstance(value, dict) else value

        def text_template(value: Any, field: str) -> Any:
            value = per_locale(value)
            if value is None:
                return None
            if not isinstance(value, str):
                raise TemplateProblem(f"{name}/template.yaml: {field} must be text")
            return loaded.text_env.from_string(value)

        with self._lock:
            try:
                source = files.get(f"{channel}.{locale}.{ext}")
                if source is None:
                    raise TemplateProblem(f"{where}: missing file {channel}.{locale}.{ext}")
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
            self._channel_cache[key] = compiled
            return compiled

    def render(self, name: str, channel: str, locale: str, context: dict[str, Any],
               version: int | None = None) -> RenderedMessage:
        """A message for ``channel`` (any but email: see :meth:`render_email`) in ``locale``."""
        c = self.channel_compiled(name, channel, locale, version)
        ctx = {**context, "locale": format_locale(locale, context)}

        def run(t: Any) -> str | None:
            return None if t is None else t.render(ctx).strip()

        uses = CHANNEL_FIELDS[channel]
        try:
            body = c["body"].render(ctx).strip()
            return RenderedMessage(
                channel=channel, locale=locale, text=body,
                title=run(c["title"]) if "title" in uses else None,
                link=run(c["link"]) if "link" in uses else None,
                image=run(c["image"]) if "image" in uses else None,
                coupon=(run(c["coupon"]) or None) if "coupon" in uses else None,
                buttons=tuple((run(t) or "", run(u) or "") for t, u in c["buttons"]) if "buttons" in uses else (),
                content_sid=c["content_sid"] if "whatsapp" in uses else None,
                content_variables=({k: run(v) or "" for k, v in c["variables"].items()} or None)
                if "whatsapp" in uses else None,
            )
        except UndefinedError as exc:
            raise TemplateProblem(f"{name}/{channel}.{locale}: {exc.message}") from exc
        except OverLimit as exc:
            raise runtime_problem(f"{name}/{channel}.{locale}", exc) from exc
        except (TemplateError, HelperError) as exc:
            raise TemplateProblem(f"{name}/{channel}.{locale}: {exc}") from exc
        except Exception as exc:   # any other failure of one member's render is that message's problem
            raise runtime_problem(f"{name}/{channel}.{locale}", exc) from exc
