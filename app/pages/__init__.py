"""Server-rendered member pages: a plain Jinja2 environment (autoescape on) over this folder.

The style sheet is inlined and allowed by its SHA-256 in the Content-Security-Policy (``STYLE_HASH``), so
the pages load nothing from anywhere (no CDN, no web fonts, no script) and need no ``'unsafe-inline'``.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable, Mapping
from pathlib import Path

from babel.dates import format_date
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup

from app.pages.texts import texts
from consent.preferences import FormProblem, PreferenceView

HERE = Path(__file__).parent
_env = Environment(loader=FileSystemLoader(HERE), autoescape=True, undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True)
CSS = (HERE / "preferences.css").read_text(encoding="utf-8").strip()
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
CONTENT_SECURITY_POLICY = (f"default-src 'none'; style-src '{STYLE_HASH}'; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")


def _fill(t: Mapping[str, str], program: str) -> dict[str, str]:
    return {k: v.replace("{program}", program) for k, v in t.items()}


def render_preferences(view: PreferenceView, *, notices: Iterable[str] = (), confirmations: Iterable[str] = (),
                       problems: Iterable[FormProblem] = (), wording_changed: bool = False,
                       deep_link: str | None = None) -> str:
    """The preference center of ``view``. ``notices``: keys of texts to show as done (saved, removed,
    unsubscribed); ``confirmations``: channels a confirmation was sent on; ``problems``: form fields refused."""
    t = _fill(texts(view.language), view.program_name)
    shown = [t[n] for n in notices if n in t]
    shown += [t[f"confirm_{c}"] for c in confirmations if f"confirm_{c}" in t]
    errors = {"quiet_from": "", "quiet_to": ""}
    for p in problems:
        errors[p.field] = t[f"err_{p.code}"]
    alert = t["wording_changed"] if wording_changed else t["errors"] if any(errors.values()) else None
    devices = []
    for d in view.devices:
        platform = t.get(f"platform_{d.platform.lower()}", d.platform)
        date = format_date(d.registered_at, format="medium", locale=view.language)
        devices.append({"id": d.id, "text": t["device"].format(platform=platform, date=date, tail=d.tail),
                        "remove_label": t["remove_label"].format(platform=platform, tail=d.tail)})
    return _env.get_template("preferences.html.j2").render(
        lang=view.language, t=t, v=view, css=Markup(CSS), notices=shown, alert=alert, errors=errors,
        values={"quiet_from": view.quiet_from or "", "quiet_to": view.quiet_to or ""},
        topics={tp.key: tp for tp in view.topics}, devices=devices, deep_link=deep_link,
        wording_version=t["wording_version"].format(version=view.wording_version))


def render_not_found() -> str:
    """The one page for every link that does not open a preference center (no member data, both languages)."""
    return _env.get_template("not_found.html.j2").render(css=Markup(CSS), en=texts("en")["not_found"],
                                                         ru=texts("ru")["not_found"])
