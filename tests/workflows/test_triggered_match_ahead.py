"""A busy delivery round has the match loop look for new events before it ends (TriggeredCampaign._ask_match):
an event stored while a round sends goes out in the next round, with no ``wake`` signal and no poll.

Real TriggeredCampaign and activities on the time-skipping server, a real SQLite file, and the fault SMTP
server holding the first message's reply so that the second event is stored while the round is sending. The
poll interval is 30 days and the test waits in real time (the server skips no time meanwhile), so only the
match the round asks for can find the second event.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy.engine import Engine

from tests.factories import make_campaign
from tests.faults.fake_smtp import FaultySmtp, faulty_smtp
from tests.workflows.conftest import add_events, bulk_members, email, settle, wait_for, wait_for_progress
from workflows.contracts import TriggeredInput
from workflows.triggered import TriggeredCampaign

pytestmark = pytest.mark.asyncio(loop_scope="session")

POLL = 30 * 86400.0


@pytest.fixture
def smtp_server() -> Iterator[FaultySmtp]:
    """The ``workers`` rig's SMTP server, here one that can hold a reply."""
    with faulty_smtp() as box:
        yield box


async def test_an_event_stored_while_a_round_sends_goes_out_next_without_a_wake_or_a_poll(
        workers, engine: Engine, smtp_server: FaultySmtp) -> None:
    program, (m1, m2) = bulk_members(engine, 2)
    cid = make_campaign(engine, program, key="thanks", kind="triggered", template="thank_you",
                        trigger={"event": "purchase"})
    async with workers(engine=engine) as rig:
        handle = await rig.start_workflow(TriggeredCampaign.run, TriggeredInput(campaign_id=cid, poll_seconds=POLL))
        await wait_for_progress(handle, lambda p: p.run_rounds >= 1, query=TriggeredCampaign.progress,
                                what="the first round")
        await settle(handle)
        t0 = await rig.now()
        paid = {"amount": 1200, "currency": "EUR"}

        smtp_server.hang_after(0)          # the first message is taken, its reply held: the round is sending
        add_events(engine, program, [("e1", m1, "purchase", t0, paid)])
        await handle.signal(TriggeredCampaign.wake)
        assert await asyncio.to_thread(smtp_server.hanging.wait, 30), "the first reaction was not sent"
        add_events(engine, program, [("e2", m2, "purchase", t0, paid)])   # no wake for this one
        smtp_server.release()

        await wait_for(lambda: smtp_server.received() == Counter({email(1): 1, email(2): 1}), timeout=30,
                       what="the second reaction, matched at the end of the first one's round")
        await settle(handle)
        await handle.signal(TriggeredCampaign.cancel)
        result = await rig.finish(handle)
    assert result.counts.sent == 2 and result.total == 2
