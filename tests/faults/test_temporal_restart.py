"""Temporal's dev server killed and started again in the middle of a campaign.

The dev server keeps its state in a SQLite file (``--db-filename``, as `clarion up` runs it in var/), so
workflows outlive the restart. `clarion worker` runs as its own process and is not touched: it has to ride
out a Temporal that vanished (its polls fail, the page it is sending cannot report) and carry on when
Temporal is back on the same address.

The SMTP server holds its replies from the 31st message on, so a page is in flight when the server is
SIGKILLed; the replies are released while Temporal is still down (the page finishes and has nobody to
report to), and Temporal comes back a moment later.

What must hold: the campaign continues and completes; each consenting member gets exactly one message
(counted at the SMTP server by address and by Message-ID); nothing is in doubt, because the worker never
lost a row it had claimed.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter

import pytest
from sqlalchemy import select
from sqlmodel import Session

from storage.db import make_engine
from storage.tables import Delivery, Member
from tests.faults.fake_smtp import faulty_smtp
from tests.faults.harness import Stack
from workflows.contracts import Progress, RunState

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(150)]

MEMBERS, PAGE, HOLD_FROM = 100, 20, 30


async def test_a_campaign_survives_a_temporal_server_restart_and_sends_nothing_twice(stack: Stack) -> None:
    with faulty_smtp() as smtp:
        client, wf_id = await stack.start_held(smtp, key="temporal-restart", members=MEMBERS, page=PAGE,
                                               hold_from=HOLD_FROM)
        stack.server.kill()                 # a crash: no graceful shutdown
        smtp.release()                      # the page finishes while Temporal is gone
        await asyncio.sleep(1.5)
        assert stack.worker.proc is not None and stack.worker.proc.poll() is None, \
            f"the worker died with Temporal:\n{stack.logs()}"
        restarted = time.monotonic()
        stack.server.start()                # same port, same state file
        client = await stack.server.client()
        result: Progress = await stack.result(client, wf_id)
        after_restart = time.monotonic() - restarted

    engine = make_engine(stack.db_url)
    try:
        with Session(engine) as s:
            rows = s.execute(select(Member.email, Delivery.status).join(Member, Member.id == Delivery.member_id)).all()
    finally:
        engine.dispose()
    got = smtp.received()
    expected = {e for e, st in rows if st != "suppressed"}
    assert result.state == RunState.completed
    assert Counter(st for _, st in rows) == {"sent": 90, "suppressed": 10}         # nothing in doubt, nobody lost
    assert set(got) == expected and set(got.values()) == {1}                      # each exactly once
    assert set(smtp.message_ids().values()) == {1}
    c = result.counts
    assert c.sent + c.suppressed + c.failed + c.in_doubt + c.already_done == c.audience == MEMBERS, c
    assert c.in_doubt == 0 and c.failed == 0, c
    print(f"completed {after_restart:.1f} s after Temporal came back")
