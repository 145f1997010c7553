"""The `clarion` command line."""

from __future__ import annotations

import asyncio
import functools
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlmodel import Session

from app.errors import ClarionError, Invalid, TemporalUnavailable, as_clarion_error
from app.settings import Settings
from campaigns.spec import SpecError
from members.service import ProgramNotFound
from storage.tables import Role

app = typer.Typer(no_args_is_help=True, add_completion=False,
                  help="Clarion: campaign orchestrator for loyalty programs.")
db_app = typer.Typer(no_args_is_help=True, help="The database.")
members_app = typer.Typer(no_args_is_help=True, help="Members.")
campaign_app = typer.Typer(no_args_is_help=True, help="Campaigns: launch and steer.")
keys_app = typer.Typer(no_args_is_help=True, help="API keys.")
programs_app = typer.Typer(no_args_is_help=True, help="Loyalty programs.")
app.add_typer(db_app, name="db")
app.add_typer(members_app, name="members")
app.add_typer(campaign_app, name="campaign")
app.add_typer(keys_app, name="keys")
app.add_typer(programs_app, name="programs")
from app.events_cli import events_app  # noqa: E402
from app.segment_cli import segment_app  # noqa: E402
from app.channels_cli import channels_app, outbox  # noqa: E402
app.add_typer(events_app, name="events")
app.add_typer(segment_app, name="segment")
app.add_typer(channels_app, name="channels")
app.command("outbox")(outbox)
from app.direct_mail_cli import register as _register_direct_mail  # noqa: E402
from app.rights_cli import register as _register_rights  # noqa: E402
from app.consent_cli import register as _register_consent  # noqa: E402
from app.coupons_cli import register as _register_coupons  # noqa: E402
from app.templates_cli import register as _register_templates  # noqa: E402
_register_direct_mail(app)
_register_rights(members_app)
_register_consent(app)
_register_coupons(app)
_templates_app = _register_templates(app)
from app.templates_import_cli import register as _register_templates_import  # noqa: E402
_register_templates_import(_templates_app)

out = Console()
err = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])

ProgramOpt = Annotated[str, typer.Option("--program", "-p", help="the program's key")]


def settings() -> Settings:
    return Settings()


def friendly(fn: F) -> F:
    """Typed errors → one clear line on stderr and exit code 1 (2 for bad input)."""
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (ClarionError, SpecError, ProgramNotFound) as exc:
            e = as_clarion_error(exc)
            problems = getattr(e, "problems", None)
            if problems:     # what was written is quoted in messages: never read as console markup
                err.print("[red]error:[/] invalid input")
                for path, message in problems:
                    err.print(f"  {escape(path or '-')}: {escape(message)}")
            else:
                err.print(f"[red]error:[/] {escape(e.message)}")
            raise typer.Exit(2 if e.status_code == 422 else 1) from None
        except TemporalUnavailable as exc:
            err.print(f"[red]error:[/] {escape(str(exc))}")
            raise typer.Exit(1) from None
    return wrapper  # type: ignore[return-value]


def _read_text(path: Path) -> str:
    """A file the CLI reads as text (a spec, a program's settings): UTF-8, or refused naming the file and the
    byte where it stops being UTF-8 (exit 1, as for a member CSV), never a traceback."""
    try:
        return path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClarionError(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8",
                           field="file") from None


def _engine():  # noqa: ANN202
    from storage.db import make_engine

    return make_engine(settings().db_url)


# --- running -------------------------------------------------------------------------------


@app.command()
@friendly
def up() -> None:
    """Start the embedded stack: Temporal dev server (unless CLARION_TEMPORAL_ADDRESS is set), worker,
    API and the local mail server. Ctrl-C stops everything."""
    from app.stack import embedded_stack

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        from app.observability import configure_logging

        configure_logging(settings())
        async with embedded_stack(settings()) as stack:
            out.print("[bold green]Clarion is up[/]")
            for name, url in stack.urls.items():
                out.print(f"  {name:<32} {url}")
            out.print("Ctrl-C to stop.", highlight=False)
            await stop.wait()
            out.print("stopping…")

    asyncio.run(run())


@app.command()
def worker() -> None:
    """Run a worker only (Temporal at CLARION_TEMPORAL_ADDRESS or the local dev server)."""
    from app.observability import configure_logging, configure_tracing, start_metrics_server, temporal_runtime
    from app.temporal import connect
    from app.worker import build_worker

    @friendly
    def go() -> None:
        async def run() -> None:
            s = settings()
            configure_logging(s)
            configure_tracing(s, "worker")
            temporal_runtime(s)       # before the client connects
            stop_metrics = start_metrics_server(s)
            try:
                await serve(s)
            finally:
                if stop_metrics is not None:
                    stop_metrics()

        async def serve(s: Settings) -> None:
            client = await connect(s)
            w = build_worker(client, s)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            async with w:
                from app.confirmations import wake_confirmations

                await wake_confirmations(client, s)
                out.print(f"worker polling task queue {s.temporal_task_queue!r} at {s.temporal_target}")
                await stop.wait()
        asyncio.run(run())
    go()


@app.command()
@friendly
def api() -> None:
    """Run the HTTP API only."""
    import uvicorn

    from app.api.main import create_app
    from app.observability import configure_logging, configure_tracing, temporal_runtime

    s = settings()
    configure_logging(s)
    configure_tracing(s, "api")
    temporal_runtime(s)
    # log_config=None: uvicorn keeps the logging set above; its access log (paths with their tokens and
    # query strings, client addresses) is off: the API logs each request by its route's template instead
    uvicorn.run(create_app(s), host=s.api_host, port=s.api_port, log_config=None, access_log=False)


@app.command()
def demo(members: Annotated[int, typer.Option(help="how many demo members")] = 1200) -> None:
    """Seed a demo program, launch a demo broadcast, show progress, print the report, stop."""
    from app.demo import run_demo

    raise typer.Exit(friendly(lambda: asyncio.run(run_demo(settings(), members=members, console=out)))())


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the database migrations (Alembic) up to the newest."""
    from storage.migrate import upgrade

    s = settings()
    upgrade(s.db_url)
    out.print(f"database up to date: {s.db_url}")


# --- programs, members ----------------------------------------------------------------------


@programs_app.command("create")
@friendly
def programs_create(key: str, name: Annotated[str, typer.Option()],
                    locale: Annotated[str, typer.Option(help="default locale")] = "en",
                    time_zone: Annotated[str, typer.Option()] = "UTC",
                    currency: Annotated[str, typer.Option()] = "EUR") -> None:
    """Create a loyalty program (idempotent)."""
    from members.service import ensure_program

    p = ensure_program(engine=_engine(), key=key, name=name, default_locale=locale, time_zone=time_zone,
                       currency=currency)
    out.print(f"program {p.key!r} ({escape(p.name)})")


@programs_app.command("settings")
@friendly
def programs_settings(key: str, file: Annotated[Path | None, typer.Argument(
        exists=True, dir_okay=False, readable=True, help="YAML: unit_costs, quiet_hours, caps")] = None) -> None:
    """Show a program's rules, or set them from a YAML file (unit costs per channel, quiet hours per
    channel, program-wide frequency caps)."""
    import yaml

    from campaigns.spec import read_yaml
    from members.service import get_program, set_program_settings

    engine = _engine()
    if file is not None:
        set_program_settings(engine=engine, key=key, data=read_yaml(_read_text(file)))
    with Session(engine) as s:
        stored = get_program(s, key).settings
    out.print(yaml.safe_dump(stored or {}, allow_unicode=True, sort_keys=False).strip() or "{} (defaults)")


@members_app.command("import")
@friendly
def members_import(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
                   program: ProgramOpt) -> None:
    """Import members from a CSV (header: external_id, email, phone, first_name, last_name, locale,
    time_zone, kind, attr.<name>, consent.<channel>.<topic>). Bad rows are reported; good rows are kept."""
    from members.service import get_program, import_csv

    engine = _engine()
    with Session(engine) as s:
        program_id = get_program(s, program).id or 0
    size = file.stat().st_size
    try:
        with file.open("r", encoding="utf-8", newline="") as fh, Progress(
            TextColumn("importing"), BarColumn(), MofNCompleteColumn(), TextColumn("rows"), console=err,
        ) as bar:
            task = bar.add_task("rows", total=None)
            result = import_csv(engine=engine, program_id=program_id, stream=fh,
                                progress=lambda n: bar.advance(task, n))
    except UnicodeDecodeError as exc:
        raise ClarionError(f"{file}: not UTF-8 text (byte {exc.start}); save the CSV as UTF-8",
                           field="file") from None
    for e in result.errors[:50]:
        err.print(f"  line {e.line}: {e.field}: {e.message}" + (f" (member {e.external_id})" if e.external_id else ""),
                  markup=False, highlight=False)
    if result.rejected > 50:
        err.print(f"  … and {result.rejected - 50} more bad rows (the first 50 are shown)")
    out.print(f"{escape(file.name)} ({size} bytes): {result.created} created, {result.updated} updated, "
              f"{result.rejected} rejected")
    if result.rejected:
        raise typer.Exit(1)


# --- campaigns ------------------------------------------------------------------------------


def _with_client(coro_fn: Callable[..., Any]) -> Any:
    from app.temporal import connect

    async def run() -> Any:
        client = await connect(settings())
        return await coro_fn(client)
    return asyncio.run(run())


def _print_view(view: Any) -> None:
    c = view.counts
    total = "?" if view.total is None else view.total
    source = "live" if view.live else "from the database"
    out.print(f"{view.program}/{view.key}: [bold]{view.status}[/] ({source}); audience {total}; "
              f"sent {c.sent}, held out {c.held_out}, suppressed {c.suppressed}, failed {c.failed}, "
              f"in doubt {c.in_doubt}, already done {c.already_done}")
    if c.reasons:
        out.print("  by reason: " + ", ".join(f"{k} {v}" for k, v in sorted(c.reasons.items())))
    if view.pending:
        when = f" (next window opens {view.next_open})" if view.next_open else ""
        out.print("  waiting: " + ", ".join(f"{k} {v}" for k, v in sorted(view.pending.items())) + when)
    if view.budget_limit is not None or c.cost != "0":
        limit = view.budget_limit if view.budget_limit is not None else "no limit"
        out.print(f"  budget: spent {view.budget_spent} of {limit}")
    if view.schedule:
        sch = view.schedule
        out.print(f"  schedule: {'paused' if sch['paused'] else 'active'}, {sch['runs']} run(s); "
                  f"next: {', '.join(sch['next_runs']) or 'none'}")


@campaign_app.command("estimate")
@friendly
def campaign_estimate(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)]) -> None:
    """Before launch: audience size, held out, reachable per channel, suppressed by reason, cost."""
    import time

    from campaigns.estimate import estimate
    from campaigns.spec import load_spec
    from members.service import get_program
    from storage.tables import utcnow

    spec = load_spec(_read_text(file))
    started = time.perf_counter()
    with Session(_engine()) as s:
        est = estimate(session=s, program=get_program(s, spec.program), spec=spec, now=utcnow())
    t = Table(title=f"{spec.program}/{spec.key}: estimate ({time.perf_counter() - started:.2f} s)")
    t.add_column("")
    t.add_column("members", justify="right")
    t.add_row("audience", str(est.audience))
    t.add_row("held out (control)", str(est.held_out))
    for ch in est.channels:
        t.add_row(f"{ch.channel}: reachable", str(ch.reachable))
        for reason, n in sorted(ch.suppressed.items()):
            t.add_row(f"{ch.channel}: suppressed, {reason}", str(n))
        t.add_row(f"{ch.channel}: cost ({ch.unit_cost} each)", f"{ch.cost} {est.currency}")
    t.add_row("cost", f"{est.cost} {est.currency}")
    if est.budget is not None:
        t.add_row("budget", f"{est.budget} {est.currency}")
        t.add_row("within budget", str(est.within_budget))
    out.print(t)
    if est.over_budget:
        err.print(f"the budget pays for {est.within_budget} of {sum(c.reachable for c in est.channels)} "
                  "messages: the campaign will stop there (status budget_exhausted) unless it is raised")


@campaign_app.command("budget")
@friendly
def campaign_budget(key: str, amount: Annotated[str, typer.Argument(help="the new limit, or 'none'")],
                    program: ProgramOpt) -> None:
    """Change a campaign's budget limit; a campaign stopped by its budget goes on."""
    from decimal import Decimal, InvalidOperation

    from pydantic import ValidationError

    from app import campaigns as service
    from app.api.campaigns import BudgetIn

    try:   # the API's rules (positive, finite, 4 decimal places), checked before Temporal is reached
        limit = BudgetIn(limit=None if amount.lower() == "none" else Decimal(amount)).limit
    except InvalidOperation:
        raise Invalid([("budget", f"{amount!r} is not an amount")]) from None
    except ValidationError as exc:
        raise Invalid([("budget", e["msg"]) for e in exc.errors()]) from None
    engine = _engine()
    _print_view(_with_client(lambda c: service.set_budget(engine=engine, client=c, program=program, key=key,
                                                          limit=limit)))


@campaign_app.command("end")
@friendly
def campaign_end(key: str, at: Annotated[str, typer.Argument(help="ISO 8601 with offset, or 'none'")],
                 program: ProgramOpt) -> None:
    """Move a running campaign's end date (what is still waiting then is dropped)."""
    from datetime import datetime

    from app import campaigns as service

    try:
        end_at = None if at.lower() == "none" else datetime.fromisoformat(at)
    except ValueError:
        raise Invalid([("end_at", f"{at!r} is not a date and time (e.g. 2026-12-01T10:00:00+03:00)")]) from None
    engine = _engine()
    service.check_end(engine=engine, program=program, key=key, end_at=end_at)    # before Temporal is reached
    _print_view(_with_client(lambda c: service.set_end(engine=engine, client=c, program=program, key=key,
                                                       end_at=end_at)))


@campaign_app.command("launch")
@friendly
def campaign_launch(file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True)],
                    follow: Annotated[bool, typer.Option(help="show progress until it ends")] = False) -> None:
    """Validate a campaign spec (YAML) and launch it. Launching the same spec again is one run."""
    from app import campaigns as service
    from app.report_view import follow as follow_progress
    from app.worker import stored_renderer
    from campaigns.spec import load_spec

    spec = load_spec(_read_text(file))
    engine = _engine()

    async def go(client: Any) -> Any:
        view = await service.launch(engine=engine, client=client, settings=settings(), spec=spec,
                                    renderer=stored_renderer(engine, settings()))
        if follow:
            view = await follow_progress(view, engine=engine, client=client, console=out)
        return view

    _print_view(_with_client(go))


def _steer(action: str) -> Callable[..., None]:
    @friendly
    def command(key: str, program: ProgramOpt) -> None:
        from app import campaigns as service

        engine = _engine()
        if action == "status":
            view = _with_client(lambda c: service.status_of(engine=engine, client=c, program=program, key=key))
        else:
            view = _with_client(lambda c: service.signal(engine=engine, client=c, program=program, key=key,
                                                         action=action))
        _print_view(view)
    command.__doc__ = {"status": "Show a campaign's status and progress (live from its workflow).",
                       "pause": "Pause a running campaign (batches in flight finish).",
                       "resume": "Resume a paused campaign.",
                       "cancel": "Cancel a campaign: nothing more is sent."}[action]
    return command


for _action in ("status", "pause", "resume", "cancel"):
    campaign_app.command(_action)(_steer(_action))


@app.command()
@friendly
def report(key: str, program: ProgramOpt,
           format: Annotated[str, typer.Option("--format", help="table, csv or json")] = "table") -> None:
    """The campaign report: reach, responses, conversions against the control group (uplift with its 95%
    interval), revenue, cost and ROI; by channel, locale, variant, segment, step and day (csv, json)."""
    from app import campaigns as service
    from app.report_view import print_report, report_csv

    if format not in ("table", "csv", "json"):
        typer.echo(f"error: --format: use table, csv or json, not {format!r}", err=True)
        raise typer.Exit(2)
    engine = _engine()
    rep = service.report(engine=engine, program=program, key=key)
    if format == "csv":
        sys.stdout.write(report_csv(rep))
    elif format == "json":
        sys.stdout.write(json.dumps(rep.to_dict(), indent=2, ensure_ascii=False) + "\n")
    else:
        print_report(rep, out)


# --- keys, mailbox --------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(role: Annotated[Role, typer.Option(help="admin, marketer, core, analyst or pos")],
                name: Annotated[str | None, typer.Option(help="what the key is for")] = None) -> None:
    """Create an API key. It is shown once; only its hash is stored."""
    from app.keys import create_key

    key = create_key(engine=_engine(), role=role, name=name)
    err.print(f"API key for role {role.value!r} (shown once, store it now):")
    print(key)


@app.command()
def mailbox(limit: Annotated[int, typer.Option(help="show the last N messages")] = 20) -> None:
    """List what the embedded local mail server received (var/mail)."""
    from app.mailbox import list_mail

    s = settings()
    mails = list_mail(s.maildir)
    t = Table(title=f"{s.maildir}: {len(mails)} messages")
    for col in ("date", "to", "subject"):
        t.add_column(col)
    for m in mails[-limit:]:
        t.add_row(escape(m.date), escape(m.to), escape(m.subject))   # what senders wrote: text
    out.print(t)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
