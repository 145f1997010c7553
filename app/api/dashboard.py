"""The dashboard for marketers and analysts at ``/dashboard``: server-rendered pages, no script, nothing loaded
from anywhere else (the style sheet is inline, allowed by its hash; charts are inline SVG drawn here).

    GET  /dashboard/login                                   paste an API key (admin, marketer, analyst)
    POST /dashboard/login                                   → session cookie, 303 to the dashboard
    POST /dashboard/logout                                  → cookie cleared, 303 to the login page
    GET  /dashboard[?program=KEY]                           the program's campaigns, newest first
    GET  /dashboard/campaigns/{program}/{key}               one campaign: figures, uplift, funnel, daily curve
    GET  /dashboard/campaigns/{program}/{key}/report.csv    the report's CSV (the API's), with the session
    POST /dashboard/campaigns/{program}/{key}/pause|resume  marketer, admin: signal, 303 back with a message

Session: the cookie holds a sealed token (``consent.tokens.Signer``, purpose ``dashboard``, 12 h) carrying the
API key's row id, never the key; HttpOnly, SameSite=Strict, Path=/dashboard, Secure when the public base URL
is https. Every request reads the key's row again: a deleted or revoked key (or one whose role may not use
the dashboard) ends the session at once. Without a valid session a page answers 303 to the login page.

Forms that change something carry a CSRF token: the HMAC-SHA256 of the session token under a key derived from
the signing secret, compared in constant time; and their Origin (else Referer) must be this site. A missing or
wrong token or a foreign origin is a 403 and nothing is signalled; an analyst pressing Pause gets 403 too.

Figures come from ``analytics.report`` exactly as the API serves them (``CampaignReport.to_dict()``), formatted
with Babel for the program's default locale; the charts carry the raw figures in ``data-*`` attributes.
Statuses of campaigns still in progress are asked of their workflows (a short timeout; the recorded status
when Temporal does not answer), so a paused campaign offers Resume as soon as the signal is in.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any
from urllib.parse import urlencode, urlsplit

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from starlette.concurrency import run_in_threadpool
from temporalio.service import RPCError

from analytics.report import CONTROL_KEY, CampaignReport
from app import campaigns as service
from app.errors import Conflict, NotFound, TemporalUnavailable, Unavailable
from app.keys import role_for
from app.pages import charts
from app.pages.texts import dashboard_texts
from consent.tokens import BadToken, Signer
from members.service import ProgramNotFound
from storage.tables import ApiKey, Program, Role
from templates import i18n

router = APIRouter(prefix="/dashboard", tags=["dashboard"], include_in_schema=False)

SESSION_COOKIE = "clarion_dashboard"
SESSION_PURPOSE = "dashboard"
SESSION_TTL_S = 12 * 3600
VIEWERS = frozenset({Role.admin, Role.marketer, Role.analyst})
STEERERS = frozenset({Role.admin, Role.marketer})
ACTIONS = ("pause", "resume")
FINAL = frozenset({"completed", "cancelled", "failed"})
PAUSABLE = frozenset({"running", "scheduled", "waiting", "budget_exhausted"})
RESUMABLE = frozenset({"paused"})
LIVE_TIMEOUT_S = 2.0
_KEY = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
# where a login may lead: our own pages only (never another site, never a crafted path)
_NEXT = re.compile(r"/dashboard(?:/campaigns/[a-z0-9][a-z0-9_\-]{0,63}/[a-z0-9][a-z0-9_\-]{0,63})?"
                   r"(?:\?program=[a-z0-9][a-z0-9_\-]{0,63})?")

PAGES = Path(__file__).resolve().parents[1] / "pages"
_env = Environment(loader=FileSystemLoader(PAGES), autoescape=True, undefined=StrictUndefined,
                   trim_blocks=True, lstrip_blocks=True)
_env.filters["data"] = lambda v: "" if v is None else v     # a figure in a data-* attribute: none is empty
CSS = (PAGES / "dashboard.css").read_text(encoding="utf-8").strip()
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(CSS.encode("utf-8")).digest()).decode("ascii")
HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src '{STYLE_HASH}'; img-src 'self' data:; "
                               "form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "X-Robots-Tag": "noindex, nofollow",
    "Cross-Origin-Opener-Policy": "same-origin",
}
T = dashboard_texts("en")


# --- session ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Viewer:
    key_id: int
    role: Role
    who: str
    csrf: str

    @property
    def can_steer(self) -> bool:
        return self.role in STEERERS


def _csrf_for(signer: Signer, session_token: str) -> str:
    key = hmac.new(signer.secret, b"clarion dashboard csrf v1", hashlib.sha256).digest()
    mac = hmac.new(key, session_token.encode("ascii", "replace"), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode("ascii").rstrip("=")


def _viewer(request: Request) -> Viewer | None:
    """The signed-in key, read again from the database; None without a valid session."""
    token = request.cookies.get(SESSION_COOKIE)
    if not token or len(token) > 1024:
        return None
    signer: Signer = request.app.state.signer
    try:
        body = signer.verify(SESSION_PURPOSE, token)
    except BadToken:
        return None
    key_id = body.get("k")
    if not isinstance(key_id, int) or isinstance(key_id, bool):
        return None
    with Session(request.app.state.engine) as s:
        row = s.get(ApiKey, key_id)
    if row is None or row.revoked_at is not None or row.role not in VIEWERS:
        return None
    who = row.name or T["key_prefix"].format(prefix=row.prefix)
    return Viewer(key_id=key_id, role=Role(row.role), who=who, csrf=_csrf_for(signer, token))


def _origin(url: str) -> str | None:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    default = {"http": 80, "https": 443}[parts.scheme]
    return f"{parts.scheme}://{parts.hostname}" + (f":{port}" if port and port != default else "")


def _same_origin(request: Request) -> bool:
    """The form was posted from a page of this site: its Origin (or, without one, its Referer) is the
    site's own (the Host it was sent to, or the configured public base URL)."""
    sent = request.headers.get("origin") or request.headers.get("referer")
    if not sent:
        return False
    ours = {_origin(str(request.base_url)), _origin(request.app.state.settings.base_url)} - {None}
    return _origin(sent) in ours


def _csrf_ok(viewer: Viewer, form: Mapping[str, Any]) -> bool:
    sent = form.get("csrf")
    if not isinstance(sent, str):
        return False
    return hmac.compare_digest(sent.encode("ascii", "replace"), viewer.csrf.encode("ascii"))


def _secure(request: Request) -> bool:
    return request.app.state.settings.base_url.startswith("https://")


# --- responses -------------------------------------------------------------------------------------------


def _render(name: str, code: int = 200, **context: Any) -> HTMLResponse:
    html = _env.get_template(name).render(t=T, css=Markup(CSS), **context)
    return HTMLResponse(html, status_code=code, headers=HEADERS)


def _see(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers=HEADERS)


def _to_login(request: Request) -> RedirectResponse:
    """No valid session: to the login page, back here afterwards; a dead cookie is cleared."""
    here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    query = {"next": here} if _NEXT.fullmatch(here) and here != "/dashboard" else {}
    if request.cookies.get(SESSION_COOKIE):
        query["ended"] = "1"
    response = _see("/dashboard/login" + (f"?{urlencode(query)}" if query else ""))
    if request.cookies.get(SESSION_COOKIE):
        response.delete_cookie(SESSION_COOKIE, path="/dashboard", secure=_secure(request), httponly=True,
                               samesite="strict")
    return response


def _message(viewer: Viewer | None, title: str, text: str, status: int) -> HTMLResponse:
    return _render("dashboard_message.html.j2", status, viewer=viewer, title=title, message=text, programs=[],
                   program=None)


def _not_found(viewer: Viewer | None) -> HTMLResponse:
    return _message(viewer, T["not_found_title"], T["not_found"], 404)


def _forbidden_form(viewer: Viewer | None) -> HTMLResponse:
    return _message(viewer, T["forbidden_title"], T["forbidden_form"], 403)


def _login_page(*, status: int = 200, error: str | None = None, notice: str | None = None,
                next_url: str | None = None) -> HTMLResponse:
    return _render("dashboard_login.html.j2", status, viewer=None, error=error, notice=notice,
                   next_url=next_url or "", programs=[], program=None)


# --- formats ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fmt:
    """Numbers, money, rates and days for one program (Babel, the program's default locale)."""

    locale: str
    currency: str
    time_zone: str = "UTC"

    def n(self, x: float | None, digits: int | None = None) -> str:
        return T["not_available"] if x is None else i18n.number(x, digits, locale=self.locale)

    def pct(self, x: float | None, digits: int = 1) -> str:
        return T["not_available"] if x is None else i18n.percent(x, digits, locale=self.locale)

    def money(self, x: float | None) -> str:
        return T["not_available"] if x is None else i18n.money(x, self.currency, locale=self.locale)

    def points(self, x: float | None, digits: int = 1) -> str:
        """A proportion as signed percentage points: 0.01 → +1.0."""
        if x is None:
            return T["not_available"]
        value = round(x * 100, digits)
        return ("+" if value > 0 else "") + i18n.number(value, digits, locale=self.locale)

    def p_value(self, p: float) -> str:
        return "< " + i18n.number(0.001, 3, locale=self.locale) if p < 0.001 else \
            i18n.number(p, 3, locale=self.locale)

    def day(self, d: date) -> str:
        return i18n.date(d, skeleton="MMMd", locale=self.locale)

    def day_long(self, d: date) -> str:
        return i18n.date(d, "medium", locale=self.locale)

    def charts(self) -> charts.Formats:
        return charts.Formats(number=lambda x: self.n(x), percent=lambda x: self.pct(x), day=self.day,
                              day_long=self.day_long)


def _status_label(status: str) -> str:
    """A status in words (an unknown one, from a URL, is not shown)."""
    return T.get(f"status_{status}", T["not_available"])


def _uplift_cell(fmt: Fmt, uplift: Mapping[str, Any] | None) -> dict[str, Any]:
    if not uplift:
        return {"text": T["not_available"], "significant": False, "value": None}
    return {"text": fmt.points(uplift["uplift"]), "significant": bool(uplift["significant"]),
            "value": uplift["uplift"]}


# --- the campaigns list ----------------------------------------------------------------------------------


def _programs(engine: Engine) -> list[tuple[str, str]]:
    with Session(engine) as s:
        return [(k, n) for k, n in s.execute(select(Program.key, Program.name).order_by(Program.key))]


def _program(engine: Engine, key: str) -> Program:
    with Session(engine) as s:
        row = s.scalar(select(Program).where(Program.key == key))
    if row is None:
        raise NotFound(f"program {key!r} not found", field="program")
    return row


def _fmt(program: Program) -> Fmt:
    return Fmt(locale=i18n.normalize(program.default_locale), currency=program.currency,
               time_zone=program.time_zone or "UTC")


async def _live(request: Request, program: str, reports: list[CampaignReport]) -> tuple[dict[str, str], bool]:
    """The workflows' own statuses of the campaigns still in progress, and whether Temporal answered for all
    of them (the recorded status stands in for any that did not)."""
    active = [r.campaign for r in reports if r.status not in FINAL]
    if not active:
        return {}, True
    engine = request.app.state.engine

    async def one(key: str) -> str:
        client = await request.app.state.temporal()
        return (await service.status_of(engine=engine, client=client, program=program, key=key)).status

    results = await asyncio.gather(*(asyncio.wait_for(one(k), LIVE_TIMEOUT_S) for k in active),
                                   return_exceptions=True)
    # any failure (Temporal down, a workflow that does not answer its query) falls back to the recorded status
    live = {k: r for k, r in zip(active, results, strict=True) if isinstance(r, str)}
    return live, len(live) == len(active)


def _row(fmt: Fmt, report: CampaignReport, status: str) -> dict[str, Any]:
    d = report.to_dict()
    total = d["total"]
    return {"name": report.name, "key": report.campaign, "kind": T.get(f"kind_{report.kind}", report.kind),
            "status": status, "status_label": _status_label(status), "data": total,
            "sent": fmt.n(total["sent"]), "open_rate": fmt.pct(total["open_rate"]),
            "click_rate": fmt.pct(total["click_rate"]), "conversion_rate": fmt.pct(total["conversion_rate"]),
            "uplift": _uplift_cell(fmt, total["uplift"]), "revenue": fmt.money(total["revenue"]),
            "cost": fmt.money(total["cost"]), "can_pause": status in PAUSABLE, "can_resume": status in RESUMABLE}


def _flash(name: str, notice: str | None, problem: str | None, status: str | None) -> tuple[str | None, str | None]:
    """The message a redirect after pause/resume asked for (known names only)."""
    done = error = None
    if notice in ACTIONS:
        done = T[f"done_{notice}"].format(name=name, status=_status_label(status or ""))
    if problem in ("not_running", "unavailable"):
        error = T[f"problem_{problem}"].format(name=name)
    return done, error


@router.get("", response_class=HTMLResponse)
async def campaigns_page(request: Request, program: str | None = None, notice: str | None = None,
                         problem: str | None = None, status: str | None = None,
                         campaign: str | None = None) -> Response:
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    engine = request.app.state.engine
    programs = await run_in_threadpool(_programs, engine)
    if not programs:
        return _render("dashboard_campaigns.html.j2", viewer=viewer, programs=[], program=None, rows=[],
                       live_ok=True, done=None, error=None, currency="")
    key = program or programs[0][0]
    if not _KEY.fullmatch(key) or key not in {k for k, _ in programs}:
        return _not_found(viewer)
    prog = await run_in_threadpool(_program, engine, key)
    reports = list(reversed(await run_in_threadpool(
        lambda: service.compare(engine=engine, program=key, start=None, end=None))))
    live, live_ok = await _live(request, key, reports)
    fmt = _fmt(prog)
    rows = [_row(fmt, r, live.get(r.campaign, r.status)) for r in reports]
    names = {r.campaign: r.name for r in reports}
    done, error = _flash(names.get(campaign or "", campaign or ""), notice, problem, status)
    return _render("dashboard_campaigns.html.j2", viewer=viewer, programs=programs, program=prog, rows=rows,
                   live_ok=live_ok, done=done, error=error, currency=prog.currency)


# --- one campaign ----------------------------------------------------------------------------------------

FUNNEL = ("audience", "reached", "delivered", "opened", "clicked", "converted")
CURVE = (("sent", "series_sent"), ("opened", "series_opened"), ("clicked", "series_clicked"),
         ("conversions", "series_conversions"))


def _table(fmt: Fmt, groups: list[dict[str, Any]], *, uplift: bool) -> list[dict[str, Any]]:
    rows = []
    for g in groups:
        control = g["key"] == CONTROL_KEY
        rate = g["control_conversion_rate"] if control else g["conversion_rate"]
        rows.append({"key": g["key"], "label": T["control_group"] if control else g["key"], "data": g,
                     "reached": fmt.n(g["reached"]), "delivered": fmt.n(g["delivered"]),
                     "open_rate": fmt.pct(g["open_rate"]), "click_rate": fmt.pct(g["click_rate"]),
                     "converted": fmt.n(g["control_converted"] if control else g["converted"]),
                     "conversion_rate": fmt.pct(rate),
                     "uplift": _uplift_cell(fmt, g["uplift"]) if uplift else None,
                     "revenue": fmt.money(g["control_revenue"] if control else g["revenue"]),
                     "cost": fmt.money(g["cost"])})
    return rows


def _uplift_text(fmt: Fmt, total: Mapping[str, Any]) -> list[str]:
    u = total["uplift"]
    if u is None:
        return [T["uplift_none_control"] if not total["control"] else T["uplift_none_treated"]]
    lines = [
        T["uplift_rates"].format(
            treated_rate=fmt.pct(total["conversion_rate"], 2), treated_converted=fmt.n(u["treated_converted"]),
            treated=fmt.n(u["treated"]), control_rate=fmt.pct(total["control_conversion_rate"], 2),
            control_converted=fmt.n(u["control_converted"]), control=fmt.n(u["control"])),
        T["uplift_value"].format(uplift=fmt.points(u["uplift"], 2), low=fmt.points(u["ci_low"], 2),
                                 high=fmt.points(u["ci_high"], 2)),
        T["uplift_significant" if u["significant"] else "uplift_not_significant"].format(p=fmt.p_value(u["p_value"])),
    ]
    more, revenue = total["incremental_conversions"], total["incremental_revenue"]
    if more is not None and revenue is not None and round(more) != 0:
        text = T["uplift_incremental" if more > 0 else "uplift_decremental"]
        lines.append(text.format(conversions=fmt.n(abs(round(more))), revenue=fmt.money(abs(revenue))))
    return lines


def _campaign_view(fmt: Fmt, d: dict[str, Any]) -> dict[str, Any]:
    total = d["total"]
    reached = total["reached"]
    headline = [
        ("sent", T["fig_sent"], fmt.n(total["sent"]), None),
        ("delivered", T["fig_delivered"], fmt.n(total["delivered"]),
         T["rate_of_sent"].format(rate=fmt.pct(total["delivery_rate"]))),
        ("opened", T["fig_opened"], fmt.n(total["opened"]),
         T["rate_of_reached"].format(rate=fmt.pct(total["open_rate"]))),
        ("clicked", T["fig_clicked"], fmt.n(total["clicked"]),
         T["rate_of_reached"].format(rate=fmt.pct(total["click_rate"]))),
        ("converted", T["fig_converted"], fmt.n(total["converted"]),
         T["rate_conversion"].format(rate=fmt.pct(total["conversion_rate"]))),
        ("revenue", T["fig_revenue"], fmt.money(total["revenue"]), None),
        ("cost", T["fig_cost"], fmt.money(total["cost"]), None),
        ("roi", T["fig_roi"], fmt.pct(total["roi"], 0), None),
        ("cost_per_response", T["fig_cost_per_response"], fmt.money(total["cost_per_response"]), None),
    ]
    bars = [charts.Bar(k, T[f"step_{k}"], int(total[k])) for k in FUNNEL]
    days = [date.fromisoformat(x["day"]) for x in d["by_day"]]
    series = [charts.Series(k, T[label], [x[k] for x in d["by_day"]]) for k, label in CURVE]
    chart_fmt = fmt.charts()
    return {
        "headline": [{"key": k, "label": label, "value": value, "sub": sub, "raw": total.get(k)}
                     for k, label, value, sub in headline],
        "uplift": _uplift_text(fmt, total),
        "significant": bool(total["uplift"] and total["uplift"]["significant"]),
        "funnel": charts.funnel_svg(bars, base=reached, fmt=chart_fmt, t=T),
        "not_reached": T["not_reached"].format(
            held_out=fmt.n(total["held_out"]), control=fmt.n(total["control"]),
            suppressed=fmt.n(total["suppressed"]), failed=fmt.n(total["failed"]), pending=fmt.n(total["pending"])),
        "curve": charts.curve_svg(days, series, fmt=chart_fmt, t=T),
        "days": [{"day": fmt.day_long(dd), "iso": x["day"], **{k: fmt.n(x[k]) for k, _ in CURVE}}
                 for dd, x in zip(days, d["by_day"], strict=True)],
        "curve_keys": [(k, T[label]) for k, label in CURVE],
        "tables": [(T["by_channel"], "channel", _table(fmt, d["by_channel"], uplift=False), False),
                   (T["by_locale"], "locale", _table(fmt, d["by_locale"], uplift=True), True),
                   (T["by_variant"], "variant", _table(fmt, d["by_variant"], uplift=True), True),
                   (T["by_segment"], "segment", _table(fmt, d["by_segment"], uplift=True), True)],
        "generated": T["generated"].format(
            at=i18n.datetime(d["generated_at"], "medium", locale=fmt.locale, time_zone=fmt.time_zone),
            zone=d["time_zone"]),
    }


def _valid(program: str, key: str) -> bool:
    return bool(_KEY.fullmatch(program) and _KEY.fullmatch(key))


@router.get("/campaigns/{program}/{key}", response_class=HTMLResponse)
async def campaign_page(request: Request, program: str, key: str, notice: str | None = None,
                        problem: str | None = None, status: str | None = None) -> Response:
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    if not _valid(program, key):
        return _not_found(viewer)
    engine = request.app.state.engine
    try:
        prog = await run_in_threadpool(_program, engine, program)
        report = await run_in_threadpool(lambda: service.report(engine=engine, program=program, key=key))
    except (NotFound, ProgramNotFound):
        return _not_found(viewer)
    live, live_ok = await _live(request, program, [report])
    state = live.get(report.campaign, report.status)
    fmt = _fmt(prog)
    d = report.to_dict()
    done, error = _flash(report.name, notice, problem, status)
    return _render("dashboard_campaign.html.j2", viewer=viewer, programs=[], program=prog, report=d,
                   status=state, status_label=_status_label(state),
                   kind=T.get(f"kind_{report.kind}", report.kind), can_pause=state in PAUSABLE,
                   can_resume=state in RESUMABLE, live_ok=live_ok, done=done, error=error,
                   v=_campaign_view(fmt, d))


@router.get("/campaigns/{program}/{key}/report.csv")
async def campaign_csv(request: Request, program: str, key: str) -> Response:
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    if not _valid(program, key):
        return _not_found(viewer)
    engine = request.app.state.engine
    try:
        report = await run_in_threadpool(lambda: service.report(engine=engine, program=program, key=key))
    except (NotFound, ProgramNotFound):
        return _not_found(viewer)
    return Response(report.csv(), media_type="text/csv; charset=utf-8",
                    headers={**HEADERS, "Content-Disposition": f'attachment; filename="{program}-{key}.csv"'})


# --- pause / resume --------------------------------------------------------------------------------------


@router.post("/campaigns/{program}/{key}/{action}")
async def steer(request: Request, program: str, key: str, action: str) -> Response:
    viewer = _viewer(request)
    if viewer is None:
        return _to_login(request)
    if not _valid(program, key) or action not in ACTIONS:
        return _not_found(viewer)
    form = await request.form()
    if not _same_origin(request) or not _csrf_ok(viewer, form):
        return _forbidden_form(viewer)
    if not viewer.can_steer:
        return _message(viewer, T["forbidden_title"], T["forbidden_role"].format(role=viewer.role.value), 403)
    back = (f"/dashboard/campaigns/{program}/{key}" if form.get("back") == "campaign"
            else f"/dashboard?{urlencode({'program': program, 'campaign': key})}")
    joint = "&" if "?" in back else "?"
    engine = request.app.state.engine
    try:
        view = await service.signal(engine=engine, client=await request.app.state.temporal(), program=program,
                                    key=key, action=action)
    except (NotFound, ProgramNotFound):
        return _not_found(viewer)
    except Conflict:
        return _see(f"{back}{joint}{urlencode({'problem': 'not_running'})}")
    except (TemporalUnavailable, Unavailable, RPCError):
        return _see(f"{back}{joint}{urlencode({'problem': 'unavailable'})}")
    return _see(f"{back}{joint}{urlencode({'notice': action, 'status': view.status})}")


# --- login / logout --------------------------------------------------------------------------------------


def _safe_next(raw: object) -> str | None:
    return raw if isinstance(raw, str) and _NEXT.fullmatch(raw) else None


@router.get("/login", response_class=HTMLResponse)
def login_page(request: Request, next: str | None = None, ended: str | None = None,
               out: str | None = None) -> Response:
    if _viewer(request) is not None:
        return _see(_safe_next(next) or "/dashboard")
    notice = T["logged_out"] if out else T["session_ended"] if ended else None
    return _login_page(notice=notice, next_url=_safe_next(next))


def _key_id(engine: Engine, key: str) -> int | None:
    prefix = key.split("_", 2)[1]
    with Session(engine) as s:
        row = s.scalar(select(ApiKey).where(ApiKey.prefix == prefix))
    return None if row is None or row.revoked_at is not None else row.id


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await request.form()
    if not _same_origin(request):
        return _forbidden_form(None)
    next_url = _safe_next(form.get("next"))
    key = form.get("key")
    key = key.strip() if isinstance(key, str) else ""
    if not key:
        return _login_page(status=422, error=T["login_missing"], next_url=next_url)
    engine = request.app.state.engine
    role = await run_in_threadpool(role_for, engine=engine, key=key[:256]) if len(key) <= 256 else None
    key_id = await run_in_threadpool(_key_id, engine, key) if role is not None else None
    if role is None or key_id is None:
        return _login_page(status=401, error=T["login_bad_key"], next_url=next_url)
    if role not in VIEWERS:
        return _login_page(status=403, error=T["login_bad_role"].format(role=role.value), next_url=next_url)
    token = request.app.state.signer.sign(SESSION_PURPOSE, {"k": key_id}, ttl_s=SESSION_TTL_S)
    response = _see(next_url or "/dashboard")
    response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_TTL_S, path="/dashboard", httponly=True,
                        samesite="strict", secure=_secure(request))
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    viewer = _viewer(request)
    if viewer is not None:
        form = await request.form()
        if not _same_origin(request) or not _csrf_ok(viewer, form):
            return _forbidden_form(viewer)
    response = _see("/dashboard/login?out=1")
    response.delete_cookie(SESSION_COOKIE, path="/dashboard", secure=_secure(request), httponly=True,
                           samesite="strict")
    return response

