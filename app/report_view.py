"""Campaigns in the terminal: live progress (a rich progress bar), the report (rich tables), and CSV."""

from __future__ import annotations

import asyncio
import csv
import io

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from analytics.report import CampaignReport, Figures
from app import campaigns as service


def print_report(report: CampaignReport, console: Console) -> None:
    console.print(f"\n[bold]Campaign {report.campaign}[/] — {report.name} — status [bold]{report.status}[/]")
    t = Table(show_lines=False)
    for col in ("locale", "audience", "sent", "suppressed", "failed", "in doubt", "pending"):
        t.add_column(col, justify="right" if col != "locale" else "left")
    rows = [*report.by_locale.items(), ("all", report.total)]
    for name, f in rows:
        t.add_row(name, *(str(v) for v in (f.audience, f.sent, f.suppressed, f.failed, f.in_doubt, f.pending)),
                  style="bold" if name == "all" else None)
    console.print(t)
    if len(report.by_channel) > 1 or report.total.queued or report.total.delivered:
        ch = Table(title="by channel")
        for col in ("channel", "sent", "delivered", "queued", "suppressed", "failed", "in doubt", "pending", "cost"):
            ch.add_column(col, justify="right" if col != "channel" else "left")
        for name, f in [*report.by_channel.items(), ("all", report.total)]:
            ch.add_row(name, *(str(v) for v in (f.sent, f.delivered, f.queued, f.suppressed, f.failed, f.in_doubt,
                                                 f.pending, f"{f.cost:.2f}")),
                       style="bold" if name == "all" else None)
        console.print(ch)
    if report.total.suppressed_by_reason:
        r = Table(title="suppressed by reason")
        r.add_column("reason")
        r.add_column("members", justify="right")
        for reason, n in sorted(report.total.suppressed_by_reason.items()):
            r.add_row(reason, str(n))
        console.print(r)
    if report.failed_by_reason:
        console.print("failed by reason: " + ", ".join(f"{k} {v}" for k, v in report.failed_by_reason.items()))


def report_csv(report: CampaignReport) -> str:
    out = io.StringIO()
    w = csv.writer(out)
    w.writerow(["campaign", "by", "value", "audience", "sent", "delivered", "queued", "suppressed", "failed",
                "in_doubt", "pending", "cost"])
    rows: list[tuple[str, str, Figures]] = [*(("locale", k, f) for k, f in report.by_locale.items()),
                                            *(("channel", k, f) for k, f in report.by_channel.items()),
                                            ("all", "all", report.total)]
    for by, name, f in rows:
        w.writerow([report.campaign, by, name, f.audience, f.sent, f.delivered, f.queued, f.suppressed, f.failed,
                    f.in_doubt, f.pending, f"{f.cost:.4f}"])
    return out.getvalue()


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
