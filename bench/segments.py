"""Audience segments: how long counting and paging a segment takes on N members.

    .venv/bin/python bench/segments.py [--members N ...] [--runs R] [--page-size P] [--db URL]
                                       [--pg-jit server|on|off] [--keep]

For each N (default 100000):

1. a fresh database: a SQLite file in a temporary folder (or, with ``--db postgresql+psycopg://.../x``,
   a new database ``clarion_bench_<random>`` on that server), migrated with Alembic;
2. seeded by bulk INSERTs (executemany, 20,000 rows a statement) with program ``bench`` and N members:
   attributes tier / city / birthday / registered_at / score, 0-10 purchase events each (5 on average)
   over the last 365 days with amount, store and 1-3 items, 1-2 cards, consent records and states;
3. for each segment below, R runs (default 3) of: ``SELECT count(*)`` with ``audience_clause``, and
   paging the whole audience by keyset (``id > after ORDER BY id LIMIT P``, P=500) as
   ``activities.delivery`` does. It prints the median and every run (wall time), and on SQLite the
   median CPU time of this process (the query runs in it: steadier when other work shares the cores).

It prints figures; it never asserts timings. The temporary folder / database is removed unless --keep.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from campaigns.audience import audience_clause  # noqa: E402
from campaigns.segments import Audience  # noqa: E402
from bench.common import chunks, fresh_database, say  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.tables import Card, ConsentRecord, ConsentState, Event, Member, Program  # noqa: E402

PROGRAM = "bench"
CHUNK = 20_000
NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)
CITIES = ["Moscow", "Kazan", "Saint Petersburg", "Novosibirsk", "Yekaterinburg", "Samara", "Omsk",
          "Krasnodar", "Perm", "Ufa"]
CATEGORIES = ["coffee", "tea", "bakery", "dairy", "snacks", "fruit", "vegetables", "meat", "fish",
              "household", "cosmetics", "toys"]
LOCALES = ["ru", "ru", "ru-RU", "en", "de"]

SEGMENTS: dict[str, dict[str, Any]] = {
    "everyone (all: true)": {"all": True},
    "attributes: tier in [gold, silver] + city": {"rules": {"all": [
        {"field": "tier", "op": "in", "value": ["gold", "silver"]},
        {"field": "city", "op": "eq", "value": "Kazan"}]}},
    "purchases: count 30d >= 2 + sum 90d > 5000": {"rules": {"all": [
        {"field": "purchases.count", "days": 30, "op": "gte", "value": 2},
        {"field": "purchases.sum", "days": 90, "op": "gt", "value": 5000}]}},
    "nested any/not + consent + category": {"rules": {"all": [
        {"field": "consent", "channel": "email", "topic": "promotions"},
        {"any": [{"field": "tier", "op": "eq", "value": "gold"},
                 {"field": "purchases.category", "op": "in", "value": ["coffee"], "days": 30}]},
        {"not": {"field": "card.status", "op": "eq", "value": "blocked"}},
        {"not": {"field": "purchases.last_at", "op": "lt", "value": {"days_ago": 60}}}]}},
    "realistic: 6 rules, attributes + aggregates + consent": {"rules": {"all": [
        {"field": "tier", "op": "in", "value": ["gold", "silver"]},
        {"field": "locale", "op": "in", "value": ["ru", "ru-RU"]},
        {"field": "purchases.count", "days": 90, "op": "gte", "value": 2},
        {"field": "purchases.sum", "days": 90, "op": "gt", "value": 3000},
        {"field": "consent", "channel": "email", "topic": "promotions"},
        {"not": {"field": "card.status", "op": "eq", "value": "blocked"}}]}},
    "aggregates only, no narrowing attribute": {"rules": {"any": [
        {"field": "purchases.sum", "days": 365, "op": "gt", "value": 20000},
        {"field": "purchases.category", "op": "in", "value": ["toys", "fish"], "days": 90}]}},
}


# --- seeding -----------------------------------------------------------------------------------------


def seed(engine: Engine, n: int, rnd: random.Random) -> dict[str, float]:
    """Bulk-insert the program and n members with their events, cards and consents."""
    t = time.perf_counter()
    counts = {"events": 0, "cards": 0, "consents": 0}
    with engine.begin() as conn:
        program_id = conn.execute(insert(Program.__table__).values(  # type: ignore[attr-defined]
            key=PROGRAM, name="Bench", settings={}, created_at=NOW).returning(Program.id)).scalar_one()

    def members() -> Iterator[dict[str, Any]]:
        for i in range(1, n + 1):
            born = datetime(1950, 1, 1) + timedelta(days=rnd.randrange(50 * 365))
            joined = NOW - timedelta(days=rnd.randrange(6 * 365))
            yield {"id": i, "program_id": program_id, "external_id": f"M{i:07d}",
                   "kind": "legal_entity" if rnd.random() < 0.05 else "individual",
                   "locale": rnd.choice(LOCALES), "email": f"m{i}@bench.example", "created_at": NOW,
                   "updated_at": NOW, "attributes": {
                       "tier": rnd.choices(["basic", "silver", "gold"], weights=[70, 20, 10])[0],
                       "city": rnd.choice(CITIES), "birthday": born.strftime("%Y-%m-%d"),
                       "registered_at": joined.strftime("%Y-%m-%d"), "score": rnd.randrange(11)}}

    def events() -> Iterator[dict[str, Any]]:
        eid = 0
        for m in range(1, n + 1):
            for _ in range(rnd.randrange(11)):
                eid += 1
                items = [{"sku": f"sku-{rnd.randrange(5000)}", "category": rnd.choice(CATEGORIES),
                          "qty": rnd.randrange(1, 4), "price": round(rnd.uniform(50, 1500), 2)}
                         for _ in range(rnd.randrange(1, 4))]
                yield {"id": eid, "program_id": program_id, "source_event_id": f"e{eid}", "type": "purchase",
                       "member_id": m, "occurred_at": NOW - timedelta(seconds=rnd.randrange(365 * 86400)),
                       "received_at": NOW, "payload": {
                           "amount": round(sum(it["price"] * it["qty"] for it in items), 2), "currency": "RUB",
                           "store": f"store-{rnd.randrange(1, 51)}", "receipt": f"R{eid}", "items": items}}
        counts["events"] = eid

    def cards() -> Iterator[dict[str, Any]]:
        cid = 0
        for m in range(1, n + 1):
            for k in range(2 if rnd.random() < 0.1 else 1):
                cid += 1
                status = rnd.choices(["active", "blocked", "expired"], weights=[85, 10, 5])[0]
                yield {"id": cid, "member_id": m, "number": f"C{m}-{k}", "status": status, "issued_at": NOW}
        counts["cards"] = cid

    consent_rows: list[tuple[int, str, str, str]] = []
    for m in range(1, n + 1):
        r = rnd.random()
        if r < 0.70:
            consent_rows.append((m, "email", "promotions", "granted"))
        elif r < 0.80:
            consent_rows.append((m, "email", "promotions", "revoked"))
        if rnd.random() < 0.02:
            consent_rows.append((m, "email", "*", "suppressed"))
        if rnd.random() < 0.30:
            consent_rows.append((m, "sms", "promotions", "granted"))
    counts["consents"] = len(consent_rows)

    def records() -> Iterator[dict[str, Any]]:
        for rid, (m, ch, topic, action) in enumerate(consent_rows, 1):
            yield {"id": rid, "program_id": program_id, "member_id": m, "channel": ch, "topic": topic,
                   "action": action, "source": "import", "at": NOW}

    def states() -> Iterator[dict[str, Any]]:
        for rid, (m, ch, topic, action) in enumerate(consent_rows, 1):
            yield {"member_id": m, "channel": ch, "topic": topic, "program_id": program_id, "status": action,
                   "record_id": rid, "updated_at": NOW}

    for table, rows in ((Member, members()), (Event, events()), (Card, cards()),
                        (ConsentRecord, records()), (ConsentState, states())):
        stmt = insert(table.__table__)  # type: ignore[attr-defined]
        for batch in chunks(rows, CHUNK):
            with engine.begin() as conn:
                conn.execute(stmt, batch)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("member", "event", "card", "consent_record", "consent_state"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT coalesce(max(id), 1) FROM {table}))")
                             if table != "consent_state" else text("SELECT 1"))
            conn.execute(text("ANALYZE"))
    return {"seconds": time.perf_counter() - t, **counts}


# --- measuring ---------------------------------------------------------------------------------------


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(wall seconds, this process's CPU seconds, result). On SQLite the query runs in this process, so
    its CPU time is the work done, steadier than wall time when other processes share the cores."""
    t, c = time.perf_counter(), time.process_time()
    out = fn()
    return time.perf_counter() - t, time.process_time() - c, out


def count(engine: Engine, program_id: int, audience: Audience) -> int:
    with engine.connect() as conn:
        return conn.scalar(select(func.count()).select_from(Member).where(
            audience_clause(program_id, audience, now=NOW))) or 0


def page_all(engine: Engine, program_id: int, audience: Audience, page_size: int) -> tuple[int, int]:
    """(members, pages): the whole audience by keyset pages, one statement per page."""
    after, total, pages = 0, 0, 0
    with engine.connect() as conn:
        while True:
            ids = conn.scalars(select(Member.id).where(audience_clause(program_id, audience, now=NOW),
                                                       Member.id > after)  # type: ignore[operator]
                               .order_by(Member.id).limit(page_size)).all()
            if not ids:
                return total, pages
            total, pages, after = total + len(ids), pages + 1, ids[-1]


def measure(engine: Engine, runs: int, page_size: int) -> None:
    with engine.connect() as conn:
        program_id = conn.scalar(select(Program.id).where(Program.key == PROGRAM))
    for name, raw in SEGMENTS.items():
        audience = Audience.model_validate(raw)
        counts, pages, count_cpu, page_cpu = [], [], [], []
        for _ in range(runs):
            s, c, n = timed(lambda: count(engine, program_id, audience))
            counts.append(s)
            count_cpu.append(c)
            s, c, (paged, npages) = timed(lambda: page_all(engine, program_id, audience, page_size))
            pages.append(s)
            page_cpu.append(c)
            assert paged == n, (paged, n)
        cpu = engine.dialect.name == "sqlite"
        say(f"  {name}")
        say(f"    matches {n:>9,}   count {statistics.median(counts):7.3f} s  "
            f"[{' / '.join(f'{x:.3f}' for x in counts)}]"
            + (f"  cpu {statistics.median(count_cpu):.3f} s" if cpu else ""))
        say(f"    paging {npages:>5} pages of {page_size}: {statistics.median(pages):7.3f} s  "
            f"[{' / '.join(f'{x:.3f}' for x in pages)}]"
            + (f"  = {1000 * statistics.median(pages) / npages:.1f} ms/page" if npages else "")
            + (f"  cpu {statistics.median(page_cpu):.3f} s" if cpu else ""))


# --- databases ---------------------------------------------------------------------------------------



def run(n: int, args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="clarion-segments-"))
    url, drop = fresh_database(args.db, folder, "segments")
    extra: dict[str, Any] = {}
    if url.startswith("postgresql") and args.pg_jit != "server":
        extra["connect_args"] = {"options": f"-c jit={args.pg_jit}"}
    engine = make_engine(url, **extra)
    try:
        jit = f", jit {args.pg_jit}" if engine.dialect.name == "postgresql" else ""
        say(f"N={n:,} members on {engine.dialect.name}{jit} ({url})")
        info = seed(engine, n, random.Random(n))
        size = ""
        if engine.dialect.name == "sqlite":
            db = folder / "segments.db"
            size = f", file {db.stat().st_size / 2**20:,.0f} MiB"
        say(f"  seeded in {info['seconds']:.1f} s: {info['events']:,} purchase events, {info['cards']:,} cards, "
            f"{info['consents']:,} consents{size}")
        measure(engine, args.runs, args.page_size)
    finally:
        engine.dispose()
        if args.keep:
            say(f"  kept {url}")
        else:
            drop()
            shutil.rmtree(folder, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--members", "-n", type=int, nargs="+", default=[100_000], help="member counts to seed")
    p.add_argument("--runs", "-r", type=int, default=3, help="repeats of each measurement (median shown)")
    p.add_argument("--page-size", type=int, default=500, help="members per keyset page")
    p.add_argument("--db", metavar="URL", help="a PostgreSQL server URL (a new database is created on it)")
    p.add_argument("--pg-jit", choices=["server", "on", "off"], default="server",
                   help="PostgreSQL JIT for the bench's connections (server = the server's setting)")
    p.add_argument("--keep", action="store_true", help="keep the database")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for n in args.members:
        run(n, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
