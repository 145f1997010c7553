"""`clarion demo`: seed a demo program, launch a broadcast, show progress, print the report."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta
from pathlib import Path

from rich.console import Console
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.client import Client

from analytics.report import campaign_report
from app import campaigns as service
from app.errors import Conflict
from app.mailbox import list_mail
from app.report_view import follow, print_report
from app.settings import Settings
from app.stack import embedded_stack
from campaigns.spec import load_spec
from members.profile import ConsentGrant, MemberIn
from members.events import ingest_events
from members.service import ensure_program, get_program, upsert_members
from storage.db import make_engine
from storage.tables import Campaign, Delivery, Member, utcnow
from templates.render import Renderer

SPEC = Path(__file__).resolve().parent.parent / "examples" / "double-points.yaml"
TRIGGERED_SPEC = Path(__file__).resolve().parent.parent / "examples" / "thank-you.yaml"
ZONES = ["Europe/Moscow", "Asia/Yekaterinburg", "Asia/Vladivostok", "Europe/London", "America/New_York"]
NAMES = {"ru": ["Анна", "Иван", "Мария", "Олег", "Светлана", "Дмитрий"],
         "en": ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"],
         "de": ["Jonas", "Lena", "Paul"]}


def demo_members(n: int, seed: int = 42) -> list[tuple[None, str, MemberIn]]:
    """Deterministic demo members: ru/en (and a few de, who fall back to en), several time zones,
    addresses at a demo domain; marketing consent for most, revoked for some, none for others."""
    rnd = random.Random(seed)
    out = []
    for i in range(1, n + 1):
        locale = rnd.choices(["ru", "en", "en-US", "de"], weights=[45, 35, 12, 8])[0]
        lang = locale.split("-")[0]
        roll = rnd.random()
        consents = []
        if roll < 0.85:
            consents.append(ConsentGrant(channel="email", topic="promotions", action="granted",
                                         wording_version="demo-v1"))
        elif roll < 0.90:
            consents.append(ConsentGrant(channel="email", topic="promotions", action="revoked"))
        out.append((None, f"DEMO-{i:06d}", MemberIn(
            first_name=rnd.choice(NAMES[lang]), locale=locale, time_zone=rnd.choice(ZONES),
            email=None if rnd.random() < 0.02 else f"member{i:06d}@demo.clarion.example",
            attributes={"tier": rnd.choices(["basic", "silver", "gold"], weights=[70, 20, 10])[0],
                        "points_balance": rnd.randrange(0, 5000, 10)},
            consents=consents,
        )))
    return out


def seed(settings: Settings, members: int, console: Console) -> None:
    engine = make_engine(settings.db_url)
    program = ensure_program(engine=engine, key="demo", name="Clarion Demo Shop", default_locale="en",
                             time_zone="Europe/Moscow", currency="RUB")
    with Session(engine) as s:
        have = s.scalar(select(func.count()).select_from(Member).where(Member.program_id == program.id)) or 0
    if have >= members:
        console.print(f"demo program: {have} members already seeded")
        return
    items = demo_members(members)[have:]
    for i in range(0, len(items), 500):
        upsert_members(engine=engine, program_id=program.id or 0, items=items[i:i + 500])
    console.print(f"demo program: seeded {len(items)} members (ru, en, en-US, de; 5 time zones)")
    engine.dispose()


async def run_demo(settings: Settings, *, members: int = 1200, console: Console | None = None) -> int:
    console = console or Console()
    async with embedded_stack(settings) as stack:
        for name, url in stack.urls.items():
            console.print(f"  {name:<32} {url}")
        await asyncio.to_thread(seed, settings, members, console)
        engine = make_engine(settings.db_url)
        spec = load_spec(SPEC.read_text("utf-8"))
        try:
            view = await service.launch(engine=engine, client=stack.client, settings=settings, spec=spec,
                                        renderer=Renderer())
        except Conflict as exc:
            console.print(f"[yellow]{exc.message}[/]")
        else:
            await follow(view, engine=engine, client=stack.client, console=console)
        with Session(engine) as s:
            cid = s.scalar(select(Campaign.id).where(Campaign.key == spec.key))
        print_report(campaign_report(engine, cid or 0), console)
        await triggered_demo(settings, engine, stack.client, console)
        console.print(f"mailbox {settings.maildir}: {len(list_mail(settings.maildir))} messages "
                      "(list them with `clarion mailbox`)")
        engine.dispose()
    return 0


def demo_purchases(n: int, members: int, seed: int = 7) -> list[dict]:
    """Deterministic purchase events (ids are stable, so a second demo run posts duplicates only)."""
    rnd = random.Random(seed)
    now = utcnow()
    return [{"id": f"demo-purchase-{i:05d}", "type": "purchase", "member": f"DEMO-{rnd.randint(1, members):06d}",
             "occurred_at": (now - timedelta(seconds=n - i)).isoformat(),
             "payload": {"amount": rnd.choice([250, 480, 990, 1000, 1500, 2300, 4100]), "currency": "RUB",
                         "store": f"store-{rnd.randint(1, 12)}"}}
            for i in range(1, n + 1)]


async def triggered_demo(settings: Settings, engine: Engine, client: Client, console: Console,
                         purchases: int = 200, members: int = 1200) -> None:
    """The thank-you campaign reacts to purchases over 1,000 ₽ posted as events by the 'loyalty core'."""
    spec = load_spec(TRIGGERED_SPEC.read_text("utf-8"))
    await service.launch(engine=engine, client=client, settings=settings, spec=spec, renderer=Renderer())
    with Session(engine) as s:
        program_id = get_program(s, spec.program).id or 0
        cid = s.scalar(select(Campaign.id).where(Campaign.program_id == program_id, Campaign.key == spec.key)) or 0
    result = await asyncio.to_thread(ingest_events, engine=engine, program_id=program_id,
                                     items=demo_purchases(purchases, members))
    console.print(f"loyalty core → {purchases} purchase events: {result.accepted} accepted, "
                  f"{result.duplicates} duplicates; campaign {spec.key!r} reacts to those over 1,000 ₽")
    deadline = asyncio.get_running_loop().time() + 60
    last = -1
    while asyncio.get_running_loop().time() < deadline:
        with Session(engine) as s:
            rows = s.scalar(select(func.count()).select_from(Delivery).where(Delivery.campaign_id == cid)) or 0
            waiting = s.scalar(select(func.count()).select_from(Delivery).where(
                Delivery.campaign_id == cid, Delivery.status.in_(("planned", "sending")))) or 0  # type: ignore[attr-defined]
        if rows and not waiting and rows == last:
            break
        last = rows
        await asyncio.sleep(1.0)
    print_report(campaign_report(engine, cid), console)
