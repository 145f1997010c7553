"""Reports for analysts: one campaign's figures (JSON or CSV), and the campaigns of a period side by side."""

from __future__ import annotations

import csv
import io
from datetime import date, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, Path, Query
from fastapi.responses import Response
from sqlmodel import Session

from analytics.report import CSV_COLUMNS, CampaignReport, csv_cell
from app import campaigns as service
from app.api.deps import EngineDep, require
from app.errors import Invalid
from members.service import get_program
from storage.tables import Role

router = APIRouter(prefix="/api/v1/reports", tags=["reports"],
                   dependencies=[Depends(require(Role.marketer, Role.analyst))])
ProgramQ = Annotated[str, Query(description="the program's key", pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
Key = Annotated[str, Path(pattern=r"^[a-z0-9][a-z0-9_\-]{0,63}$")]
Format = Annotated[Literal["json", "csv"], Query(description="json (default) or csv")]


def _csv(body: str, name: str) -> Response:
    return Response(body, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{name}.csv"', "Cache-Control": "no-store"})


@router.get("/campaigns/{key}")
def campaign(key: Key, program: ProgramQ, engine: EngineDep, format: Format = "json") -> Any:
    """Reach, responses, conversions, revenue and cost of one campaign; its uplift against the control group
    (95% CI, p-value), incremental revenue and ROI; by channel, locale, variant, segment, step and day.
    ``format=csv``: one row per figure group (columns in the README)."""
    report = service.report(engine=engine, program=program, key=key)
    if format == "csv":
        return _csv(report.csv(), f"{program}-{key}")
    return report.to_dict()


def _moment(raw: str | None, field: str, zone: ZoneInfo, *, end: bool) -> datetime | None:
    """A date (the program's local day: its start, or for ``to`` the start of the next day) or a date-time
    with its offset."""
    if raw is None or raw == "":
        return None
    try:
        if len(raw) == 10:
            day = date.fromisoformat(raw)
            at = datetime.combine(day, time(0), zone)
            return at + timedelta(days=1) if end else at
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise Invalid([(field, f"use a date (2026-11-30) or a date-time with its offset "
                               f"(2026-11-30T00:00:00+03:00), not {raw[:40]!r}")]) from None
    if at.tzinfo is None:
        raise Invalid([(field, "a date-time needs its UTC offset, e.g. 2026-11-30T00:00:00+03:00")])
    return at


@router.get("/campaigns")
def campaigns(program: ProgramQ, engine: EngineDep, format: Format = "json",
              from_: Annotated[str | None, Query(alias="from", description="a date (the program's time zone) or "
                                                                           "a date-time with offset")] = None,
              to: Annotated[str | None, Query(description="a date (included) or a date-time (excluded)")] = None
              ) -> Any:
    """The program's campaigns that ran in the period (started before its end, not finished before its start),
    each with its totals, to compare them."""
    with Session(engine) as s:
        zone = ZoneInfo(get_program(s, program).time_zone or "UTC")
    start = _moment(from_, "from", zone, end=False)
    end = _moment(to, "to", zone, end=True)
    if start and end and end <= start:
        raise Invalid([("to", "must be after from")])
    reports = service.compare(engine=engine, program=program, start=start, end=end)
    if format == "csv":
        return _csv(_compare_csv(reports), f"{program}-campaigns")
    return {"program": program, "from": start.isoformat() if start else None,
            "to": end.isoformat() if end else None,
            "campaigns": [_summary(r) for r in reports]}


def _summary(r: CampaignReport) -> dict[str, Any]:
    d = r.to_dict()
    return {k: d[k] for k in ("campaign", "name", "status", "kind", "currency", "holdout",
                              "attribution_window_hours", "total")}


def _compare_csv(reports: list[CampaignReport]) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["name", "status", *CSV_COLUMNS])
    for r in reports:
        for row in r.csv_rows():
            if row["dimension"] == "total":
                w.writerow([r.name, r.status, *(csv_cell(row.get(c)) for c in CSV_COLUMNS)])
    return out.getvalue()

