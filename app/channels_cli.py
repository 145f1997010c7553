"""`clarion channels ...` (a program's provider accounts) and `clarion outbox` (the sandbox outbox).

Secrets are read from a file (YAML or JSON) or stdin, never from the command line (shell history), and
are shown masked.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from sqlmodel import Session

from app.settings import Settings
from channels.account_store import list_accounts, remove_account, sandbox_counts, sandbox_messages, set_account
from channels.accounts import PROVIDERS, AccountError, parse_account
from members.service import ProgramNotFound, get_program
from storage.db import make_engine
from storage.tables import ChannelAccount

channels_app = typer.Typer(no_args_is_help=True, help="A program's provider accounts (none: the sandbox).")
out = Console()
err = Console(stderr=True)
CHANNELS = ", ".join(PROVIDERS)


def _fail(message: str, code: int = 1) -> typer.Exit:
    err.print("[red]error:[/] ", end="")
    err.print(message, markup=False, highlight=False)    # a value in the message is text, not markup
    return typer.Exit(code)


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None or str(path) == "-":
        text = sys.stdin.read()
    else:
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _fail(f"{path}: not UTF-8 text (byte {exc.start}); save the file as UTF-8") from None
    try:
        data = yaml.safe_load(text) if text.strip() else {}
    except yaml.YAMLError as exc:
        raise _fail(f"the config is not valid YAML/JSON: {exc}", 2) from None
    if not isinstance(data, dict):
        raise _fail("the config must be a mapping of the provider's settings", 2)
    return data


@channels_app.command("list")
def channels_list(program: str) -> None:
    """Each channel's provider for the program (sandbox where none), secrets masked."""
    settings = Settings()
    engine = make_engine(settings.db_url)
    try:
        accounts = list_accounts(engine=engine, program=program, sandbox_allowed=settings.sandbox_allowed)
    except ProgramNotFound as exc:
        raise _fail(str(exc)) from None
    t = Table(title=f"{program}: channels")
    for col in ("channel", "provider", "rate/s", "settings"):
        t.add_column(col)
    for a in accounts:
        provider = ("[yellow]sandbox[/] (recorded, not sent)" if a.sandbox else
                    "[red]none[/] (not available: no account, sandbox off)" if a.provider == "none" else a.provider)
        t.add_row(a.channel, provider, f"{a.rate_per_s:g}" if a.rate_per_s else "-",
                  json.dumps(a.config, ensure_ascii=False) if a.config else "")
    out.print(t)
    out.print("email: the SMTP relay of the settings (CLARION_SMTP_*)")


@channels_app.command("set")
def channels_set(program: str, channel: Annotated[str, typer.Argument(help=CHANNELS)],
                 provider: Annotated[str, typer.Option(help="twilio, telegram, fcm or clarion")],
                 config: Annotated[Path | None, typer.Option(
                     help="YAML or JSON file with the provider's settings ('-' or none: stdin)")] = None,
                 rate: Annotated[float | None, typer.Option(help="messages per second, all workers together")] = None,
                 ) -> None:
    """Set the program's account for a channel; messages go to the provider from then on (workers pick it
    up within CLARION_CHANNEL_REFRESH_S)."""
    data = _read_config(config)
    engine = make_engine(Settings().db_url)
    try:
        view = set_account(engine=engine, program=program, channel=channel, provider=provider, config=data,
                           rate_per_s=rate)
    except ProgramNotFound as exc:
        raise _fail(str(exc)) from None
    except AccountError as exc:
        err.print("[red]error:[/] invalid account")
        for path, message in exc.problems:
            err.print(f"  {path}: {message}")
        raise typer.Exit(2) from None
    out.print(f"{program}/{channel}: {view.provider} {json.dumps(view.config, ensure_ascii=False)}"
              + (f", {view.rate_per_s:g}/s" if view.rate_per_s else ""))


@channels_app.command("remove")
def channels_remove(program: str, channel: str) -> None:
    """Remove the account: the channel goes back to the sandbox."""
    engine = make_engine(Settings().db_url)
    try:
        removed = remove_account(engine=engine, program=program, channel=channel)
    except ProgramNotFound as exc:
        raise _fail(str(exc)) from None
    if not removed:
        raise _fail(f"{program} has no {channel} account")
    out.print(f"{program}/{channel}: removed; the channel is in the sandbox")


@channels_app.command("telegram-webhook")
def channels_telegram_webhook(program: str) -> None:
    """Tell Telegram where the program's bot sends its updates: CLARION_PUBLIC_BASE_URL/webhooks/telegram/PROGRAM,
    with the account's secret token."""
    from channels.telegram import TelegramConfig, set_webhook

    settings = Settings()
    engine = make_engine(settings.db_url)
    with Session(engine) as s:
        try:
            program_id = get_program(s, program).id
        except ProgramNotFound as exc:
            raise _fail(str(exc)) from None
        row = s.scalar(select(ChannelAccount).where(ChannelAccount.program_id == program_id,
                                                    ChannelAccount.channel == "telegram"))
    if row is None:
        raise _fail(f"{program} has no Telegram bot: `clarion channels set {program} telegram --provider telegram`")
    cfg = parse_account("telegram", row.provider, row.config)
    url = f"{settings.base_url}/webhooks/telegram/{program}"
    config = TelegramConfig(bot_token=cfg.bot_token.get_secret_value(), bot_username=cfg.bot_username,  # type: ignore[attr-defined]
                            base_url=cfg.base_url, timeout=cfg.timeout_s,  # type: ignore[attr-defined]
                            webhook_secret=cfg.webhook_secret.get_secret_value())  # type: ignore[attr-defined]
    try:
        asyncio.run(set_webhook(config, url))
    except Exception as exc:  # noqa: BLE001 - one clear line, whatever Telegram said
        raise _fail(f"Telegram refused the webhook: {exc}") from None
    out.print(f"@{config.bot_username} → {url}")


def outbox(program: Annotated[str | None, typer.Option("--program", "-p")] = None,
           channel: Annotated[str | None, typer.Option(help=CHANNELS)] = None,
           limit: Annotated[int, typer.Option(help="the newest N")] = 20,
           full: Annotated[bool, typer.Option(help="print each request whole")] = False) -> None:
    """SANDBOX: the exact provider requests recorded instead of sent, for channels with no account."""
    engine = make_engine(Settings().db_url)
    try:
        rows, total = sandbox_messages(engine=engine, program=program, channel=channel, limit=limit)
        counts = sandbox_counts(engine=engine, program=program)
    except ProgramNotFound as exc:
        raise _fail(str(exc)) from None
    title = f"SANDBOX outbox: {total} recorded, nothing sent (" + \
        (", ".join(f"{c} {n}" for c, n in sorted(counts.items())) or "empty") + ")"
    if full:
        out.print(f"[yellow]{title}[/]")
        for r in rows:
            out.print(f"[bold]#{r.id}[/] {r.channel} delivery {r.delivery_id} {r.created_at:%Y-%m-%d %H:%M:%S}")
            out.print(f"{r.method} {r.url}", markup=False)
            for k, v in r.headers.items():
                out.print(f"{k}: {v}", markup=False)
            out.print(r.body + "\n", markup=False)
        return
    t = Table(title=title, title_style="yellow")
    for col in ("id", "channel", "delivery", "request", "body"):
        t.add_column(col, overflow="fold")
    for r in rows:
        body = r.body if len(r.body) <= 120 else r.body[:117] + "..."
        t.add_row(str(r.id), r.channel, str(r.delivery_id or "-"), f"{r.method} {r.url}", body)
    out.print(t)
