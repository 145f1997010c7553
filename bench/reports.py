"""The campaign report on a big campaign: how long ``analytics.report.campaign_report`` takes.

    .venv/bin/python bench/reports.py [--deliveries N] [--runs R] [--db URL] [--sqlite-only] [--keep]

For SQLite (a file in a temporary folder) and PostgreSQL (``--db``, default
``postgresql+psycopg://postgres@127.0.0.1:5432/test``: a new database ``clarion_bench_<random>`` is created
on that server and dropped afterwards):

1. a fresh database migrated with Alembic; bulk INSERTs (executemany, 20,000 rows a statement) of a program
   (Europe/Moscow, EUR), N members and one campaign of N delivery rows (default 1,000,000): 10% held out
   (nine in ten reachable: the control group), 5% suppressed (three reasons), 2% failed, 1% in doubt, the rest
   sent or delivered, over email 60% / SMS 20% / push 10% / Telegram 10%, locales ru/en/de, A/B variants,
   three report segments, sent over three days; responses as the tracking and attribution paths leave them:
   the delivery's response bits and revenue, and one response row per bit (opened 25%, machine opens 5%,
   clicked 4%, replies 0.5%, unsubscribes 0.3%, purchases 3.0% treated / 2.0% control);
2. PostgreSQL: ``VACUUM ANALYZE`` after the load (what autovacuum does to a table that stopped changing);
3. R runs (default 5) of the whole report (the three queries and the arithmetic), from a new engine each run
   (a cold connection pool; the operating system's file cache stays warm, as on a server). It prints the median
   and every run, the figures' sanity (treated, control, uplift) and the database's size.

It prints figures; it never asserts timings.
"""

from __future__ import annotations

import argparse
import random
import shutil
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, insert, select, text  # noqa: E402
from sqlalchemy.engine import Engine  # noqa: E402

from analytics import responses as R  # noqa: E402
from analytics.report import campaign_report  # noqa: E402
from bench.common import chunks, fresh_database, say  # noqa: E402
from storage.db import make_engine  # noqa: E402
from storage.tables import Campaign, Delivery, Member, Program, Response  # noqa: E402

CHUNK = 20_000
T0 = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
PG_DEFAULT = "postgresql+psycopg://postgres@127.0.0.1:5432/test"
CHANNELS = (["email"] * 6) + (["sms"] * 2) + ["push", "telegram"]
COSTS = {"email": Decimal("0.0010"), "sms": Decimal("0.0500"), "push": Decimal("0.0002"),
         "telegram": Decimal("0.0005")}
SPEC = {"key": "big", "name": "Big campaign", "program": "bench", "topic": "promotions",
        "channels": ["email", "sms", "push", "telegram"], "audience": {"all": True}, "template": "double_points",
        "holdout": 0.1, "variants": [{"key": "a", "share": 50}, {"key": "b", "share": 50}],
        "segments": {"gold": {"field": "tier", "value": "gold"}, "silver": {"field": "tier", "value": "silver"}}}


def _delivery(i: int, rnd: random.Random) -> tuple[dict[str, Any], list[tuple[str, datetime, Decimal | None]]]:
    """One delivery row and its response rows (kind, at, value)."""
    sent = T0 + timedelta(seconds=rnd.randrange(3 * 86400))
    row: dict[str, Any] = {"locale": rnd.choice(("ru", "ru", "en", "de")), "step": "main", "occurrence": "wave-1",
                           "segment": rnd.choices(("gold", "silver", "other"), weights=(10, 20, 70))[0],
                           "created_at": sent, "updated_at": sent, "response_flags": 0, "revenue": None,
                           "reason": None, "variant": None, "cost": None, "sent_at": None}
    out: list[tuple[str, datetime, Decimal | None]] = []
    u = rnd.random()
    channel = rnd.choice(CHANNELS)
    if u < 0.10:
        reachable = rnd.random() < 0.9
        row.update(status="held_out", channel="email", reason="control" if reachable else "control_unreachable")
        if reachable and rnd.random() < 0.020:
            amount = Decimal(rnd.randrange(500, 5000))
            row.update(response_flags=R.CONVERTED, revenue=amount)
            out.append(("converted", sent + timedelta(hours=rnd.randrange(1, 160)), amount))
        return row, out
    row["variant"] = "a" if rnd.random() < 0.5 else "b"
    if u < 0.15:
        row.update(status="suppressed", channel=channel,
                   reason=rnd.choice(("no_consent", "no_address", "frequency_cap")))
        return row, out
    if u < 0.17:
        row.update(status="failed", channel=channel, reason="provider_failed", sent_at=sent)
        return row, out
    status = "in_doubt" if u < 0.18 else ("delivered" if channel in ("sms", "telegram", "push") else "sent")
    row.update(status=status, channel=channel, sent_at=sent, cost=COSTS[channel])
    flags = 0
    if rnd.random() < 0.25:
        flags |= R.OPENED
        out.append(("opened", sent + timedelta(minutes=rnd.randrange(1, 4000)), None))
    if rnd.random() < 0.05:
        flags |= R.OPENED_MACHINE
        out.append(("opened_machine", sent + timedelta(seconds=1), None))
    if rnd.random() < 0.04:
        flags |= R.CLICKED | R.OPENED
        out.append(("clicked", sent + timedelta(minutes=rnd.randrange(1, 4000)), None))
    if channel == "sms" and rnd.random() < 0.025:
        flags |= R.REPLIED
        out.append(("replied", sent + timedelta(minutes=rnd.randrange(1, 600)), None))
    if rnd.random() < 0.003:
        flags |= R.UNSUBSCRIBED
        out.append(("unsubscribed", sent + timedelta(minutes=rnd.randrange(1, 600)), None))
    if rnd.random() < 0.030:
        amount = Decimal(rnd.randrange(500, 5000))
        flags |= R.CONVERTED
        row["revenue"] = amount
        out.append(("converted", sent + timedelta(hours=rnd.randrange(1, 160)), amount))
    row["response_flags"] = flags
    return row, out


def seed(engine: Engine, n: int, rnd: random.Random) -> dict[str, Any]:
    t = time.perf_counter()
    now = datetime.now(UTC)
    with engine.begin() as conn:
        program_id = conn.execute(insert(Program.__table__).values(  # type: ignore[attr-defined]
            key="bench", name="Bench", time_zone="Europe/Moscow", currency="EUR", settings={}, created_at=now)
            .returning(Program.id)).scalar_one()
        campaign_id = conn.execute(insert(Campaign.__table__).values(  # type: ignore[attr-defined]
            program_id=program_id, key="big", name="Big campaign", kind="broadcast", status="completed",
            topic="promotions", spec=SPEC, spec_hash="bench", budget_spent=0, version=1, created_at=now,
            started_at=T0).returning(Campaign.id)).scalar_one()
    members = ({"id": i, "program_id": program_id, "external_id": f"M{i:07d}", "kind": "individual",
                "attributes": {}, "created_at": now, "updated_at": now} for i in range(1, n + 1))
    with engine.begin() as conn:
        for batch in chunks(members, CHUNK):
            conn.execute(insert(Member.__table__), batch)  # type: ignore[attr-defined]
    responses = 0
    with engine.begin() as conn:
        for start in range(1, n + 1, CHUNK):
            rows, resp = [], []
            for i in range(start, min(start + CHUNK, n + 1)):
                row, out = _delivery(i, rnd)
                rows.append({"id": i, "campaign_id": campaign_id, "member_id": i, **row})
                resp += [{"delivery_id": i, "campaign_id": campaign_id, "kind": k, "at": at, "value": v,
                          "provider_event_id": f"{k}:{i}"} for k, at, v in out]
            conn.execute(insert(Delivery.__table__), rows)  # type: ignore[attr-defined]
            if resp:
                conn.execute(insert(Response.__table__), resp)  # type: ignore[attr-defined]
            responses += len(resp)
    if engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            for table in ("member", "delivery"):
                conn.execute(text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "
                                  f"(SELECT max(id) FROM {table}))"))
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(text("VACUUM ANALYZE"))
    else:
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
    return {"seconds": time.perf_counter() - t, "responses": responses, "campaign_id": campaign_id}



def run(base: str | None, args: argparse.Namespace) -> None:
    folder = Path(tempfile.mkdtemp(prefix="clarion-reports-"))
    url, drop = fresh_database(base, folder, "reports")
    engine = make_engine(url)
    try:
        say(f"{engine.dialect.name}: {args.deliveries:,} deliveries ({url})")
        info = seed(engine, args.deliveries, random.Random(args.deliveries))
        if engine.dialect.name == "sqlite":
            size = f"file {(folder / 'reports.db').stat().st_size / 2**20:,.0f} MiB"
        else:
            with engine.connect() as c:
                size = "database " + c.execute(text("SELECT pg_size_pretty(pg_database_size(current_database()))")
                                               ).scalar_one()
        say(f"  seeded in {info['seconds']:.1f} s: {info['responses']:,} response rows, {size}")
        with engine.connect() as c:
            assert c.execute(select(func.count()).select_from(Delivery)).scalar_one() == args.deliveries
        engine.dispose()
        times = []
        report = None
        for _ in range(args.runs):
            eng = make_engine(url)
            t = time.perf_counter()
            report = campaign_report(eng, info["campaign_id"])
            times.append(time.perf_counter() - t)
            eng.dispose()
        assert report is not None
        tot = report.total
        u = report.to_dict()["total"]["uplift"] or {}
        say(f"  report: median {statistics.median(times):.3f} s over {args.runs} runs "
            f"({', '.join(f'{x:.3f}' for x in times)})")
        say(f"  figures: audience {tot.audience:,}, treated {tot.treated:,} ({tot.treated_converted:,} converted), "
            f"control {tot.control:,} ({tot.control_converted:,}), uplift {u.get('uplift', 0) * 100:+.2f} pt "
            f"[{u.get('ci_low', 0) * 100:+.2f}, {u.get('ci_high', 0) * 100:+.2f}], p {u.get('p_value', 1):.2g}; "
            f"{len(report.by_day)} days, {len(report.by_channel)} channels, {len(report.by_locale)} locales")
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
    p.add_argument("--deliveries", "-n", type=int, default=1_000_000, help="delivery rows of the campaign")
    p.add_argument("--runs", "-r", type=int, default=5, help="reports timed (median shown)")
    p.add_argument("--db", metavar="URL", default=PG_DEFAULT, help="a PostgreSQL server URL (a new database "
                                                                  "is created on it)")
    p.add_argument("--sqlite-only", action="store_true", help="skip PostgreSQL")
    p.add_argument("--keep", action="store_true", help="keep the databases")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    run(None, args)
    if not args.sqlite_only:
        run(args.db, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
