"""The access matrix as README.md's "API keys and roles" table writes it, and the app's routes it stands for.

A row is ``| `METHOD[/METHOD] /path`, ... | roles |``; a path may end in ``a\\|b`` (one route per word), and its
``{name}`` parts are filled with ``1``. The roles cell says who may:

    core, marketer                       these API keys (admin always)
    admin only                           the admin key alone
    marketer: a dashboard session ...    signed in on the dashboard with one of these keys (admin always)
    none: ...                            anyone: no key is asked
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fastapi import FastAPI
from fastapi.routing import iter_route_contexts
from starlette.routing import compile_path

from storage.tables import Role

README = Path(__file__).resolve().parents[2] / "README.md"
SECTION = "### API keys and roles"
SAMPLE = "1"                      # every {path parameter}: a valid shape, nothing that exists

Kind = Literal["key", "session", "public"]


@dataclass(frozen=True)
class Entry:
    method: str
    path: str                     # concrete: parameters filled in
    kind: Kind
    roles: frozenset[Role]        # who may (admin included); empty for public
    row: str                      # the README row, for messages


@dataclass(frozen=True)
class AppRoute:
    method: str
    template: str                 # as the app declares it


def _cells(line: str) -> list[str]:
    cells = re.split(r"(?<!\\)\|", line.strip().strip("|"))
    return [c.strip().replace("\\|", "|") for c in cells]


def _roles(cell: str) -> tuple[Kind, frozenset[Role]]:
    if cell.startswith("none"):
        return "public", frozenset()
    if cell.startswith("admin only"):
        return "key", frozenset({Role.admin})
    names, _, rest = cell.partition(":")
    roles = {Role(n.strip()) for n in names.split(",")} | {Role.admin}
    return ("session" if "dashboard session" in rest else "key"), frozenset(roles)


def _expand(spec: str) -> list[tuple[str, str]]:
    """``GET/HEAD /a/{x}/b|c`` → (GET, /a/1/b), (GET, /a/1/c), (HEAD, /a/1/b), (HEAD, /a/1/c)."""
    methods, _, path = spec.partition(" ")
    head, _, last = path.rpartition("/")
    paths = [f"{head}/{word}" for word in last.split("|")]
    paths = [re.sub(r"\{[^}]*\}", SAMPLE, p) for p in paths]
    return [(m, p) for m in methods.split("/") for p in paths]


def readme_entries(text: str | None = None) -> list[Entry]:
    text = README.read_text(encoding="utf-8") if text is None else text
    section = text.split(SECTION, 1)[1].split("\n#", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| `")]
    assert rows, f"no table rows under {SECTION!r} in README.md"
    entries = []
    for line in rows:
        routes, roles = _cells(line)[:2]
        kind, allowed = _roles(roles)
        for spec in re.findall(r"`([A-Z/]+ /[^`]*)`", routes):
            entries += [Entry(m, p, kind, allowed, line) for m, p in _expand(spec)]
    return entries


def app_routes(app: FastAPI) -> list[tuple[AppRoute, re.Pattern[str], frozenset[str]]]:
    """Every route of the app in the order it is matched, with its path regex and methods (HEAD implied by
    GET where Starlette adds it)."""
    out = []
    for ctx in iter_route_contexts(app.routes):
        if not ctx.path or not ctx.methods:
            continue
        regex, _, _ = compile_path(ctx.path)
        for method in sorted(ctx.methods):
            out.append((AppRoute(method, ctx.path), regex, frozenset(ctx.methods)))
    return out


def resolve(app: FastAPI, entry: Entry) -> AppRoute | None:
    """The route a request for ``entry`` reaches (the first whose path and method match, as the router does)."""
    for route, regex, methods in app_routes(app):
        if route.method == entry.method and regex.fullmatch(entry.path) and entry.method in methods:
            return route
    return None


def covered(app: FastAPI, entries: list[Entry]) -> tuple[dict[AppRoute, list[Entry]], list[AppRoute]]:
    """Which entries reach which route, and the routes no entry reaches (HEAD of a GET route counts as
    covered by the GET)."""
    reached: dict[AppRoute, list[Entry]] = {}
    for e in entries:
        route = resolve(app, e)
        if route is not None:
            reached.setdefault(route, []).append(e)
    missing = []
    for route, _, methods in app_routes(app):
        if route in reached:
            continue
        if route.method == "HEAD" and "GET" in methods and AppRoute("GET", route.template) in reached:
            continue
        missing.append(route)
    return reached, missing
