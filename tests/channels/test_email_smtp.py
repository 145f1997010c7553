"""The SMTP channel: real aiosmtplib over a real socket to a local fake server; outcomes typed exactly."""

from __future__ import annotations

import asyncio

import pytest

from channels.base import InDoubtChannelError, OutboundMessage, PermanentChannelError, TransientChannelError
from channels.email_smtp import SmtpConfig, SmtpEmailChannel
from tests.conftest import FakeSmtp, _Handler, free_port, serving_smtp


def msg(to: str, i: int = 1) -> OutboundMessage:
    return OutboundMessage(delivery_id=i, to=to, subject="Привет", text="текст", html="<p>html</p>",
                           message_id=f"<d{i}@clarion.example>", headers={"List-Unsubscribe": "<https://x/u/t>"})


def channel(port: int, connections: int = 2) -> SmtpEmailChannel:
    return SmtpEmailChannel(SmtpConfig(host="127.0.0.1", port=port, connections=connections, timeout=5,
                                       sender="Shop <news@shop.example>"))


async def test_messages_arrive_with_headers_and_both_parts(smtp_server):
    ch = channel(smtp_server.port)
    await asyncio.gather(*(ch.send(msg(f"u{i}@example.com", i)) for i in range(10)))
    await ch.aclose()
    assert sorted(smtp_server.recipients()) == sorted(f"u{i}@example.com" for i in range(10))
    m = smtp_server.messages[0].message
    assert m["Subject"] == "Привет" and m["From"] == "Shop <news@shop.example>"
    assert m.get_body(("plain",)).get_content().strip() == "текст"
    assert smtp_server.messages[0].mail_from == "news@shop.example"


def parts(received) -> list[tuple[str, str]]:
    """(content type, transfer encoding) of each leaf part of a received message."""
    return [(p.get_content_type(), p["Content-Transfer-Encoding"]) for p in received.message.walk()
            if not p.is_multipart()]


async def test_a_server_offering_8bitmime_gets_8bit_utf8_parts_with_body_8bitmime(smtp_server):
    ch = channel(smtp_server.port)
    await ch.send(msg("a@example.com"))
    await ch.aclose()
    got = smtp_server.messages[0]
    assert got.mail_options == ["BODY=8BITMIME"]
    assert parts(got) == [("text/plain", "8bit"), ("text/html", "7bit")]
    assert "текст".encode() in got.data
    assert got.message.get_body(("plain",)).get_content() == "текст"
    assert got.message["Subject"] == "Привет"


class _No8BitMime(_Handler):
    async def handle_EHLO(self, server, session, envelope, hostname, responses):  # noqa: ANN001, ANN201
        session.host_name = hostname
        return [r for r in responses if "8BITMIME" not in r.upper()]


async def test_a_server_without_8bitmime_gets_a_7bit_message_in_base64():
    box = FakeSmtp("127.0.0.1", free_port())
    with serving_smtp(_No8BitMime(box), box.host, box.port):
        ch = channel(box.port)
        await ch.send(msg("a@example.com"))
        await ch.aclose()
    got = box.messages[0]
    assert got.mail_options == []
    assert parts(got) == [("text/plain", "base64"), ("text/html", "base64")]
    got.data.decode("ascii")
    assert got.message.get_body(("plain",)).get_content() == "текст"


async def test_refused_recipient_is_permanent_and_revokes_the_address(smtp_server):
    smtp_server.refuse["gone@example.com"] = 550
    ch = channel(smtp_server.port)
    with pytest.raises(PermanentChannelError) as info:
        await ch.send(msg("gone@example.com"))
    assert info.value.revoke_address and info.value.code == "550"
    await ch.send(msg("ok@example.com"))  # the connection is still usable for the others
    await ch.aclose()
    assert smtp_server.recipients() == ["ok@example.com"]


async def test_deferred_recipient_is_transient(smtp_server):
    smtp_server.refuse["later@example.com"] = 451
    ch = channel(smtp_server.port)
    with pytest.raises(TransientChannelError) as info:
        await ch.send(msg("later@example.com"))
    await ch.aclose()
    assert info.value.code == "451" and not isinstance(info.value, PermanentChannelError)


async def test_no_server_is_transient_nothing_sent():
    ch = channel(free_port())
    with pytest.raises(TransientChannelError):
        await ch.send(msg("a@example.com"))
    await ch.aclose()


async def test_connection_dropped_after_data_is_in_doubt():
    """A server that takes the message body and hangs up before answering: the message may be delivered."""
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"220 fake ESMTP\r\n")
        while line := await reader.readline():
            cmd = line.upper()
            if cmd.startswith(b"EHLO") or cmd.startswith(b"HELO"):
                writer.write(b"250 fake\r\n")
            elif cmd.startswith(b"DATA"):
                writer.write(b"354 go on\r\n")
                await writer.drain()
                while (await reader.readline()) not in (b".\r\n", b""):
                    pass
                writer.close()  # no answer to the end of data
                return
            else:
                writer.write(b"250 OK\r\n")
            await writer.drain()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ch = channel(port, connections=1)
    with pytest.raises(InDoubtChannelError):
        await ch.send(msg("a@example.com"))
    await ch.aclose()
    server.close()
    await server.wait_closed()
