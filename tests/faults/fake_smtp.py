"""An SMTP server on 127.0.0.1 (aiosmtpd) that can be told to misbehave, for the fault tests.

It records every RCPT it is asked for (``rcpt_attempts``, accepted or not) and every message it took
(``accepted``: DATA received in full). What it can be scripted to do:

- ``busy(n)``: answer the next ``n`` MAIL FROM commands ``421 4.3.2 try again later`` (a relay that is busy);
- ``script(address, *actions)``: the next transactions to ``address`` meet these actions in turn:
  ``"451@rcpt"`` / ``"550@rcpt"`` (RCPT refused with that code), ``"451@data"`` (the message refused after
  DATA with a 4xx: nothing was taken), ``"drop@data"`` (the message is taken, then the connection is cut
  before the reply: the client cannot know);
- ``pace(seconds)``: every DATA reply comes this much later (a slow relay: a campaign that takes a while);
- ``hang_after(n)``: from the ``n+1``-th message on, DATA is taken and recorded, then the reply waits until
  ``release()`` (the test kills the sender meanwhile: the server has the message, the sender never learns).
"""

from __future__ import annotations

import asyncio
import threading
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from email import message_from_bytes, policy
from email.message import EmailMessage

from tests.conftest import free_port, serving_smtp


@dataclass
class Taken:
    rcpt_tos: list[str]
    data: bytes

    @property
    def message(self) -> EmailMessage:
        return message_from_bytes(self.data, policy=policy.default)  # type: ignore[return-value]

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"])


@dataclass
class FaultySmtp:
    host: str
    port: int
    accepted: list[Taken] = field(default_factory=list)
    rcpt_attempts: list[str] = field(default_factory=list)
    scripts: dict[str, list[str]] = field(default_factory=dict)
    busy_left: int = 0
    hang_from: int | None = None
    slow_s: float = 0.0
    hanging: threading.Event = field(default_factory=threading.Event)     # set when a reply is held
    released: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def busy(self, n: int) -> None:
        with self.lock:
            self.busy_left = n

    def script(self, address: str, *actions: str) -> None:
        with self.lock:
            self.scripts.setdefault(address, []).extend(actions)

    def pace(self, seconds: float) -> None:
        self.slow_s = seconds

    def hang_after(self, n: int) -> None:
        with self.lock:
            self.hang_from = n

    def release(self) -> None:
        self.released.set()

    def recipients(self) -> list[str]:
        with self.lock:
            return [r for m in self.accepted for r in m.rcpt_tos]

    def received(self) -> Counter[str]:
        """How many messages each address got (what a member would count in their inbox)."""
        return Counter(self.recipients())

    def message_ids(self) -> Counter[str]:
        with self.lock:
            return Counter(m.message_id for m in self.accepted)

    def _take(self, address: str, stage: str) -> str | None:
        with self.lock:
            queue = self.scripts.get(address)
            if queue and queue[0].endswith("@" + stage):
                return queue.pop(0).split("@", 1)[0]
        return None


class _Handler:
    def __init__(self, box: FaultySmtp) -> None:
        self.box = box

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        with self.box.lock:
            busy = self.box.busy_left > 0
            if busy:
                self.box.busy_left -= 1
        if busy:
            return "421 4.3.2 too busy, try again later"
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        with self.box.lock:
            self.box.rcpt_attempts.append(address)
        code = self.box._take(address, "rcpt")
        if code:
            return f"{code} {'5.1.1 no such user' if code.startswith('5') else '4.2.1 mailbox busy'}"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        rcpt = envelope.rcpt_tos[0] if envelope.rcpt_tos else ""
        action = self.box._take(rcpt, "data")
        if action == "451":
            return "451 4.3.0 temporary failure, message not taken"
        if self.box.slow_s:
            await asyncio.sleep(self.box.slow_s)
        taken = Taken(list(envelope.rcpt_tos), envelope.original_content or b"")
        with self.box.lock:
            self.box.accepted.append(taken)
            hang = self.box.hang_from is not None and len(self.box.accepted) > self.box.hang_from
        if action == "drop":
            server.transport.abort()       # taken, and the line cut before the 250
            return "250 OK"
        if hang:
            self.box.hanging.set()
            while not self.box.released.is_set():
                await asyncio.sleep(0.01)
        return "250 OK"


@contextmanager
def faulty_smtp() -> Iterator[FaultySmtp]:
    box = FaultySmtp("127.0.0.1", free_port())
    with serving_smtp(_Handler(box), box.host, box.port):
        try:
            yield box
        finally:
            box.release()      # a held reply must not keep the server's thread from stopping
