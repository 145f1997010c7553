"""The campaign report against figures worked out by hand (SQLite and PostgreSQL): a campaign of 10,000 treated
members converting at 3.0% against 1,000 controls at 2.0%, with costs, revenue, opens, clicks and replies laid
out so that every rate, the uplift's interval and p-value, incremental revenue, ROI and the daily curve (in the
program's time zone) have a known answer."""

from __future__ import annotations

import csv
import io
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import pytest
from sqlalchemy import insert, select

from analytics.report import CSV_COLUMNS, campaign_report, compare_campaigns
from analytics.responses import CLICKED, CONVERTED, OPENED, OPENED_MACHINE, REPLIED, UNSUBSCRIBED
from members.service import ensure_program
from storage.db import make_engine, session_scope
from storage.tables import Campaign, Delivery, Member, Response
from tests.factories import make_campaign

T0 = datetime(2026, 11, 2, 10, 0, tzinfo=UTC)        # 13:00 in Moscow
EMAIL, SMS = Decimal("0.001"), Decimal("0.05")


def _treated_row(i: int) -> dict:
    email = i < 8000
    flags = 0
    revenue = None
    if i < 2000:
        flags = OPENED
    elif i < 2400:
        flags = CLICKED | OPENED
    elif i < 2900:
        flags = OPENED_MACHINE
    elif i < 2910:
        flags = UNSUBSCRIBED
    elif 3000 <= i < 3200 or 8000 <= i < 8100:
        flags, revenue = CONVERTED, Decimal(50)
    elif 8100 <= i < 8120:
        flags = REPLIED
    return {"status": "sent" if email else "delivered", "channel": "email" if email else "sms",
            "locale": "en" if i < 5000 else "ru", "variant": "a" if i % 2 == 0 else "b",
            "segment": "gold" if i < 1000 else "other", "response_flags": flags, "revenue": revenue,
            "cost": EMAIL if email else SMS, "sent_at": T0 if i < 5000 else T0 + timedelta(days=1)}


def _control_row(j: int) -> dict:
    converted = j < 20
    return {"status": "held_out", "reason": "control", "channel": "email", "locale": "en" if j < 500 else "ru",
            "segment": "gold" if j < 100 else "other", "response_flags": CONVERTED if converted else 0,
            "revenue": Decimal(50) if converted else None, "created_at": T0}


@pytest.fixture
def world(any_db_url):
    eng = make_engine(any_db_url)
    program = ensure_program(engine=eng, key="shop", name="Shop", time_zone="Europe/Moscow", currency="EUR")
    cid = make_campaign(eng, program.id, holdout=0.1, segments={"gold": {"field": "tier", "value": "gold"}},
                        variants=[{"key": "a", "share": 50}, {"key": "b", "share": 50}])
    rows = ([_treated_row(i) for i in range(10_000)] + [_control_row(j) for j in range(1_000)]
            + [{"status": "held_out", "reason": "control_unreachable", "channel": "email", "locale": "en"}] * 50
            + [{"status": "suppressed", "reason": "no_consent", "channel": "email", "locale": "en", "variant": "a"}] * 100
            + [{"status": "failed", "reason": "provider_failed", "channel": "sms", "locale": "ru", "variant": "b"}] * 30
            + [{"status": "planned", "channel": "email", "locale": "en", "variant": "a"}] * 5)
    now = datetime.now(UTC)
    with session_scope(eng) as s:
        s.execute(insert(Member), [{"program_id": program.id, "external_id": f"X{k}", "attributes": {},
                                    "created_at": now, "updated_at": now} for k in range(len(rows))])
        ids = list(s.scalars(select(Member.id).where(Member.program_id == program.id).order_by(Member.id)))
        keys = ("status", "reason", "channel", "locale", "variant", "segment", "response_flags", "revenue",
                "cost", "sent_at", "created_at")
        full = [{"campaign_id": cid, "member_id": mid, "step": "main", "occurrence": "wave-1",
                 "updated_at": now, **{k: r.get(k) for k in keys}} for mid, r in zip(ids, rows, strict=True)]
        for r in full:
            r["response_flags"] = r["response_flags"] or 0
            r["created_at"] = r["created_at"] or now
        s.execute(insert(Delivery), full)
        by_member = dict(s.execute(select(Delivery.member_id, Delivery.id).where(Delivery.campaign_id == cid)).all())
        responses = []
        for k, (mid, r) in enumerate(zip(ids, rows, strict=True)):
            if r.get("response_flags", 0) & CONVERTED:
                control = r["status"] == "held_out"
                at = (T0 + timedelta(hours=2)) if control else r["sent_at"] + timedelta(days=1)
                responses.append({"delivery_id": by_member[mid], "campaign_id": cid, "kind": "converted", "at": at,
                                  "value": Decimal(50), "detail": "control" if control else None,
                                  "provider_event_id": f"p{k}"})
        # the program's midnight (Moscow, UTC+3): 20:59:59 UTC is still Nov 2 there, 21:00:00 UTC is Nov 3
        responses += [{"delivery_id": by_member[ids[0]], "campaign_id": cid, "kind": "opened",
                       "at": datetime(2026, 11, 2, 20, 59, 59, tzinfo=UTC), "provider_event_id": "o1"},
                      {"delivery_id": by_member[ids[1]], "campaign_id": cid, "kind": "opened",
                       "at": datetime(2026, 11, 2, 21, 0, 0, tzinfo=UTC), "provider_event_id": "o2"}]
        s.execute(insert(Response), responses)
    yield eng, cid
    eng.dispose()


def test_totals_rates_uplift_and_money_match_the_hand_computed_figures(world):
    eng, cid = world
    r = campaign_report(eng, cid)
    t = r.total
    assert (t.audience, t.held_out, t.control, t.suppressed, t.failed, t.pending) == (11_185, 1_050, 1_000, 100, 30, 5)
    assert (t.sent, t.delivered, t.reached, t.treated) == (10_000, 2_000, 10_000, 10_000)
    assert (t.opened, t.opened_machine, t.clicked, t.unsubscribed, t.replied) == (2_400, 500, 400, 10, 20)
    assert (t.converted, t.treated_converted, t.control_converted) == (300, 300, 20)
    assert (t.revenue, t.control_revenue, t.cost) == (Decimal(15_000), Decimal(1_000), Decimal(108))
    assert t.responded == 400 + 20 + 300
    d = r.to_dict()["total"]
    assert d["delivery_rate"] == pytest.approx(0.2) and d["open_rate"] == pytest.approx(0.24)
    assert d["click_rate"] == pytest.approx(0.04) and d["response_rate"] == pytest.approx(0.072)
    assert d["conversion_rate"] == pytest.approx(0.03) and d["control_conversion_rate"] == pytest.approx(0.02)
    u = d["uplift"]
    # by hand (analytics.uplift's docstring): 1.0 point, 95% CI [0.0701, 1.9299] points, p = 0.0728
    assert u["uplift"] == pytest.approx(0.01)
    assert (u["ci_low"], u["ci_high"]) == (pytest.approx(0.000701, abs=1e-6), pytest.approx(0.019299, abs=1e-6))
    assert u["p_value"] == pytest.approx(0.0728, abs=1e-4) and u["significant"] is False
    assert d["incremental_conversions"] == pytest.approx(100)
    assert d["incremental_revenue"] == pytest.approx(5_000)                 # (1.50 − 1.00) × 10,000
    assert d["roi"] == pytest.approx((5_000 - 108) / 108, abs=1e-4)
    assert d["cost_per_response"] == pytest.approx(0.15)                     # 108 / 720
    assert d["cost_per_conversion"] == pytest.approx(1.08)                   # 108 / 100 incremental
    assert d["suppressed_by_reason"] == {"no_consent": 100}
    assert r.failed_by_reason == {"provider_failed": 30}


def test_breakdowns_by_channel_locale_variant_segment(world):
    eng, cid = world
    r = campaign_report(eng, cid)
    email, sms = r.by_channel["email"], r.by_channel["sms"]
    assert (email.sent, email.converted, email.cost, email.held_out) == (8_000, 200, Decimal(8), 0)
    assert (sms.sent, sms.delivered, sms.converted, sms.failed, sms.cost) == (2_000, 2_000, 100, 30, Decimal(100))
    assert email.derived(with_uplift=False)["uplift"] is None
    en, ru = (r.by_locale[k].derived() for k in ("en", "ru"))
    assert en["conversion_rate"] == pytest.approx(0.04) and en["control_conversion_rate"] == pytest.approx(0.04)
    assert en["uplift"]["uplift"] == pytest.approx(0)
    assert ru["uplift"]["uplift"] == pytest.approx(0.02) and ru["uplift"]["control"] == 500
    assert list(r.by_variant) == ["(holdout)", "a", "b"]
    for key in ("a", "b"):   # each variant against the whole control group
        v = r.by_variant[key].derived()
        assert v["uplift"]["treated"] == 5_000 and v["uplift"]["control"] == 1_000
        assert v["uplift"]["uplift"] == pytest.approx(0.01)
    assert r.by_variant["(holdout)"].held_out == 1_050
    gold = r.by_segment["gold"]
    assert (gold.treated, gold.control, gold.opened) == (1_000, 100, 1_000)
    assert set(r.by_segment) == {"gold", "other"} and list(r.by_step) == ["main"]


def test_days_are_the_programs_local_days_with_no_holes(world):
    eng, cid = world
    days = {d.day: d for d in campaign_report(eng, cid).by_day}
    assert list(days) == [date(2026, 11, 2), date(2026, 11, 3), date(2026, 11, 4)]
    nov2, nov3, nov4 = days.values()
    assert (nov2.sent, nov2.cost, nov2.opened, nov2.conversions, nov2.control_conversions) == (
        5_000, Decimal(5), 1, 0, 20)
    assert (nov3.sent, nov3.cost, nov3.opened, nov3.conversions, nov3.revenue) == (
        5_000, Decimal(103), 1, 200, Decimal(10_000))
    assert (nov4.sent, nov4.conversions, nov4.revenue) == (0, 100, Decimal(5_000))


def test_csv_has_the_documented_columns_and_a_row_per_group(world):
    eng, cid = world
    text = campaign_report(eng, cid).csv()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == CSV_COLUMNS
    keys = [(r["dimension"], r["key"]) for r in rows]
    assert keys[0] == ("total", "all")
    assert {("channel", "email"), ("channel", "sms"), ("locale", "en"), ("locale", "ru"), ("variant", "a"),
            ("segment", "gold"), ("step", "main"), ("day", "2026-11-03")} <= set(keys)
    total = rows[0]
    assert (total["treated"], total["treated_converted"], total["control"], total["control_converted"]) == (
        "10000", "300", "1000", "20")
    assert total["uplift"] == "0.010000" and total["p_value"].startswith("0.072") and total["revenue"] == "15000.0000"
    assert rows[keys.index(("channel", "email"))]["uplift"] == ""


def test_comparing_campaigns_of_a_period(world):
    eng, cid = world
    with session_scope(eng) as s:
        c = s.get(Campaign, cid)
        c.started_at, c.finished_at = T0, T0 + timedelta(days=3)
        program_id = c.program_id
    later = make_campaign(eng, program_id, key="later")
    with session_scope(eng) as s:
        s.get(Campaign, later).started_at = T0 + timedelta(days=10)
    both = compare_campaigns(eng, program_id, T0 - timedelta(days=1), T0 + timedelta(days=20))
    assert [r.campaign for r in both] == ["spring", "later"] and both[0].by_day == []
    assert [r.campaign for r in compare_campaigns(eng, program_id, T0 + timedelta(days=4), None)] == ["later"]
    assert [r.campaign for r in compare_campaigns(eng, program_id, None, T0 + timedelta(days=5))] == ["spring"]


def test_local_days_follow_the_clock_changes():
    from zoneinfo import ZoneInfo

    from analytics.report import _day_starts

    berlin = ZoneInfo("Europe/Berlin")     # 2026-10-25: 03:00 CEST → 02:00 CET, a 25-hour day
    days = _day_starts(datetime(2026, 10, 24, 12, tzinfo=UTC), datetime(2026, 10, 26, 1, tzinfo=UTC), berlin)
    assert [d for d, _, _ in days] == [date(2026, 10, 24), date(2026, 10, 25), date(2026, 10, 26)]
    assert [(b - a) / timedelta(hours=1) for _, a, b in days] == [24, 25, 24]
    assert days[1][1] == datetime(2026, 10, 24, 22, tzinfo=UTC) and days[2][1] == datetime(2026, 10, 25, 23, tzinfo=UTC)
    long = _day_starts(datetime(2024, 1, 1, tzinfo=UTC), datetime(2026, 1, 1, tzinfo=UTC), berlin)
    assert len(long) == 400 and long[-1][0] == date(2026, 1, 1)     # the latest 400 days
