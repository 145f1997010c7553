"""Segment rules run as SQL on a real SQLite file and, when CI provides it, a real PostgreSQL: each rule
selects exactly the members built for it, ``not`` is the exact complement, relative dates honour
their boundaries, values are bound parameters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import typer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, insert, select
from sqlmodel import Session
from typer.testing import CliRunner

from app.segment_cli import segment_app
from campaigns.audience import audience_clause
from campaigns.segments import Audience
from consent import ledger
from storage.db import make_engine, session_scope
from storage.tables import Card, ConsentAction, ConsentSource, Event, Member, Program

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
INJECTION = "x'); DROP TABLE member; --"

# external id → (columns, attributes). D has nothing; F's city is an injection attempt.
MEMBERS: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {
    "A": ({"kind": "individual", "locale": "ru"},
          {"tier": "gold", "city": "Kazan", "birthday": "1990-12-05", "registered_at": "2025-03-01",
           "score": 5, "tags": ["vip", "early"], "vip": True}),
    "B": ({"kind": "legal_entity", "locale": "ru-RU"},
          {"tier": "silver", "city": "Moscow", "birthday": "1985-06-15", "registered_at": "2024-11-20",
           "score": "4", "vip": "false"}),
    "C": ({"kind": "individual", "locale": "en"},
          {"tier": "basic", "city": "kazan", "birthday": "1999-12-31T00:00:00", "registered_at": "not a date",
           "score": "abc", "tags": "vip-list"}),
    "D": ({"kind": "individual", "locale": None}, {}),
    "E": ({"kind": "individual", "locale": "de"},
          {"tier": 7, "city": "Kazan", "birthday": "2000-02-29", "score": 2.5, "tags": [7, "x"]}),
    "F": ({"kind": "individual", "locale": "en"}, {"tier": "basic", "city": INJECTION}),
}
EVERYONE = set(MEMBERS)

# member → [(type, occurred_at, payload)]
EVENTS: dict[str, list[tuple[str, datetime, dict[str, Any]]]] = {
    "A": [("purchase", NOW - timedelta(days=1), {"amount": 1000, "store": "store-12",
                                                  "items": [{"sku": "c1", "category": "coffee", "qty": 1}]}),
          ("purchase", NOW - timedelta(days=10), {"amount": 5000, "store": "store-1",
                                                   "items": [{"category": "tea"}, {"category": "coffee"}]}),
          ("purchase", NOW - timedelta(days=100), {"amount": 200})],
    "B": [("purchase", NOW - timedelta(days=30), {"amount": "300", "store": 12, "items": [{"category": "snacks"}]}),
          ("purchase", NOW - timedelta(days=30, seconds=1), {"amount": 100.0})],
    "C": [("purchase", NOW - timedelta(days=70), {"amount": 50, "items": "not a list"}),
          ("registration", NOW - timedelta(days=1), {"amount": 99999, "store": "store-12"})],
    "E": [("purchase", NOW - timedelta(days=60), {"amount": 70, "items": ["coffee", {"category": 5}]})],
}
CARDS = {"A": ["active"], "B": ["blocked", "active"], "C": ["blocked"], "E": ["expired"]}
CONSENTS = {  # member → [(channel, topic, action)]
    "A": [("email", "promotions", "granted")],
    "B": [("email", "promotions", "confirmed"), ("email", "*", "revoked")],
    "C": [("email", "promotions", "revoked")],
    "E": [("email", "*", "granted"), ("sms", "promotions", "granted")],
}


def rule(field: str, op: str | None = None, value: Any = None, **kw: Any) -> dict[str, Any]:
    r: dict[str, Any] = {"field": field, **kw}
    if op is not None:
        r["op"] = op
    if value is not None:
        r["value"] = value
    return r


# (rule, members it selects)
CASES: list[tuple[dict[str, Any], set[str]]] = [
    # text attributes (a whole number reads as its digits)
    (rule("tier", "eq", "gold"), {"A"}),
    (rule("tier", "in", ["gold", "silver"]), {"A", "B"}),
    (rule("tier", "ne", "gold"), EVERYONE - {"A"}),
    (rule("tier", "eq", 7), {"E"}),
    (rule("tier", "not_in", ["gold", "basic"]), {"B", "D", "E"}),
    (rule("tier", "exists", True), EVERYONE - {"D"}),
    (rule("tier", "exists", False), {"D"}),
    (rule("city", "contains", "Kaz"), {"A", "E"}),
    (rule("city", value="Kazan"), {"A", "E"}),
    (rule("city", "eq", INJECTION), {"F"}),
    # member columns
    (rule("kind", "eq", "legal_entity"), {"B"}),
    (rule("kind", "ne", "legal_entity"), EVERYONE - {"B"}),
    (rule("kind", "in", ["individual"]), EVERYONE - {"B"}),
    (rule("locale", "in", ["ru", "ru-RU"]), {"A", "B"}),
    (rule("locale", "not_in", ["ru", "ru-RU"]), {"C", "D", "E", "F"}),
    (rule("locale", "exists", False), {"D"}),
    (rule("locale", "contains", "ru"), {"A", "B"}),
    # dates and months from attributes
    (rule("birthday_month", "eq", 12), {"A", "C"}),
    (rule("birthday_month", "in", [6]), {"B"}),
    (rule("birthday_month", "between", [11, 2]), {"A", "C", "E"}),
    (rule("birthday_month", "between", [2, 6]), {"B", "E"}),
    (rule("birthday_month", "gte", 7), {"A", "C"}),
    (rule("birthday_month", "exists", False), {"D", "F"}),
    (rule("birthday", "eq", "1999-12-31"), {"C"}),
    (rule("registered_at", "gte", "2025-01-01"), {"A"}),
    (rule("registered_at", "lt", "2025-01-01"), {"B"}),
    (rule("registered_at", "exists"), {"A", "B"}),
    (rule("registered_at", "gte", {"days_ago": 500}), {"A"}),           # 2025-01-17
    (rule("registered_at", "between", ["2024-11-20", "2025-03-01"]), {"A", "B"}),
    # custom attributes: the value's type decides
    (rule("attributes.score", "gt", 3), {"A", "B"}),
    (rule("attributes.score", "lt", 3), {"E"}),
    (rule("attributes.score", "between", [2, 4]), {"B", "E"}),
    (rule("attributes.score", "eq", 5), {"A"}),
    (rule("attributes.score", "ne", 5), EVERYONE - {"A"}),
    (rule("attributes.score", "in", [4, 2.5]), {"B", "E"}),
    (rule("attributes.score", "eq", "abc"), {"C"}),
    (rule("attributes.score", "exists"), {"A", "B", "C", "E"}),
    (rule("attributes.vip", "eq", True), {"A"}),
    (rule("attributes.vip", "eq", False), {"B"}),
    (rule("attributes.vip", "ne", True), EVERYONE - {"A"}),
    (rule("attributes.tags", "contains", "vip"), {"A", "C"}),
    (rule("attributes.tags", "contains", "early"), {"A"}),
    (rule("attributes.tags", "contains", 7), {"E"}),
    (rule("attributes.tags", "contains", "x"), {"E"}),
    (rule("attributes.birthday", "lt", "1990-01-01"), {"B"}),
    (rule("attributes.nothing", "exists", False), EVERYONE),
    # purchases
    (rule("purchases.count", "gte", 2, days=30), {"A"}),
    (rule("purchases.count", "gte", 1, days=30), {"A", "B"}),         # B's purchase is exactly 30 days old
    (rule("purchases.count", "gte", 1, days=29), {"A"}),
    (rule("purchases.count", "eq", 0, days=30), {"C", "D", "E", "F"}),
    (rule("purchases.count", "eq", 3), {"A"}),
    (rule("purchases.count", "lt", 2), {"C", "D", "E", "F"}),
    (rule("purchases.count", "between", [1, 2]), {"B", "C", "E"}),
    (rule("purchases.count", "in", [0, 3]), {"A", "D", "F"}),
    (rule("purchases.sum", "gt", 5000, days=90), {"A"}),
    (rule("purchases.sum", "between", [300, 500], days=90), {"B"}),    # "300" as text + 100.0
    (rule("purchases.sum", "eq", 0), {"D", "F"}),
    (rule("purchases.sum", "lt", 100, days=90), {"C", "D", "E", "F"}),
    (rule("purchases.last_at", "lt", {"days_ago": 60}), {"C"}),        # E's is exactly 60 days old
    (rule("purchases.last_at", "lte", {"days_ago": 60}), {"C", "E"}),
    (rule("purchases.last_at", "gte", {"days_ago": 30}), {"A", "B"}),
    (rule("purchases.last_at", "gt", {"days_ago": 30}), {"A"}),
    (rule("purchases.last_at", "exists", False), {"D", "F"}),
    (rule("purchases.last_at", "exists"), {"A", "B", "C", "E"}),
    (rule("purchases.last_at", "lt", "2026-05-02"), {"C", "E"}),       # B's last: 2026-05-02 12:00
    (rule("purchases.last_at", "lte", "2026-05-02"), {"B", "C", "E"}),
    (rule("purchases.last_at", "gt", "2026-05-02"), {"A"}),
    (rule("purchases.last_at", "gte", "2026-05-02"), {"A", "B"}),
    (rule("purchases.last_at", "lt", "2026-05-02T12:00:00Z"), {"C", "E"}),
    (rule("purchases.last_at", "lte", "2026-05-02T15:00:00+03:00"), {"B", "C", "E"}),
    (rule("purchases.last_at", "between", ["2026-03-01", "2026-04-10"]), {"C", "E"}),
    (rule("purchases.last_at", "between", [{"days_ago": 31}, {"days_ago": 29}]), {"B"}),
    (rule("purchases.category", "in", ["coffee"], days=30), {"A"}),
    (rule("purchases.category", "eq", "coffee"), {"A"}),               # E's "coffee" is not an item object
    (rule("purchases.category", "eq", 5), {"E"}),
    (rule("purchases.category", "ne", "coffee"), EVERYONE - {"A"}),
    (rule("purchases.category", "eq", "snacks", days=29), set()),
    (rule("purchases.category", "eq", "snacks", days=30), {"B"}),
    (rule("purchases.category", "not_in", ["tea", "snacks"]), {"C", "D", "E", "F"}),
    (rule("purchases.store", "eq", "store-12"), {"A"}),                # C's store-12 event is no purchase
    (rule("purchases.store", "eq", 12), {"B"}),
    (rule("purchases.store", "in", ["store-1"], days=9), set()),
    (rule("purchases.store", "in", ["store-1"], days=10), {"A"}),
    # cards
    (rule("card.status", "eq", "blocked"), {"B", "C"}),
    (rule("card.status", "ne", "blocked"), {"A", "D", "E", "F"}),
    (rule("card.status", "in", ["active", "expired"]), {"A", "B", "E"}),
    (rule("card.status", "exists", False), {"D", "F"}),
    # consent (as consent.policy.decide)
    (rule("consent", channel="email", topic="promotions"), {"A"}),
    (rule("consent", channel="email", topic="promotions", value=False), EVERYONE - {"A"}),
    (rule("consent", channel="email", topic="*"), {"E"}),
    (rule("consent", channel="email", topic="service"), EVERYONE - {"B"}),
    (rule("consent", channel="sms", topic="promotions"), {"E"}),
    # nesting
    ({"all": [rule("tier", "in", ["gold", "silver"]), {"not": rule("card.status", "eq", "blocked")}]}, {"A"}),
    ({"any": [rule("kind", "eq", "legal_entity"), rule("attributes.score", "lt", 3)]}, {"B", "E"}),
    ({"not": {"any": [rule("tier", "eq", "gold"), rule("city", "eq", "Kazan")]}}, {"B", "C", "D", "F"}),
    ({"not": rule("attributes.score", "gt", 3)}, {"C", "D", "E", "F"}),
    ({"not": {"not": rule("tier", "eq", "gold")}}, {"A"}),
    ({"all": [rule("consent", channel="email", topic="service"),
              {"any": [rule("purchases.count", "gte", 2, days=30), {"not": rule("purchases.last_at", "exists")}]},
              {"not": rule("city", "eq", INJECTION)}]}, {"A", "D"}),
]


def _seed(engine: Any) -> dict[str, int]:
    with session_scope(engine) as s:
        programs = {}
        for key in ("shop", "other"):
            p = Program(key=key, name=key)
            s.add(p)
            s.flush()
            programs[key] = p.id
        ids: dict[str, int] = {}
        for ext, (cols, attrs) in [*MEMBERS.items(), ("Z", *[MEMBERS["A"]])]:
            program = programs["other" if ext == "Z" else "shop"]
            ids[ext] = s.execute(insert(Member.__table__).values(  # type: ignore[attr-defined]
                program_id=program, external_id=ext, attributes=attrs, **cols).returning(Member.id)).scalar_one()
        n = 0
        for ext, events in [*EVENTS.items(), ("Z", EVENTS["A"])]:
            for type_, at, payload in events:
                n += 1
                s.execute(insert(Event.__table__).values(  # type: ignore[attr-defined]
                    program_id=programs["other" if ext == "Z" else "shop"], source_event_id=f"ev{n}",
                    type=type_, member_id=ids[ext], occurred_at=at, payload=payload))
        for ext, statuses in [*CARDS.items(), ("Z", CARDS["A"])]:
            for i, status in enumerate(statuses):
                s.add(Card(member_id=ids[ext], number=f"{ext}-{i}", status=status))
        for ext, acts in [*CONSENTS.items(), ("Z", CONSENTS["A"])]:
            ledger.record(session=s, program_id=programs["other" if ext == "Z" else "shop"], acts=[
                ledger.ConsentAct(member_id=ids[ext], channel=ch, topic=t, action=ConsentAction(a),
                                  source=ConsentSource.api) for ch, t, a in acts])
    return {"program": programs["shop"], **ids}


@pytest.fixture
def seeded(any_db_url):
    engine = make_engine(any_db_url)
    ids = _seed(engine)
    yield engine, ids
    engine.dispose()


def members(engine: Any, ids: dict[str, int], audience: dict[str, Any], *, now: datetime = NOW) -> set[str]:
    by_id = {v: k for k, v in ids.items() if k != "program"}
    aud = Audience.model_validate(audience)
    with Session(engine) as s:
        found = s.scalars(select(Member.id).where(audience_clause(ids["program"], aud, now=now)))
        return {by_id[i] for i in found}


def test_each_rule_and_its_negation_select_exactly_the_members_built_for_them(seeded):
    engine, ids = seeded
    wrong = []
    for r, expected in CASES:
        got = members(engine, ids, {"rules": r})
        if got != expected:
            wrong.append(f"{r}: got {sorted(got)}, expected {sorted(expected)}")
        got_not = members(engine, ids, {"rules": {"not": r}})
        if got_not != EVERYONE - expected:
            wrong.append(f"not {r}: got {sorted(got_not)}, expected {sorted(EVERYONE - expected)}")

    assert not wrong, "\n".join(wrong)


def test_a_purchase_exactly_n_days_old_counts_until_now_moves_on(seeded):
    engine, ids = seeded
    r = {"rules": rule("purchases.count", "gte", 1, days=30)}
    last = {"rules": rule("purchases.last_at", "lt", {"days_ago": 60})}

    assert members(engine, ids, r, now=NOW) == {"A", "B"}
    assert members(engine, ids, r, now=NOW + timedelta(microseconds=1)) == {"A"}
    assert members(engine, ids, last, now=NOW) == {"C"}
    assert members(engine, ids, last, now=NOW + timedelta(microseconds=1)) == {"C", "E"}
    # the same instant written in another time zone
    assert members(engine, ids, r, now=NOW.astimezone(__import__("zoneinfo").ZoneInfo("Asia/Tokyo"))) == {"A", "B"}


def test_include_adds_and_exclude_removes_whatever_the_rules_say(seeded):
    engine, ids = seeded

    assert members(engine, ids, {"rules": rule("tier", "eq", "gold"), "include": ["C"], "exclude": ["A"]}) == {"C"}
    assert members(engine, ids, {"include": ["B", "Z", "nobody"]}) == {"B"}       # Z is another program's
    assert members(engine, ids, {"all": True, "exclude": ["A", "B"]}) == EVERYONE - {"A", "B"}
    assert members(engine, ids, {"all": True}) == EVERYONE
    assert members(engine, ids, {"rules": rule("tier", "eq", "silver"), "include": ["B"]}) == {"B"}


def test_older_filter_form_still_selects_by_columns_and_attributes(seeded):
    engine, ids = seeded

    assert members(engine, ids, {"filter": [{"field": "attributes.tier", "op": "in", "value": ["gold", "silver"]},
                                            {"field": "locale", "value": "ru"}]}) == {"A"}
    assert members(engine, ids, {"filter": [{"field": "attributes.score", "op": "in", "value": [5, "abc"]}]}) \
        == {"A", "C"}
    assert members(engine, ids, {"filter": [{"field": "attributes.vip", "value": True}]}) == {"A"}
    assert members(engine, ids, {"filter": [{"field": "attributes.vip", "op": "in", "value": [True, False]}]}) \
        == {"A", "B"}
    assert members(engine, ids, {"filter": [{"field": "attributes.vip", "op": "not_in", "value": [True]}]}) \
        == EVERYONE - {"A"}
    assert members(engine, ids, {"filter": [{"field": "kind", "op": "ne", "value": "individual"}]}) == {"B"}


def test_injection_strings_are_plain_values_everywhere(seeded):
    engine, ids = seeded
    evil = ["'; DROP TABLE member; --", "\" OR 1=1 --", "$.x') OR 1=1 --", "%", "_", "\\", "' || '"]

    for value in evil:
        for r in (rule("tier", "eq", value), rule("city", "contains", value), rule("tier", "in", [value, "gold"]),
                  rule("attributes.score", "eq", value), rule("purchases.category", "eq", value),
                  rule("purchases.store", "in", [value]), rule("card.status", "eq", value),
                  rule("attributes.tags", "contains", value)):
            expected = {"A"} if r["field"] == "tier" and r["op"] == "in" else set()
            assert members(engine, ids, {"rules": r}) == expected, r
        assert members(engine, ids, {"include": [value], "exclude": [value]}) == set()
    assert members(engine, ids, {"rules": rule("city", "eq", INJECTION)}) == {"F"}
    with Session(engine) as s:
        assert s.scalar(select(func.count()).select_from(Member)) == len(MEMBERS) + 1


def test_keyset_pages_and_count_agree_with_the_audience(seeded):
    engine, ids = seeded
    aud = Audience.model_validate({"rules": {"any": [rule("tier", "exists"), rule("purchases.count", "gte", 1)]}})
    by_id = {v: k for k, v in ids.items() if k != "program"}
    clause = audience_clause(ids["program"], aud, now=NOW)
    pages, after = [], 0
    with Session(engine) as s:
        total = s.scalar(select(func.count()).select_from(Member).where(clause))
        while True:
            page = list(s.scalars(select(Member.id).where(audience_clause(ids["program"], aud, now=NOW),
                                                          Member.id > after).order_by(Member.id).limit(2)))
            if not page:
                break
            pages.append([by_id[i] for i in page])
            after = page[-1]

    assert total == 5
    assert pages == [["A", "B"], ["C", "E"], ["F"]]


def _trees() -> st.SearchStrategy[tuple[dict[str, Any], frozenset[str]]]:
    """Random all/any/not trees over the cases above, with the member set that set algebra gives."""
    leaves = st.sampled_from([(r, frozenset(e)) for r, e in CASES if "field" in r])

    def grow(children: st.SearchStrategy) -> st.SearchStrategy:
        def group(kind: str, parts: list[tuple[dict[str, Any], frozenset[str]]]) -> tuple[dict[str, Any], frozenset[str]]:
            sets = [e for _, e in parts]
            joined = frozenset.intersection(*sets) if kind == "all" else frozenset.union(*sets)
            return {kind: [r for r, _ in parts]}, joined

        return st.one_of(
            st.builds(group, st.sampled_from(["all", "any"]), st.lists(children, min_size=1, max_size=3)),
            children.map(lambda c: ({"not": c[0]}, frozenset(EVERYONE) - c[1])))

    return st.recursive(leaves, grow, max_leaves=8)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree=_trees())
def test_random_nesting_selects_what_set_algebra_says(seeded, tree):
    engine, ids = seeded
    r, expected = tree

    assert members(engine, ids, {"rules": r}) == set(expected)


def test_cli_counts_the_members_of_the_program(seeded, any_db_url, tmp_path, monkeypatch):
    engine, ids = seeded
    monkeypatch.setenv("CLARION_DATABASE_URL", any_db_url)
    app = typer.Typer()
    app.add_typer(segment_app, name="segment")
    spec = tmp_path / "spec.yaml"
    spec.write_text("key: vip\nprogram: shop\naudience:\n  rules:\n    any:\n"
                    "      - {field: tier, op: in, value: [gold, silver]}\n"
                    "      - {field: purchases.count, days: 30, op: gte, value: 1}\n"
                    "  exclude: [B]\n", encoding="utf-8")
    bare = tmp_path / "rules.yaml"
    bare.write_text("field: purchases.last_at\nop: lt\nvalue: {days_ago: 60}\n", encoding="utf-8")
    run = CliRunner().invoke

    counted = run(app, ["segment", "count", str(spec), "--now", NOW.isoformat()])
    bare_counted = run(app, ["segment", "count", str(bare), "-p", "shop", "--now", NOW.isoformat()])
    unknown = run(app, ["segment", "count", str(spec), "--program", "nope"])

    assert counted.exit_code == 0, counted.output
    assert counted.output.startswith("1 member in program 'shop' (")
    assert bare_counted.output.startswith("1 member in program 'shop' (")
    assert unknown.exit_code == 1
    assert unknown.output.strip() == "error: program 'nope' not found"


def test_report_segments_take_the_first_rule_a_member_matches(any_db_url):
    from campaigns.audience import segment_of
    from campaigns.segments import Rule
    from tests.factories import seed_members

    eng = make_engine(any_db_url)
    program_id = seed_members(eng, 30, program="segs")     # member i: gold when i % 10 == 0, locale en/ru
    with Session(eng) as s:
        ids = {m.external_id: m.id for m in s.scalars(select(Member))}
        segments = {"gold": Rule.model_validate({"field": "tier", "value": "gold"}),
                    "russian": Rule.model_validate({"field": "locale", "value": "ru"})}
        got = segment_of(s, program_id, segments, list(ids.values()), now=NOW)
    eng.dispose()
    for i in range(1, 31):
        want = "gold" if i % 10 == 0 else "russian" if i % 2 == 1 else "other"
        assert got[ids[f"M{i:06d}"]] == want, i
