"""The delivery activities' Prometheus metrics (``prometheus_client``, the process's default registry).

The hot path reports once per chunk (``record``) with what it has already counted, so a message costs
a dict increment in ``delivery._Tally.add`` and nothing more here. Labels are closed sets (channel,
outcome) or the program's key: never a member, an address, a campaign or a template.

    clarion_messages_total{channel, outcome}     outcomes: sent, queued, failed, in_doubt, suppressed,
                                                 held_out (channel "none": no channel was chosen or known)
    clarion_send_chunk_seconds                   one chunk's sending: its provider calls (concurrent, up to
                                                 chunk_size messages) and its waits for rate-limit slots
    clarion_queue_lag_seconds                    how late a chunk went out against the time its page was
                                                 due (the ``now`` the workflow gave the batch)
    clarion_budget_spent_total{program, currency}  cost of the messages charged (sent, queued, in doubt):
                                                 the reservations kept, refunds already deducted

Serving them (the API's ``/metrics``, ``CLARION_METRICS_PORT``) is the composition root's business
(``app/observability.py``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal

from prometheus_client import Counter, Histogram

MESSAGES = Counter("clarion_messages", "Delivery outcomes decided by the delivery activities",
                   ["channel", "outcome"])
SEND_SECONDS = Histogram(
    "clarion_send_chunk_seconds",
    "Time to send one chunk (provider calls of up to chunk_size messages, with rate-limit waits)",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600))
QUEUE_LAG = Histogram(
    "clarion_queue_lag_seconds",
    "How late a chunk went out against the time its page was due (one observation per chunk)",
    buckets=(0.5, 1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400))
SPENT = Counter("clarion_budget_spent", "Money charged for messages (sent, queued, in doubt), program currency",
                ["program", "currency"])


def record(*, program: str, currency: str, by_channel: Mapping[tuple[str, str], int], spent: Decimal,
           due: datetime | None = None, began: float | None = None, seconds: float | None = None) -> None:
    """What one chunk (or a batch's preparation) decided: outcome counts by (channel, status), the money
    charged; and, when messages were sent, when the sending began (``time.time()``) and how long it took."""
    for (channel, outcome), n in by_channel.items():
        if n:
            MESSAGES.labels(channel, outcome).inc(n)
    if spent > 0:
        SPENT.labels(program, currency).inc(float(spent))
    if seconds is not None:
        SEND_SECONDS.observe(seconds)
    if due is not None and began is not None:
        # a time-skipping test server's clock runs ahead of the real one: no negative lag
        QUEUE_LAG.observe(max(0.0, began - due.timestamp()))
