"""The delivery activities' Prometheus metrics (activities.metrics) after a real broadcast on the
time-skipping server: outcomes by channel, the chunks' send time and queue lag, the money spent by
program. The registry is the process's: each test compares before and after."""

from __future__ import annotations

from decimal import Decimal

import pytest
from prometheus_client import REGISTRY
from sqlalchemy.engine import Engine

from tests.factories import make_campaign
from tests.workflows.conftest import bulk_members, set_budget, set_program_settings

pytestmark = pytest.mark.asyncio(loop_scope="session")

SAMPLES = {
    "sent": ("clarion_messages_total", {"channel": "email", "outcome": "sent"}),
    "suppressed": ("clarion_messages_total", {"channel": "email", "outcome": "suppressed"}),
    "failed": ("clarion_messages_total", {"channel": "email", "outcome": "failed"}),
    "spent": ("clarion_budget_spent_total", {"program": "metered", "currency": "EUR"}),
    "chunks": ("clarion_send_chunk_seconds_count", {}),
    "lagged": ("clarion_queue_lag_seconds_count", {}),
}


def snapshot() -> dict[str, float]:
    return {k: REGISTRY.get_sample_value(name, labels) or 0.0 for k, (name, labels) in SAMPLES.items()}


async def test_a_broadcast_counts_its_outcomes_by_channel_its_chunks_and_its_spend(workers, engine: Engine) -> None:
    program, _ = bulk_members(engine, 12, program="metered", consent=lambda i: i % 4 != 0)   # 3 without consent
    set_program_settings(engine, program, {"unit_costs": {"email": "0.25"}})
    cid = make_campaign(engine, program, program="metered", key="metered")
    set_budget(engine, cid, "100")
    before = snapshot()
    async with workers(engine=engine, chunk=4) as rig:
        rig.smtp.refuse["m5@test.example"] = 550                # one permanent failure, no other channel
        result = await rig.finish(await rig.start(cid, page_size=6, concurrency=1))
    assert (result.counts.sent, result.counts.suppressed, result.counts.failed) == (8, 3, 1)
    after = snapshot()
    delta = {k: after[k] - before[k] for k in SAMPLES}
    assert delta["sent"] == 8 and delta["suppressed"] == 3 and delta["failed"] == 1
    assert Decimal(str(delta["spent"])) == Decimal("2.00")    # 8 sent at 0.25; the failed one was refunded
    # two pages of 6 members, in chunks of up to 4 of those with consent: 5 (4 + 1) and 4 (4)
    assert delta["chunks"] == 3 and delta["lagged"] == 3
