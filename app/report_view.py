"""The campaign report in the terminal (rich tables) and as CSV."""

from __future__ import annotations

import csv
import io

from rich.console import Console
from rich.table import Table

from analytics.report import CampaignReport, Figures


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
    w.writerow(["campaign", "locale", "audience", "sent", "suppressed", "failed", "in_doubt", "pending"])
    rows: list[tuple[str, Figures]] = [*report.by_locale.items(), ("all", report.total)]
    for name, f in rows:
        w.writerow([report.campaign, name, f.audience, f.sent, f.suppressed, f.failed, f.in_doubt, f.pending])
    return out.getvalue()
