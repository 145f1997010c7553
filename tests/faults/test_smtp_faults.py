"""An SMTP relay that defers, refuses and hangs up, during a broadcast.

The real BroadcastCampaign and delivery activities on the time-skipping server, a real SQLite file, the real
aiosmtplib client over kept-open connections to an SMTP server on 127.0.0.1 (tests.faults.fake_smtp) that
misbehaves on cue. Counted where a member would count: the messages the server took, per address.

The adapter's own mapping of each reply is tested in tests/channels/test_email_smtp.py (e.g.
test_connection_dropped_after_data_is_in_doubt); here the whole campaign must come out right.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.tables import ConsentRecord, ConsentState
from tests.factories import make_campaign
from tests.faults.fake_smtp import FaultySmtp
from tests.workflows.conftest import (
    bulk_members,
    by_member,
    campaign_row,
    deliveries,
    email,
)
from workflows.contracts import Progress, RunState

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def run(workers: Any, engine: Engine, cid: int) -> Progress:
    async with workers(engine=engine) as rig:
        return await rig.finish(await rig.start(cid, page_size=50))


def assert_adds_up(result: Progress, audience: int) -> None:
    c = result.counts
    assert c.sent + c.suppressed + c.failed + c.in_doubt + c.already_done == c.audience == audience, c


async def test_a_relay_that_defers_with_421_and_4xx_gets_each_message_once_after_a_retry(
        workers: Any, engine: Engine, smtp_server: FaultySmtp) -> None:
    program, _ = bulk_members(engine, 8)
    smtp_server.busy(2)                              # the first two transactions: 421 at MAIL FROM
    smtp_server.script(email(3), "451@rcpt")         # a mailbox busy for a moment
    smtp_server.script(email(4), "451@data")         # the message refused after DATA: not taken
    cid = make_campaign(engine, program)
    result = await run(workers, engine, cid)

    assert result.state == RunState.completed and campaign_row(engine, cid).status == "completed"
    assert smtp_server.received() == Counter({email(i): 1 for i in range(1, 9)})     # everyone, once
    assert Counter(smtp_server.rcpt_attempts)[email(3)] == 2                        # refused, then asked again
    rows = by_member(deliveries(engine, cid))
    assert {r.status for r in rows.values()} == {"sent"}
    assert result.counts.sent + result.counts.already_done == 8 and result.counts.in_doubt == 0
    assert_adds_up(result, 8)


async def test_a_recipient_refused_with_550_is_suppressed_tried_once_and_the_others_get_theirs(
        workers: Any, engine: Engine, smtp_server: FaultySmtp) -> None:
    program, ids = bulk_members(engine, 6)
    smtp_server.script(email(2), *["550@rcpt"] * 5)   # the server would refuse it every time it is asked
    cid = make_campaign(engine, program)
    result = await run(workers, engine, cid)

    assert result.state == RunState.completed
    assert Counter(smtp_server.rcpt_attempts)[email(2)] == 1                        # asked once, never again
    assert smtp_server.received() == Counter({email(i): 1 for i in (1, 3, 4, 5, 6)})
    rows = by_member(deliveries(engine, cid))
    bad = rows[ids[1]]
    assert (bad.status, bad.reason, bad.error_code) == ("failed", "permanent", "550")
    assert {rows[m].status for m in ids if m != ids[1]} == {"sent"}
    with Session(engine) as s:
        state = s.get(ConsentState, (ids[1], "email", "*"))
        [record] = s.scalars(select(ConsentRecord).where(ConsentRecord.member_id == ids[1],
                                                         ConsentRecord.action == "suppressed")).all()
    assert state is not None and state.status == "suppressed"
    assert (record.source, record.campaign_id) == ("bounce", cid)
    assert (result.counts.sent, result.counts.failed) == (5, 1)
    assert_adds_up(result, 6)

    # the next campaign does not even ask the relay for that address
    cid2 = make_campaign(engine, program, key="autumn")
    result2 = await run(workers, engine, cid2)
    assert Counter(smtp_server.rcpt_attempts)[email(2)] == 1
    again = by_member(deliveries(engine, cid2))[ids[1]]
    assert (again.status, again.reason) == ("suppressed", "suppressed")
    assert result2.counts.sent == 5 and smtp_server.received()[email(1)] == 2


async def test_a_connection_cut_after_data_leaves_that_message_in_doubt_and_never_resends_it(
        workers: Any, engine: Engine, smtp_server: FaultySmtp) -> None:
    program, ids = bulk_members(engine, 6)
    smtp_server.script(email(2), "drop@data")         # taken by the server, the 250 never comes
    cid = make_campaign(engine, program)
    result = await run(workers, engine, cid)

    assert result.state == RunState.completed
    assert smtp_server.received() == Counter({email(i): 1 for i in range(1, 7)})     # m2's one copy, no second
    rows = by_member(deliveries(engine, cid))
    assert (rows[ids[1]].status, rows[ids[1]].reason) == ("in_doubt", "connection_lost")
    assert {rows[m].status for m in ids if m != ids[1]} == {"sent"}
    assert (result.counts.sent, result.counts.in_doubt) == (5, 1)
    assert_adds_up(result, 6)
