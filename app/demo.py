"""`clarion demo`: seed a demo program, launch an email broadcast, an omnichannel broadcast with fallbacks
and a triggered campaign, show progress, print the reports (per channel)."""

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
from members.service import ensure_program, get_program, set_program_settings, upsert_members
from storage.db import make_engine
from storage.tables import Campaign, Delivery, Member, utcnow
from app.worker import stored_renderer
from templates.render import Renderer

SPEC = Path(__file__).resolve().parent.parent / "examples" / "double-points.yaml"
TRIGGERED_SPEC = Path(__file__).resolve().parent.parent / "examples" / "thank-you.yaml"
OMNI_SPEC = Path(__file__).resolve().parent.parent / "examples" / "weekend-offer.yaml"
REFUSED_NUMBER = "+15005550001"   # Twilio's magic test number for "invalid number": the sandbox refuses it too
CITIES = {"ru": [("ул. Тверская, д. 7, кв. 12", "125009", "Москва", "RU"), ("Невский пр., д. 28", "191186",
                                                                         "Санкт-Петербург", "RU")],
          "en": [("221B Baker Street", "NW1 6XE", "London", "GB"), ("350 Fifth Avenue", "10118", "New York", "US")]}
ZONES = ["Europe/Moscow", "Asia/Yekaterinburg", "Asia/Vladivostok", "Europe/London", "America/New_York"]
NAMES = {"ru": ["Анна", "Иван", "Мария", "Олег", "Светлана", "Дмитрий"],
         "en": ["Alice", "Bob", "Carol", "Dave", "Erin", "Frank"],
         "de": ["Jonas", "Lena", "Paul"]}


def demo_members(n: int, seed: int = 42) -> list[tuple[None, str, MemberIn]]:
    """Deterministic demo members: ru/en (and a few de, who fall back to en), several time zones,
    addresses at a demo domain; marketing consent for most, revoked for some, none for others. Some have a
    phone (SMS or WhatsApp consent; a few a number the provider refuses), a loyalty card, a postal address,
    or consent to Telegram and push (linked chats and devices are added by ``link_demo_devices``)."""
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
        phone = None
        extra = rnd.random()
        if extra < 0.08:
            consents.append(ConsentGrant(channel="telegram", topic="promotions", wording_version="demo-v1"))
        elif extra < 0.18:
            consents.append(ConsentGrant(channel="push", topic="promotions", wording_version="demo-v1"))
        elif extra < 0.26:
            phone = f"+7916{i:07d}"
            consents.append(ConsentGrant(channel="whatsapp", topic="promotions", wording_version="demo-v1"))
        elif extra < 0.36:
            phone = REFUSED_NUMBER if extra < 0.29 else f"+7916{i:07d}"
            consents.append(ConsentGrant(channel="sms", topic="promotions", wording_version="demo-v1"))
        cards = [{"number": f"2770{i:08d}"}] if rnd.random() < 0.5 else []
        street, postcode, city, country = rnd.choice(CITIES.get(lang, CITIES["en"]))
        postal = {"line1": street, "postcode": postcode, "city": city, "country": country} \
            if rnd.random() < 0.3 else None
        out.append((None, f"DEMO-{i:06d}", MemberIn(
            first_name=rnd.choice(NAMES[lang]), locale=locale, time_zone=rnd.choice(ZONES),
            email=None if rnd.random() < 0.02 else f"member{i:06d}@demo.clarion.example", phone=phone,
            attributes={"tier": rnd.choices(["basic", "silver", "gold"], weights=[70, 20, 10])[0],
                        "points_balance": rnd.randrange(0, 5000, 10)},
            consents=consents, cards=cards, postal_address=postal,
        )))
    return out


def link_demo_devices(engine: Engine, program_id: int) -> None:
    """What the demo's members did in the app and the bot: members who consented to Telegram linked a chat
    (in production: the deep link and /start), those who consented to push registered a device."""
    from storage.db import session_scope
    from storage.tables import ConsentState, PushToken

    with session_scope(engine) as s:
        rows = s.execute(select(ConsentState.member_id, ConsentState.channel).where(
            ConsentState.program_id == program_id, ConsentState.channel.in_(("telegram", "push")),  # type: ignore[attr-defined]
            ConsentState.status == "granted")).all()
        for member_id, channel in rows:
            if channel == "telegram":
                s.get(Member, member_id).telegram_chat_id = str(500_000_000 + member_id)  # type: ignore[union-attr]
            else:
                s.add(PushToken(member_id=member_id, token=f"demo-device-{member_id:06d}-" + "f" * 40,
                                platform="android"))


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
    link_demo_devices(engine, program.id or 0)
    # the demo runs at any hour: no quiet hours (by default SMS, WhatsApp, Telegram and push wait for 09:00)
    set_program_settings(engine=engine, key="demo", data={
        "quiet_hours": {c: None for c in ("sms", "whatsapp", "telegram", "push")}})
    console.print(f"demo program: seeded {len(items)} members (ru, en, en-US, de; 5 time zones; phones, cards, "
                  "postal addresses, linked Telegram chats and app devices for some); quiet hours off")
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
                                        renderer=stored_renderer(engine, settings))
        except Conflict as exc:
            console.print(f"[yellow]{exc.message}[/]")
        else:
            await follow(view, engine=engine, client=stack.client, console=console)
        with Session(engine) as s:
            cid = s.scalar(select(Campaign.id).where(Campaign.key == spec.key))
        print_report(campaign_report(engine, cid or 0), console)
        await omnichannel_demo(settings, engine, stack.client, console)
        console.print(f"preference center of member DEMO-000001 (open it while `clarion up` runs): "
                      f"{preference_link(settings, engine, 'DEMO-000001')}")
        await triggered_demo(settings, engine, stack.client, console)
        console.print(f"mailbox {settings.maildir}: {len(list_mail(settings.maildir))} messages "
                      "(list them with `clarion mailbox`)")
        engine.dispose()
    return 0


async def omnichannel_demo(settings: Settings, engine: Engine, client: Client, console: Console) -> None:
    """One campaign over every channel, in a fallback order; the per-channel report; where the
    sandboxed requests, the tills' receipts, the inbox and the letters are."""
    from channels.account_store import list_accounts, sandbox_counts
    from storage.tables import StoredMessage

    spec = load_spec(OMNI_SPEC.read_text("utf-8"))
    sandboxed = [a.channel for a in list_accounts(engine=engine, program=spec.program) if a.sandbox]
    console.print(f"\n[bold]{spec.key}[/]: channels in fallback order {', '.join(c.value for c in spec.channels)}; "
                  f"[yellow]sandbox (recorded, not sent): {', '.join(sandboxed) or 'none'}[/]")
    try:
        view = await service.launch(engine=engine, client=client, settings=settings, spec=spec, renderer=stored_renderer(engine, settings))
    except Conflict as exc:
        console.print(f"[yellow]{exc.message}[/]")
    else:
        await follow(view, engine=engine, client=client, console=console)
    with Session(engine) as s:
        cid = s.scalar(select(Campaign.id).where(Campaign.key == spec.key)) or 0
        fell_back = s.scalar(select(func.count()).select_from(Delivery).where(
            Delivery.campaign_id == cid, Delivery.attempts.is_not(None))) or 0  # type: ignore[union-attr]
        stored = dict(s.execute(select(StoredMessage.channel, func.count()).where(
            StoredMessage.campaign_id == cid).group_by(StoredMessage.channel)).all())
    print_report(campaign_report(engine, cid), console)
    console.print(f"fallbacks: {fell_back} deliveries went to a later channel after a permanent failure "
                  f"(e.g. SMS to {REFUSED_NUMBER}, a number the provider refuses, went by email)")
    counts = sandbox_counts(engine=engine, program=spec.program)
    console.print("[yellow]sandbox outbox[/] (`clarion outbox`): " +
                  (", ".join(f"{c} {n}" for c, n in sorted(counts.items())) or "empty"))
    console.print("kept by Clarion: " + ", ".join(f"{c} {n}" for c, n in sorted(stored.items())) +
                  " (tills: GET /api/v1/pos/receipt-messages; app: GET /api/v1/members/{id}/inbox)")
    for pdf in sorted((settings.var_dir / "direct_mail").glob(f"{spec.program}/{spec.key}/*.pdf")):
        console.print(f"direct mail print batch: {pdf} (`clarion direct-mail batches {spec.program} {spec.key}`)")


def preference_link(settings: Settings, engine: Engine, external_id: str) -> str:
    from activities.messages import MessageBuilder
    from app.worker import signer

    with Session(engine) as s:
        member_id = s.scalar(select(Member.id).where(Member.external_id == external_id)) or 0
    return MessageBuilder(renderer=Renderer(), signer=signer(settings), base_url=settings.base_url,
                          unsubscribe_mailto=settings.unsubscribe_mailto).preferences_url(member_id)


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
    await service.launch(engine=engine, client=client, settings=settings, spec=spec, renderer=stored_renderer(engine, settings))
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
