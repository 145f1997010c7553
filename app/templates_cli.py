"""`clarion templates list|check|preview` (and `import`, app/templates_import_cli.py)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from app.settings import Settings

out = Console()
err = Console(stderr=True)


def _renderer():  # noqa: ANN202
    from app.worker import stored_renderer
    from storage.db import make_engine

    settings = Settings()
    engine = make_engine(settings.db_url)
    return engine, stored_renderer(engine, settings)


def register(app: typer.Typer) -> typer.Typer:
    templates = typer.Typer(no_args_is_help=True, help="Message templates: list, check, preview, import.")
    app.add_typer(templates, name="templates")

    @templates.command("list")
    def list_() -> None:
        """Every template, its versions, and the channels and locales of its newest."""
        _, renderer = _renderer()
        t = Table(title="templates")
        for col in ("name", "versions", "channels (locales)"):
            t.add_column(col)
        for name in renderer.store.names():
            meta = renderer.meta(name)
            versions = ", ".join(f"{v} ({src})" for v, src in renderer.store.versions(name))
            channels = ", ".join(f"{c} ({'/'.join(ls)})" for c, ls in meta["channel_locales"].items() if ls)
            t.add_row(name, versions, channels)
        out.print(t)

    @templates.command("check")
    def check_(name: Annotated[str | None, typer.Argument(help="one template (default: all)")] = None,
               version: Annotated[int | None, typer.Option(help="a stored version (default: the newest)")] = None,
               ) -> None:
        """Render every channel in every locale with a sample member; problems by file and line. Exit 1 on errors."""
        from templates.check import check

        _, renderer = _renderer()
        names = [name] if name else renderer.store.names()
        errors = 0
        for n in names:
            problems = check(renderer, n, version)
            errors += sum(p.severity == "error" for p in problems)
            if not problems:
                out.print(f"[green]ok[/]   {n}")
            for p in problems:
                (err if p.severity == "error" else out).print(
                    f"[{'red' if p.severity == 'error' else 'yellow'}]{p.severity}[/] {p}", highlight=False)
        if errors:
            raise typer.Exit(1)

    @templates.command("preview")
    def preview_(name: str,
                 program: Annotated[str, typer.Option("--program", "-p")],
                 member: Annotated[str, typer.Option(help="the member's external id")],
                 channel: Annotated[str, typer.Option()] = "email",
                 locale: Annotated[str | None, typer.Option(help="default: the member's")] = None,
                 version: Annotated[int | None, typer.Option()] = None,
                 width: Annotated[int, typer.Option(help="receipt width: 32, 42 or 48")] = 42,
                 html: Annotated[Path | None, typer.Option(help="write an email's HTML to this file")] = None,
                 as_json: Annotated[bool, typer.Option("--json", help="everything as JSON")] = False) -> None:
        """The exact message a member would get (nothing is sent)."""
        from activities.messages import MessageBuilder
        from app.previews import PreviewError, preview
        from app.worker import signer
        from members.service import ProgramNotFound

        settings = Settings()
        engine, renderer = _renderer()
        builder = MessageBuilder(renderer=renderer, signer=signer(settings), base_url=settings.base_url,
                                 unsubscribe_mailto=settings.unsubscribe_mailto)
        try:
            p = preview(engine=engine, renderer=renderer, builder=builder, program=program, template=name,
                        channel=channel, member=member, locale=locale, version=version, width=width)
        except (PreviewError, ProgramNotFound) as exc:
            err.print(f"[red]error:[/] {getattr(exc, 'field', 'program')}: {exc}")
            raise typer.Exit(2 if isinstance(exc, PreviewError) and exc.field != "member" else 1) from None
        if as_json:
            out.print_json(json.dumps(dataclasses.asdict(p), ensure_ascii=False))
            return
        out.print(f"[bold]{p.template}[/] v{p.version} · {p.channel} · {p.locale} · cost {p.cost}")
        if p.subject is not None:
            out.print(f"Subject: {p.subject}", highlight=False)
        if p.preheader:
            out.print(f"Preheader: {p.preheader}", highlight=False)
        if p.title:
            out.print(f"Title: {p.title}", highlight=False)
        if p.receipt:
            out.print("\n".join(p.receipt["lines"]), highlight=False, markup=False)
        else:
            out.print(p.text, highlight=False, markup=False)
        if p.sms:
            out.print(f"[dim]SMS: {p.sms['encoding']}, {p.sms['units']} units, {p.sms['segments']} segment(s)[/]")
        if p.push:
            out.print(f"[dim]push payload: {p.push['payload_bytes']} of {p.push['limit_bytes']} bytes[/]")
        for b in p.buttons:
            out.print(f"[{b['text']}] → {b['url']}", highlight=False, markup=False)
        if p.whatsapp_template and p.whatsapp_template.get("content_sid"):
            out.print(f"[dim]outside the 24 h window: template {p.whatsapp_template}[/]", highlight=False)
        if html is not None and p.html:
            html.write_text(p.html, "utf-8")
            out.print(f"HTML written to {html}")

    return templates
