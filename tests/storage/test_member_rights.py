"""Member rights (members.rights) on a real SQLite file and, when CI provides it, PostgreSQL: the export holds
everything, and after an erasure none of the member's personal data is left in any text or JSON column of
any table, while every campaign figure is what it was.

The member's data is put where a real run puts it: the member upsert (profile, address, card, consents),
the consent ledger with the proof of a web form (ip, user agent), a double opt-in request, a Telegram link,
a purchase event, a coupon code drawn for the member, and messages sent through the channel registry (SMS,
Telegram and push into the sandbox, an inbox message and a letter into stored messages) with a provider status
report and a conversion."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import JSON, String, Text, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel
from sqlmodel.sql.sqltypes import AutoString

from analytics.report import campaign_report
from analytics.tracking import apply_status
from channels.base import (
    OutboundMessage,
    RecordedRequest,
    StatusEvent,
    current_delivery,
)
from channels.registry import ChannelRegistry, SandboxOutbox
from consent import ledger
from consent.confirmations import Proof, confirm, request_confirmation
from consent.links import create_link
from consent.policy import decide
from members.coupons import ERASED_ASSIGNED_AT, assign_codes, load_codes, pool_status
from members.events import ingest_events
from members.profile import MemberIn
from members.rights import MemberNotFound, erase_member, export_member
from members.service import upsert_members
from storage.db import make_engine, session_scope
from storage.tables import (
    ChannelName,
    Confirmation,
    ConsentAction,
    ConsentRecord,
    ConsentSource,
    CouponCode,
    Delivery,
    Member,
    PushToken,
    Response,
    SandboxMessage,
    StoredMessage,
)
from tests.factories import make_campaign, seed_members

EMAIL = "Zina.Krestovskaya@example.org"
PHONE = "+79123456789"
CHAT = "918273645"
TOKEN = "fcm-zina-device-token-0123456789abcdef"
CARD = "CARD-77331"
IP = "203.0.113.77"
UA = "ZinaBrowser/4.2 (Linux)"
RECEIPT_NO = "R-55512"
# each value is looked for case-insensitively and in any encoding (the phone without "+", as in a form body)
NEEDLES = {"name": "zinaida", "last name and email": "krestovskaya", "phone": "9123456789",
           "address line": "lesnaya", "telegram chat id": CHAT, "push token": TOKEN.lower(),
           "card": CARD.lower(), "ip": IP, "user agent": "zinabrowser", "receipt number": RECEIPT_NO.lower(),
           "store": "tverskaya-12", "purchased item": "zx-pill"}


class _Email:
    async def send(self, msg: OutboundMessage) -> Any:  # pragma: no cover - email is not sent here
        raise AssertionError("no email in these tests")

    async def aclose(self) -> None:
        pass


@dataclasses.dataclass
class World:
    engine: Engine
    program_id: int
    campaign_id: int
    member_id: int
    other_id: int


async def _send(engine: Engine, program_id: int, campaign_id: int, member_id: int) -> None:
    """The member's messages of a campaign run: one per channel through the registry, then their outcomes."""
    registry = ChannelRegistry(engine=engine, email=_Email(), public_base_url="https://clarion.test")  # type: ignore[arg-type]
    plans = [("sms", PHONE, Decimal("0.0500")), ("telegram", CHAT, Decimal(0)), ("push", TOKEN, Decimal(0)),
             ("inbox", "", Decimal(0)), ("direct_mail", "Zinaida Krestovskaya\nul. Lesnaya 17\n170100 Tver\nRU",
                                         Decimal("0.9000"))]
    with session_scope(engine) as s:
        rows = [Delivery(campaign_id=campaign_id, member_id=member_id, step=ch, status="sending", channel=ch, locale="ru",
                         cost=cost) for ch, _, cost in plans]
        s.add_all(rows)
        s.flush()
        ids = [r.id or 0 for r in rows]
    for (channel, to, _), delivery_id in zip(plans, ids, strict=True):
        route = await asyncio.to_thread(registry.route, program_id, channel)
        receipt = await route.channel.send(OutboundMessage(
            delivery_id=delivery_id, to=to, text="Zinaida, double points this weekend",
            title="Zinaida, a gift", html="<p>Dear Zinaida Krestovskaya, ul. Lesnaya 17</p>",
            link="https://shop.example/p?who=zina.krestovskaya", coupon="ZINA-2024",
            member_id=member_id, campaign_id=campaign_id, program_id=program_id, locale="ru"))
        with session_scope(engine) as s:
            s.execute(update(Delivery).where(Delivery.id == delivery_id).values(
                status="queued" if receipt.queued else "sent", provider_message_id=receipt.provider_message_id,
                sent_at=datetime(2024, 5, 1, 10, tzinfo=UTC)))
    await registry.aclose()
    with session_scope(engine) as s:
        sms = s.scalar(select(Delivery.provider_message_id).where(Delivery.id == ids[0]))
        apply_status(session=s, event=StatusEvent(sms or "", "delivered", event_id="tw-delivered-1"),
                     channels=["sms"], program_ids=[program_id])
        s.add(Response(delivery_id=ids[3], kind="converted", value=Decimal("1250.50"),
                       provider_event_id="purchase-1"))


@pytest.fixture
async def world(any_db_url: str):
    engine = make_engine(any_db_url)
    program_id = seed_members(engine, 2)       # M000001, M000002: other members, left as they are
    upsert_members(engine=engine, program_id=program_id, items=[(None, "A1", MemberIn.model_validate({
        "first_name": "Zinaida", "last_name": "Krestovskaya", "email": EMAIL, "phone": PHONE, "locale": "ru",
        "time_zone": "Asia/Yekaterinburg",
        "postal_address": {"line1": "ul. Lesnaya 17", "city": "Tver", "postcode": "170100", "country": "RU"},
        "cards": [{"number": CARD}], "attributes": {"tier": "gold", "birthday": "1984-03-08"},
        "consents": [{"channel": "email", "topic": "promotions"}, {"channel": "sms", "topic": "promotions"}]}))])
    with session_scope(engine) as s:
        member = s.scalar(select(Member).where(Member.external_id == "A1"))
        other = s.scalar(select(Member).where(Member.external_id == "M000001"))
        member.telegram_chat_id = CHAT
        member.preferences = {"quiet_hours": {"from": "22:00", "to": "08:00"}}
        member.whatsapp_inbound_at = datetime(2024, 5, 1, 9, tzinfo=UTC)
        s.add(member)
        s.add(PushToken(member_id=member.id, token=TOKEN, platform="android"))
        mid, oid = member.id or 0, other.id or 0
        ledger.record(session=s, program_id=program_id, acts=[ledger.ConsentAct(
            member_id=mid, channel="telegram", topic="promotions", action=ConsentAction.granted,
            source=ConsentSource.web, wording_version="v3", text_hash="ab" * 32, ip=IP, user_agent=UA)])
        request_confirmation(session=s, program_id=program_id, member_id=mid, channel="email", topics=["news"],
                             proof=Proof(wording_version="v3", ip=IP, user_agent=UA))
        create_link(session=s, program_id=program_id, member_id=mid, channel="telegram", topics=["promotions"])
    result = ingest_events(engine=engine, program_id=program_id, items=[{
        "id": "pos-8841", "type": "purchase", "member": "A1", "occurred_at": "2024-05-02T12:00:00+03:00",
        "payload": {"amount": 1250.5, "currency": "RUB", "store": "tverskaya-12", "receipt_number": RECEIPT_NO,
                    "items": [{"sku": "ZX-PILL-30", "category": "pharmacy", "qty": 1, "price": 1250.5}],
                    "cashier_note": f"asked to mail {EMAIL}"}}])
    assert result.accepted == 1
    campaign_id = make_campaign(engine, program_id)
    await _send(engine, program_id, campaign_id, mid)
    outbox = SandboxOutbox(engine, program_id)   # requests of no delivery: the confirmation sender files them
    for to, filed in (("%2B79123456789", 0), ("m1%40test.example", None)):   # under 0, others under none
        token = current_delivery.set(filed)
        outbox.record(RecordedRequest(channel="sms", provider="twilio", method="POST",
                                      url="https://api.twilio.com/2010-04-01/Messages.json", headers={},
                                      body=f"To={to}&Body=Confirm+your+number"))
        current_delivery.reset(token)
    with session_scope(engine) as s:   # another member's delivery in the same campaign
        s.add(Delivery(campaign_id=campaign_id, member_id=oid, status="delivered", channel="email", locale="en",
                       cost=Decimal("0.0010"), provider_message_id="<d9.c1@clarion.test>"))
    load_codes(engine=engine, program_id=program_id, pool="xmas", codes=["XMAS-001", "XMAS-002", "XMAS-003"])
    with session_scope(engine) as s:
        s.execute(update(Confirmation).where(Confirmation.member_id == mid)
                  .values(provider_message_id="<confirm-1@clarion.test>"))
        assert assign_codes(session=s, program_id=program_id, pool="xmas", member_ids=[mid, oid]) == {
            mid: "XMAS-001", oid: "XMAS-002"}
    yield World(engine, program_id, campaign_id, mid, oid)
    engine.dispose()


def found_in_database(engine: Engine) -> dict[str, set[str]]:
    """needle → the table.column of every text or JSON column (all tables, from the metadata) holding it."""
    found: dict[str, set[str]] = {}
    with Session(engine) as s:
        for table in SQLModel.metadata.sorted_tables:
            columns = [c for c in table.columns if isinstance(c.type, String | Text | JSON | AutoString)]
            for column in columns:
                for value in s.scalars(select(column)):
                    text = (value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).lower()
                    for name, needle in NEEDLES.items():
                        if needle.lower() in text:
                            found.setdefault(name, set()).add(f"{table.name}.{column.name}")
    return found


def dump(engine: Engine) -> dict[str, list[tuple]]:
    with Session(engine) as s:
        return {t.name: sorted(tuple(map(repr, r)) for r in s.execute(select(t)).all())
                for t in SQLModel.metadata.sorted_tables}


def report(w: World) -> dict[str, Any]:
    out = campaign_report(w.engine, w.campaign_id).to_dict()
    out.pop("generated_at")
    return out


# --- export -------------------------------------------------------------------------------------


def test_export_holds_the_profile_consent_proofs_events_deliveries_and_messages(world):
    x = export_member(engine=world.engine, program="shop", external_id="A1").model_dump(mode="json", by_alias=True)
    assert (x["schema"], x["schema_version"]) == ("clarion.member-export", 1)
    assert list(x) == ["schema", "schema_version", "generated_at", "program", "member", "cards", "push_devices",
                       "consent", "confirmations", "links", "events", "deliveries", "stored_messages",
                       "sandbox_requests", "coupons"]
    m = x["member"]
    assert (m["email"], m["phone"], m["telegram_chat_id"], m["erased_at"]) == (
        "Zina.Krestovskaya@example.org", PHONE, CHAT, None)
    assert m["postal_address"]["line1"] == "ul. Lesnaya 17" and m["attributes"]["birthday"] == "1984-03-08"
    assert x["cards"][0]["number"] == CARD and x["push_devices"][0]["token"] == TOKEN
    proof = next(r for r in x["consent"]["ledger"] if r["channel"] == "telegram")
    assert (proof["ip"], proof["user_agent"], proof["wording_version"], proof["source"]) == (IP, UA, "v3", "web")
    assert {(c["channel"], c["topic"], c["status"]) for c in x["consent"]["state"]} >= {
        ("email", "promotions", "granted"), ("email", "news", "requested"), ("telegram", "promotions", "granted")}
    assert [(c["channel"], c["address"], c["topics"], c["status"], c["provider_message_id"])
            for c in x["confirmations"]] == [("email", EMAIL, ["news"], "pending", "<confirm-1@clarion.test>")]
    assert x["links"][0]["channel"] == "telegram"
    assert [(c["pool"], c["code"], bool(c["assigned_at"])) for c in x["coupons"]] == [("xmas", "XMAS-001", True)]
    assert x["events"][0]["payload"]["receipt_number"] == RECEIPT_NO
    by_channel = {d["channel"]: d for d in x["deliveries"]}
    assert set(by_channel) == {"sms", "telegram", "push", "inbox", "direct_mail"}
    assert by_channel["sms"]["status"] == "delivered" and by_channel["sms"]["cost"] == "0.0500"
    assert [r["kind"] for r in by_channel["sms"]["responses"]] == ["delivered"]
    assert by_channel["inbox"]["responses"][0]["value"] == "1250.5000"
    assert all(d["campaign"] == "spring" for d in x["deliveries"])
    assert {s["channel"] for s in x["stored_messages"]} == {"inbox", "direct_mail"}
    assert sorted((r["channel"], bool(r["delivery_id"])) for r in x["sandbox_requests"]) == [
        ("push", True), ("sms", False), ("sms", True), ("telegram", True)]
    assert "9123456789" in next(r for r in x["sandbox_requests"] if r["channel"] == "sms")["body"]
    other = export_member(engine=world.engine, program="shop", external_id="M000001")
    assert other.deliveries[0].provider_message_id == "<d9.c1@clarion.test>"
    assert [r.body for r in other.sandbox_requests] == ["To=m1%40test.example&Body=Confirm+your+number"]
    assert [c.code for c in other.coupons] == ["XMAS-002"]


def test_unknown_member_is_not_found_naming_the_external_id(world):
    with pytest.raises(MemberNotFound, match="'NOBODY'"):
        export_member(engine=world.engine, program="shop", external_id="NOBODY")
    with pytest.raises(MemberNotFound, match="'NOBODY'"):
        erase_member(engine=world.engine, program="shop", external_id="NOBODY")


# --- erasure ------------------------------------------------------------------------------------


def test_after_erasure_no_personal_value_is_left_in_any_text_or_json_column(world):
    before = found_in_database(world.engine)
    assert set(before) == set(NEEDLES), "the seeding must put every value somewhere"
    assert {"member.email", "consent_record.ip", "confirmation.address", "sandbox_message.body",
            "stored_message.body", "stored_message.data", "event.payload", "card.number", "push_token.token",
            "delivery.provider_message_id"} <= set().union(*before.values())
    erase_member(engine=world.engine, program="shop", external_id="A1")
    assert found_in_database(world.engine) == {}
    other = export_member(engine=world.engine, program="shop", external_id="M000001")
    assert (other.member.email, other.member.first_name) == ("m1@test.example", "Name1")
    assert [r.body for r in other.sandbox_requests] == ["To=m1%40test.example&Body=Confirm+your+number"]


def test_campaign_report_is_identical_before_and_after_erasure(world):
    before = report(world)
    locales = {x["key"]: x for x in before["by_locale"]}
    assert before["total"]["sent"] == 5 and before["total"]["queued"] == 1 and locales["ru"]["audience"] == 5
    erase_member(engine=world.engine, program="shop", external_id="A1")
    assert report(world) == before


def test_erasure_keeps_the_de_identified_facts_and_says_when(world):
    done = erase_member(engine=world.engine, program="shop", external_id="A1",
                        now=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert done.external_id.startswith("erased-") and len(done.external_id) == 39
    assert done.erased_at == datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)
    x = export_member(engine=world.engine, program="shop", external_id=done.external_id)
    m = x.member
    assert (m.first_name, m.last_name, m.email, m.phone, m.telegram_chat_id, m.postal_address, m.preferences,
            m.attributes, m.locale, m.time_zone, m.whatsapp_inbound_at) == (
        None, None, None, None, None, None, None, {}, None, None, None)
    assert m.erased_at == done.erased_at and m.kind == "individual"
    assert (x.cards, x.push_devices, x.links, x.sandbox_requests) == ([], [], [], [])
    assert [e.payload for e in x.events] == [{"amount": 1250.5, "currency": "RUB"}]
    assert [(c.address, c.status) for c in x.confirmations] == [(None, "expired")]
    proofs = [r for r in x.consent.ledger if r.action != "revoked"]
    assert proofs and all(r.ip is None and r.user_agent is None for r in proofs)
    assert any(r.wording_version == "v3" and r.text_hash == "ab" * 32 for r in proofs)
    assert sorted((s.channel, s.body, s.title, s.link, s.coupon, s.data, s.state) for s in x.stored_messages) == [
        ("direct_mail", "", None, None, None, {}, "expired"), ("inbox", "", None, None, None, {}, "expired")]
    telegram = next(d for d in x.deliveries if d.channel == "telegram")
    assert telegram.provider_message_id.startswith("erased:")
    assert [r.kind for d in x.deliveries for r in d.responses] == ["delivered", "converted"]
    assert x.coupons == []
    with Session(world.engine) as s:
        assert s.scalar(select(func.count()).select_from(Member).where(Member.external_id == "A1")) == 0


def test_an_erased_members_coupon_code_stays_given_but_names_nobody_and_no_time(world):
    with Session(world.engine) as s:
        drawn = s.scalar(select(CouponCode.assigned_at).where(CouponCode.code == "XMAS-001"))
    erase_member(engine=world.engine, program="shop", external_id="A1")
    with Session(world.engine) as s:
        rows = {c.code: c for c in s.scalars(select(CouponCode))}
        assert pool_status(session=s, program_id=world.program_id, pool="xmas") == (3, 2)
    assert rows["XMAS-001"].member_id is None and rows["XMAS-001"].assigned_at != drawn
    assert rows["XMAS-001"].assigned_at.replace(tzinfo=UTC) == ERASED_ASSIGNED_AT
    assert (rows["XMAS-002"].member_id, rows["XMAS-003"].member_id) == (world.other_id, None)
    with Session(world.engine) as s:    # nothing in the database ties a code to the erased member now
        assert s.scalar(select(func.count()).select_from(CouponCode).where(
            CouponCode.member_id == world.member_id)) == 0
    new_id = seed_members(world.engine, 2, start=50) and _member_id(world.engine, "M000050")
    with session_scope(world.engine) as s:   # never drawn again: the next member gets the last free code
        assert assign_codes(session=s, program_id=world.program_id, pool="xmas", member_ids=[new_id]) == {
            new_id: "XMAS-003"}
        other = _member_id(world.engine, "M000051")
        assert assign_codes(session=s, program_id=world.program_id, pool="xmas", member_ids=[other]) == {}


def test_a_coupon_draw_in_flight_at_erasure_is_unlinked_too(world):
    """A page drawing the member's code (another pool) when the erasure comes: the erasure waits for it and
    unlinks that code as well (PostgreSQL: the draw's per-member lock; SQLite: the draw's write lock)."""
    load_codes(engine=world.engine, program_id=world.program_id, pool="summer", codes=["SUN-1", "SUN-2"])
    done: list[Any] = []
    with session_scope(world.engine) as s:
        assert assign_codes(session=s, program_id=world.program_id, pool="summer",
                            member_ids=[world.member_id]) == {world.member_id: "SUN-1"}
        eraser = threading.Thread(target=lambda: done.append(
            erase_member(engine=world.engine, program="shop", external_id="A1")))
        eraser.start()
        eraser.join(timeout=0.5)
        assert eraser.is_alive() and not done        # waits for the draw's transaction
    eraser.join(timeout=60)
    assert done
    with Session(world.engine) as s:
        assert sorted(s.execute(select(CouponCode.code, CouponCode.member_id).where(
            CouponCode.code.in_(["SUN-1", "XMAS-001"]))).all()) == [("SUN-1", None), ("XMAS-001", None)]


def _member_id(engine: Engine, external_id: str) -> int:
    with Session(engine) as s:
        return s.scalar(select(Member.id).where(Member.external_id == external_id)) or 0


def test_an_erased_members_pending_double_opt_in_is_never_sent(world, tmp_path, smtp_server):
    from temporalio.testing import ActivityEnvironment

    from activities.confirmations import ConfirmationActivities
    from app.settings import Settings
    from app.worker import channel_registry, signer
    from templates.render import Renderer
    from workflows.contracts import SendConfirmations

    erase_member(engine=world.engine, program="shop", external_id="A1")
    settings = Settings(var_dir=tmp_path, smtp_host=smtp_server.host, smtp_port=smtp_server.port,
                        public_base_url="https://clarion.example")
    acts = ConfirmationActivities(engine=world.engine, registry=channel_registry(settings, world.engine),
                                  renderer=Renderer(), signer=signer(settings), base_url=settings.base_url,
                                  message_id_domain="clarion.example")
    result = asyncio.run(ActivityEnvironment().run(acts.send_confirmations, SendConfirmations()))
    assert (result.sent, result.in_doubt, smtp_server.recipients()) == (0, 0, [])
    with Session(world.engine) as s:
        assert s.execute(select(Confirmation.status, Confirmation.address, Confirmation.sent_at)).all() == [
            ("expired", None, None)]


def test_erased_member_is_never_sent_anything_again(world):
    with session_scope(world.engine) as s:      # the double opt-in message went out before the erasure
        s.execute(update(Confirmation).values(status="sent"))
    erase_member(engine=world.engine, program="shop", external_id="A1")
    with session_scope(world.engine) as s:      # its link, used afterwards, confirms nothing
        assert confirm(session=s, confirmation_id=s.scalar(select(Confirmation.id)), proof=Proof()) is None
    with Session(world.engine) as s:
        revoked = s.execute(select(ConsentRecord.channel, ConsentRecord.topic, ConsentRecord.source).where(
            ConsentRecord.member_id == world.member_id, ConsentRecord.action == "revoked")).all()
        for channel in ChannelName:
            states = ledger.states_for(session=s, member_ids=[world.member_id], channel=channel)[world.member_id]
            for topic in ("promotions", "news", "service"):
                assert not decide(states, topic=topic, channel=channel).allowed, (channel, topic)
    assert sorted(revoked) == sorted((c.value, "*", "api") for c in ChannelName)


def test_erasing_again_changes_nothing_and_answers_the_same(world):
    first = erase_member(engine=world.engine, program="shop", external_id="A1")
    before = dump(world.engine)
    again = erase_member(engine=world.engine, program="shop", external_id=first.external_id,
                         now=datetime.now(UTC) + timedelta(days=3))
    assert again == first
    assert dump(world.engine) == before
    with pytest.raises(MemberNotFound, match="'A1'"):   # the old id is not kept anywhere
        erase_member(engine=world.engine, program="shop", external_id="A1")


def test_erasing_again_scrubs_what_a_send_in_flight_left_behind(world):
    first = erase_member(engine=world.engine, program="shop", external_id="A1")
    with session_scope(world.engine) as s:    # a batch that loaded the member before the erasure finishes now
        d = Delivery(campaign_id=world.campaign_id, member_id=world.member_id, step="late", status="sent",
                     channel="sms", locale="ru")
        s.add(d)
        s.flush()
        s.add(SandboxMessage(program_id=world.program_id, delivery_id=d.id, channel="sms", provider="twilio",
                             method="POST", url="https://api.twilio.com/x", body="To=%2B79123456789&Body=Zinaida"))
        s.add(StoredMessage(program_id=world.program_id, campaign_id=world.campaign_id, member_id=world.member_id,
                            delivery_id=d.id, channel="inbox", title="Zinaida", body="Dear Zinaida"))
    assert set(found_in_database(world.engine)) == {"name", "phone"}
    assert erase_member(engine=world.engine, program="shop", external_id=first.external_id) == first
    assert found_in_database(world.engine) == {}


def test_the_old_external_id_pushed_again_is_a_new_member(world):
    done = erase_member(engine=world.engine, program="shop", external_id="A1")
    created, updated = upsert_members(engine=world.engine, program_id=world.program_id,
                                      items=[(None, "A1", MemberIn(email="new@example.org"))])
    assert (created, updated) == (1, 0)
    x = export_member(engine=world.engine, program="shop", external_id="A1")
    assert x.member.email == "new@example.org" and x.member.erased_at is None
    assert (x.deliveries, x.events, x.consent.ledger) == ([], [], [])
    assert export_member(engine=world.engine, program="shop", external_id=done.external_id).member.erased_at


def test_nothing_personal_is_logged(world, caplog):
    with caplog.at_level(logging.DEBUG):
        export_member(engine=world.engine, program="shop", external_id="A1")
        done = erase_member(engine=world.engine, program="shop", external_id="A1")
    logged = caplog.text.lower()
    assert "erased" in logged and str(world.member_id) in logged
    assert not [n for n in NEEDLES.values() if n.lower() in logged]
    assert "'a1'" not in logged and done.external_id.lower() not in logged


def test_an_erased_member_is_in_no_audience_any_more(world):
    from campaigns.audience import audience_clause
    from campaigns.segments import Audience
    from storage.tables import Member

    def everyone() -> set[str]:
        with Session(world.engine) as s:
            return set(s.scalars(select(Member.external_id).where(
                audience_clause(1, Audience.model_validate({"all": True})))))

    assert "A1" in everyone()
    erase_member(engine=world.engine, program="shop", external_id="A1")
    assert not any(e == "A1" or e.startswith("erased-") for e in everyone())
