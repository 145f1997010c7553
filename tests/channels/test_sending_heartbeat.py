"""A chunk going to a slow provider keeps its activity's heartbeat alive (real aiosmtplib over a socket to a
local server that takes its time over each message)."""

from __future__ import annotations

import asyncio
import time

from activities.messages import Target
from activities.sending import Sender
from channels.base import OutboundMessage
from channels.email_smtp import SmtpConfig, SmtpEmailChannel
from channels.ratelimit import SharedRateLimiter
from channels.registry import Route
from tests.conftest import FakeSmtp, _Handler, free_port, serving_smtp

SLOW_S = 0.05


class _Slow(_Handler):
    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001, ANN201
        await asyncio.sleep(SLOW_S)
        return await super().handle_DATA(server, session, envelope)


def item(i: int) -> tuple[Target, OutboundMessage]:
    return (Target(delivery_id=i, member_id=i, channel="email", locale="en", context={}, address=f"m{i}@x.example"),
            OutboundMessage(delivery_id=i, to=f"m{i}@x.example", subject="Hi", text="hello", html=None,
                            message_id=f"<d{i}@clarion.example>"))


async def test_a_chunk_sent_slowly_beats_while_it_sends_but_not_for_every_message(engine) -> None:
    box = FakeSmtp("127.0.0.1", free_port())
    beats: list[float] = []
    with serving_smtp(_Slow(box), box.host, box.port):
        channel = SmtpEmailChannel(SmtpConfig(host=box.host, port=box.port, connections=1, timeout=5,
                                              sender="Shop <news@shop.example>"))
        sender = Sender(limiter=SharedRateLimiter(engine), heartbeat_every_s=0.25)
        started = time.monotonic()
        try:
            outcomes = await sender.send_all([item(i) for i in range(1, 31)],
                                             {"email": Route(channel=channel, sandbox=False)},
                                             heartbeat=lambda: beats.append(time.monotonic() - started))
        finally:
            await channel.aclose()
        took = time.monotonic() - started

    assert [o.kind for o in outcomes] == ["sent"] * 30 and len(box.messages) == 30
    assert took >= 30 * SLOW_S
    # one connection, a message at a time (30 × 50 ms): a beat once 0.25 s have passed, at the next message to
    # complete (late by at most one message on a loaded machine), not one per message
    gaps = [b - a for a, b in zip([0.0, *beats], [*beats, took], strict=True)]
    assert len(beats) >= 3 and len(beats) <= took / 0.25
    assert all(g >= 0.25 for g in gaps[:-1]) and max(gaps) < 1.0, gaps
