"""Campaigns in the terminal: live progress (a rich progress bar), the report (rich tables), and CSV."""

from __future__ import annotations

import asyncio
from decimal import Decimal

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from analytics.report import CampaignReport
from app import campaigns as service


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{v * 100:.1f}%"


def _money(v: Decimal | float | None, currency: str) -> str:
    return "–" if v is None else f"{v:,.2f} {currency}"


def print_report(report: CampaignReport, console: Console) -> None:
    t = report.total
    cur = report.currency
    console.print(f"\n[bold]Campaign {report.campaign}[/] — {report.name} — status [bold]{report.status}[/]")
    funnel = Table(title="by channel", show_lines=False)
    cols = ("channel", "audience", "sent", "delivered", "opened", "clicked", "replied", "unsub.", "converted",
            "revenue", "cost", "suppressed", "failed", "in doubt", "pending")
    for col in cols:
        funnel.add_column(col, justify="left" if col == "channel" else "right")
    for name, f in [*report.by_channel.items(), ("all", t)]:
        funnel.add_row(name, *(str(v) for v in (f.audience, f.sent, f.delivered, f.opened, f.clicked, f.replied,
                                                f.unsubscribed, f.converted)),
                       f"{f.revenue:,.2f}", f"{f.cost:,.2f}",
                       *(str(v) for v in (f.suppressed, f.failed, f.in_doubt, f.pending)),
                       style="bold" if name == "all" else None)
    console.print(funnel)
    loc = Table(title="by locale")
    for col in ("locale", "audience", "held out", "sent", "open rate", "click rate", "conversion", "control conv.",
                "uplift"):
        loc.add_column(col, justify="left" if col == "locale" else "right")
    for name, f in [*report.by_locale.items(), ("all", t)]:
        d = f.derived()
        u = d["uplift"]
        loc.add_row(name, str(f.audience), str(f.held_out), str(f.sent), _pct(d["open_rate"]), _pct(d["click_rate"]),
                    _pct(d["conversion_rate"]), _pct(d["control_conversion_rate"]),
                    "–" if u is None else f"{u['uplift'] * 100:+.2f} pt", style="bold" if name == "all" else None)
    console.print(loc)
    d = t.derived()
    u = d["uplift"]
    if u is not None:
        verdict = "significant" if u["significant"] else "not significant"
        console.print(f"uplift {u['uplift'] * 100:+.2f} points (95% CI {u['ci_low'] * 100:+.2f} to "
                      f"{u['ci_high'] * 100:+.2f}, p = {u['p_value']:.3f}, {verdict} at 5%): "
                      f"{t.treated_converted}/{t.treated} treated against {t.control_converted}/{t.control} control; "
                      f"incremental revenue {_money(d['incremental_revenue'], cur)}, ROI {_pct(d['roi'])}, "
                      f"cost per response {_money(d['cost_per_response'], cur)}")
    elif t.held_out:
        console.print("uplift: no comparison yet (no treated or no reachable control member)")
    if t.suppressed_by_reason:
        r = Table(title="suppressed by reason")
        r.add_column("reason")
        r.add_column("members", justify="right")
        for reason, n in sorted(t.suppressed_by_reason.items()):
            r.add_row(reason, str(n))
        console.print(r)
    if report.failed_by_reason:
        console.print("failed by reason: " + ", ".join(f"{k} {v}" for k, v in report.failed_by_reason.items()))


def report_csv(report: CampaignReport) -> str:
    return report.csv()


async def follow(view: service.CampaignView, *, engine, client, console: Console) -> service.CampaignView:
    """A progress bar with sent/suppressed counts until the campaign finishes, or until only waiting is left
    (send windows, an exhausted budget). Triggered and scheduled campaigns never finish: shown once."""
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
               TextColumn("sent {task.fields[sent]}  suppressed {task.fields[suppressed]}  "
                          "failed {task.fields[failed]}  in doubt {task.fields[in_doubt]}"),
               TimeElapsedColumn())
    with Progress(*columns, console=console) as bar:
        task = bar.add_task(view.key, total=view.total, sent=0, suppressed=0, failed=0, in_doubt=0)
        while True:
            c = view.counts
            done = c.sent + c.queued + c.suppressed + c.failed + c.in_doubt + c.already_done + c.held_out
            bar.update(task, total=view.total, completed=done, sent=c.sent, suppressed=c.suppressed,
                       failed=c.failed, in_doubt=c.in_doubt, description=f"{view.key} ({view.status})")
            only_waiting = bool(view.pending) and view.total is not None and \
                done + sum(view.pending.values()) >= view.total
            if service.is_finished(view) or not view.live or view.schedule is not None \
                    or view.workflow_id.startswith("triggered/") or view.status == "budget_exhausted" \
                    or only_waiting:
                return view
            await asyncio.sleep(0.3)
            view = await service.status_of(engine=engine, client=client, program=view.program, key=view.key)
