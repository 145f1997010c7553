"""A/B variants end to end: each member gets one variant (deterministic), recorded on the delivery; a
variant changes the template or the channels of the main step; the launch pins the template versions."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.engine import Engine

from campaigns.spec import parse_spec
from campaigns.variants import assign
from consent import ledger
from storage.db import session_scope
from storage.tables import Campaign, ConsentAction, ConsentSource, Member
from tests.factories import campaign_spec, make_campaign
from tests.workflows.conftest import bulk_members, deliveries, set_program_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_each_member_gets_their_variants_template_and_it_is_recorded(workers, engine: Engine,
                                                                            smtp_server: Any) -> None:
    program, ids = bulk_members(engine, 200)
    variants = [{"key": "a", "share": 50}, {"key": "b", "share": 50, "template": "weekend_offer"}]
    cid = make_campaign(engine, program, variants=variants)
    spec = parse_spec(campaign_spec(variants=variants))
    async with workers(engine=engine) as rig:
        await rig.finish(await rig.start(cid, page_size=50))
    rows = deliveries(engine, cid)
    assert all(r.variant == assign("spring", r.member_id, spec.variants).key for r in rows)
    share_b = Counter(r.variant for r in rows)["b"] / len(rows)
    assert 0.35 < share_b < 0.65
    subjects = {m.rcpt_tos[0]: m.message["Subject"] for m in smtp_server.messages}
    email = {mid: f"m{i}@test.example" for i, mid in enumerate(ids, start=1)}
    for r in rows:
        subject = subjects[email[r.member_id]]
        assert ("500 bonus points" in subject) == (r.variant == "b"), (r.variant, subject)


async def test_a_channel_variant_sends_its_members_on_its_own_channels(workers, engine: Engine,
                                                                      smtp_server: Any) -> None:
    program, ids = bulk_members(engine, 60)
    set_program_settings(engine, program, {"quiet_hours": {"sms": None}})
    with session_scope(engine) as s:
        for i, mid in enumerate(ids):
            s.execute(update(Member).where(Member.id == mid).values(phone=f"+1415556{i:04d}"))
        ledger.record(session=s, program_id=program, acts=[ledger.ConsentAct(
            member_id=mid, channel="sms", topic="promotions", action=ConsentAction.granted,
            source=ConsentSource.import_) for mid in ids])
    variants = [{"key": "mail", "share": 50}, {"key": "text", "share": 50, "channels": ["sms", "email"]}]
    cid = make_campaign(engine, program, variants=variants, template="weekend_offer")
    async with workers(engine=engine) as rig:
        await rig.finish(await rig.start(cid, page_size=30))
    rows = deliveries(engine, cid)
    assert {(r.variant, r.channel) for r in rows} == {("mail", "email"), ("text", "sms")}
    assert len(smtp_server.recipients()) == sum(1 for r in rows if r.variant == "mail")


async def test_the_campaign_renders_the_template_version_it_launched_with(workers, engine: Engine,
                                                                         smtp_server: Any) -> None:
    from templates.store import TemplateStore

    program, _ = bulk_members(engine, 3)
    store = TemplateStore(engine=engine)
    pinned = store.pin("double_points")              # what launch() does
    files = dict(store.get("double_points").files)
    files["template.yaml"] = files["template.yaml"].replace(
        "double points all week", "TRIPLE points all week").replace(f"version: {pinned}", f"version: {pinned}")
    store.add("double_points", files, note="a newer copy, after the launch")
    cid = make_campaign(engine, program)
    with session_scope(engine) as s:
        s.execute(update(Campaign).where(Campaign.id == cid).values(template_versions={"double_points": pinned}))
    async with workers(engine=engine) as rig:
        await rig.finish(await rig.start(cid, page_size=50))
    assert {m.message["Subject"] for m in smtp_server.messages} >= {"Name1, double points all week at Shop & Co"}
    assert not any("TRIPLE" in m.message["Subject"] for m in smtp_server.messages)


async def test_each_member_gets_a_unique_coupon_once_and_an_empty_pool_fails_the_rest(workers, engine: Engine,
                                                                                     smtp_server: Any) -> None:
    from sqlalchemy import select
    from sqlmodel import Session

    from members.coupons import load_codes
    from storage.tables import CouponCode
    from templates.store import TemplateStore

    program, ids = bulk_members(engine, 5)
    store = TemplateStore(engine=engine)
    files = dict(store.get("double_points").files)
    files["template.yaml"] += "\ncoupon_pool: xmas\n"
    files["email.en.txt"] = "Your code: {{ coupon }}\n" + files["email.en.txt"]
    v = store.add("double_points", files)
    load_codes(engine=engine, program_id=program, pool="xmas", codes=["XMAS-001", "XMAS-002", "XMAS-003"])
    cid = make_campaign(engine, program)
    with session_scope(engine) as s:
        s.execute(update(Campaign).where(Campaign.id == cid).values(template_versions={"double_points": v.version}))
    async with workers(engine=engine) as rig:
        await rig.finish(await rig.start(cid, page_size=50))
    rows = deliveries(engine, cid)
    assert sorted((r.status, r.reason) for r in rows) == [("failed", "coupon_pool_empty")] * 2 + [("sent", None)] * 3
    bodies = [m.message.get_body(("plain",)).get_content() for m in smtp_server.messages]
    codes = sorted(line.split(": ")[1] for b in bodies for line in b.splitlines() if line.startswith("Your code"))
    assert codes == ["XMAS-001", "XMAS-002", "XMAS-003"]
    with Session(engine) as s:
        given = dict(s.execute(select(CouponCode.member_id, CouponCode.code)).all())
    assert len(set(given.values())) == 3 and all(r.member_id in given for r in rows if r.status == "sent")
