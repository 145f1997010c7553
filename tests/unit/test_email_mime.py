"""The fast MIME builder: what a mail client reads back from its bytes."""

from __future__ import annotations

import email
import email.policy
import re
from datetime import datetime, timedelta, timezone

import pytest

from channels.mime import build_email, encode_header_value, new_boundary

DATE = datetime(2026, 6, 1, 9, 30, tzinfo=timezone(timedelta(hours=3)))
SUBJECT_RU = "Анна, двойные баллы всю неделю в «Клубе» 🎉"
TEXT = "Здравствуйте, Анна!\nДвойные баллы до воскресенья 🎉\n\nОтписаться: https://x.example/u?t=1&m=2\n"
HTML = "<p>Здравствуйте, <b>Анна</b>! 🎉</p>\n<a href=\"https://x.example/u?t=1&amp;m=2\">Отписаться</a>"


def build(**changes) -> bytes:
    args = {
        "sender": "Clarion <news@clarion.example>",
        "to": "anna@example.com",
        "subject": SUBJECT_RU,
        "text": TEXT,
        "html": HTML,
        "message_id": "<abc123@clarion.example>",
        "date": DATE,
        "headers": {
            "List-Unsubscribe": "<https://x.example/u?t=1>, <mailto:unsub@clarion.example>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-Campaign": "double-points",
        },
        "boundary": new_boundary("<abc123@clarion.example>"),
    }
    args.update(changes)
    return build_email(**args)


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def test_addresses_and_ids_read_back():
    msg = parse(build())

    assert msg["From"] == "Clarion <news@clarion.example>"
    assert msg["From"].addresses[0].addr_spec == "news@clarion.example"
    assert msg["To"] == "anna@example.com"
    assert msg["Message-ID"] == "<abc123@clarion.example>"
    assert msg["MIME-Version"] == "1.0"
    assert msg["Date"].datetime == DATE


def test_cyrillic_and_emoji_subject_decodes_back_exactly():
    assert parse(build())["Subject"] == SUBJECT_RU


def test_ascii_subject_is_sent_as_is():
    data = build(subject="Double points week")

    assert b"\r\nSubject: Double points week\r\n" in data
    assert parse(data)["Subject"] == "Double points week"


def test_extra_headers_are_present():
    msg = parse(build())

    assert msg["List-Unsubscribe"] == "<https://x.example/u?t=1>, <mailto:unsub@clarion.example>"
    assert msg["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert msg["X-Campaign"] == "double-points"


def test_non_ascii_extra_header_decodes_back():
    msg = parse(build(headers={"X-Program": "Клуб «Ромашка»"}))

    assert msg["X-Program"] == "Клуб «Ромашка»"


def test_newline_in_subject_cannot_inject_a_header():
    msg = parse(build(subject="Hello\r\nBcc: victim@example.com"))

    assert msg["Bcc"] is None
    assert "Bcc: victim@example.com" in msg["Subject"]
    assert "\n" not in msg["Subject"]


def test_newline_in_extra_header_cannot_inject_a_header():
    msg = parse(build(headers={"X-Campaign": "a\nBcc: victim@example.com"}))

    assert msg["Bcc"] is None


def test_text_and_html_are_alternatives_that_decode_back_exactly():
    msg = parse(build())

    assert msg.get_content_type() == "multipart/alternative"
    parts = list(msg.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    assert parts[0].get_content() == TEXT
    assert parts[1].get_content() == HTML
    assert msg.get_body(("html",)).get_content() == HTML
    assert msg.get_body(("plain",)).get_content() == TEXT


def test_text_only_message_when_there_is_no_html():
    msg = parse(build(html=None))

    assert not msg.is_multipart()
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content() == TEXT
    assert msg["Subject"] == SUBJECT_RU


def test_empty_text_body_round_trips():
    assert parse(build(text="", html=None)).get_content() == ""


def test_body_with_long_lines_and_boundary_lookalikes_round_trips():
    boundary = new_boundary("x")
    text = ("--" + boundary + "\n") * 3 + "я" * 5000
    html = "<p>" + "🎉" * 3000 + "</p>"

    msg = parse(build(text=text, html=html, boundary=boundary))

    assert msg.get_body(("plain",)).get_content() == text
    assert msg.get_body(("html",)).get_content() == html


@pytest.mark.parametrize("html", [HTML, None])
def test_every_line_ends_with_crlf(html):
    # a short subject: long encoded subjects are covered by test_long_non_ascii_subject_is_folded_with_crlf
    data = build(html=html, subject="Привет", headers={"X-Program": "Клуб"},
                 text="a\nb\r\nc\rd " + "ж" * 3000)

    assert data.endswith(b"\r\n")
    assert b"\n" not in data.replace(b"\r\n", b"")
    assert b"\r" not in data.replace(b"\r\n", b"")


@pytest.mark.parametrize("eight_bit", [False, True])
@pytest.mark.parametrize("html", [HTML, None])
def test_no_line_is_longer_than_998_octets(html, eight_bit):
    data = build(html=html, text="x" * 5000, subject="s" * 950, eight_bit=eight_bit,
                 headers={"List-Unsubscribe": "<https://x.example/" + "t" * 1200 + ">"})

    assert max(len(line) for line in re.split(rb"\r\n|\r|\n", data)) <= 998


def test_output_is_7bit_ascii():
    build().decode("ascii")


def test_boundary_is_stable_for_a_message_id_and_differs_between_ids():
    assert new_boundary("<a@x>") == new_boundary("<a@x>")
    assert new_boundary("<a@x>") != new_boundary("<b@x>")
    assert new_boundary("<a@x>").startswith("=_clarion_")


def test_ascii_header_value_passes_through_unchanged():
    assert encode_header_value("Double points week") == "Double points week"


def test_long_non_ascii_subject_is_folded_with_crlf():
    data = build(subject=SUBJECT_RU * 3)

    assert b"\n" not in data.replace(b"\r\n", b"")
    assert parse(data)["Subject"] == SUBJECT_RU * 3


def test_recipient_with_internationalized_domain_can_be_addressed():
    msg = parse(build(to="anna@пример.рф"))

    domain = msg["To"].addresses[0].domain
    assert domain in ("пример.рф", "xn--e1afmkfd.xn--p1ai")


# --- 8-bit parts (the server offers 8BITMIME) ---------------------------------------------------------


def lf(text: str) -> str:
    """What a mail client shows: an 8-bit part's lines end in CRLF on the wire."""
    return text.replace("\r\n", "\n")


def encodings(data: bytes) -> list[str]:
    return [p["Content-Transfer-Encoding"] for p in parse(data).walk() if not p.is_multipart()]


def test_eight_bit_parts_decode_back_and_are_a_quarter_smaller_than_base64():
    eight, seven = build(eight_bit=True), build()

    msg = parse(eight)
    assert encodings(eight) == ["8bit", "8bit"] and encodings(seven) == ["base64", "base64"]
    assert lf(msg.get_body(("plain",)).get_content()) == TEXT
    assert lf(msg.get_body(("html",)).get_content()) == HTML
    assert msg["Subject"] == SUBJECT_RU                      # headers stay 7-bit (RFC 2047)
    assert "Здравствуйте".encode() in eight
    assert len(eight) < len(seven)
    big = "<p>Здравствуйте, Анна! Двойные баллы всю неделю.</p>\n" * 100
    assert len(build(html=big, eight_bit=True)) < 0.8 * len(build(html=big))


def test_an_ascii_part_is_labelled_7bit():
    data = build(text="Hello Anna\n", html="<p>Hello</p>", eight_bit=True)

    assert encodings(data) == ["7bit", "7bit"]
    assert lf(parse(data).get_body(("plain",)).get_content()) == "Hello Anna\n"


@pytest.mark.parametrize("html", [HTML, None])
def test_eight_bit_lines_end_with_crlf_even_from_lone_cr_or_lf(html):
    data = build(html=html, text="a\nb\r\nc\rd ж\n", eight_bit=True)

    assert b"\n" not in data.replace(b"\r\n", b"") and b"\r" not in data.replace(b"\r\n", b"")
    assert lf(parse(data).get_body(("plain",)).get_content()) == "a\nb\nc\nd ж\n"


@pytest.mark.parametrize("bad", [
    "я" * 500 + "\n",                        # 1,000 octets on one line (500 characters)
    "before\x00after",                       # a NUL may not go in an 8-bit part
    "--" + new_boundary("<abc123@clarion.example>") + "\nFake: part\n",   # the boundary in the text
])
def test_a_part_that_cannot_go_eight_bit_goes_in_base64_and_the_other_stays_eight_bit(bad):
    data = build(text=bad, eight_bit=True)

    assert encodings(data) == ["base64", "8bit"]
    msg = parse(data)
    assert msg.get_body(("plain",)).get_content() == bad
    assert lf(msg.get_body(("html",)).get_content()) == HTML
    assert max(len(line) for line in data.split(b"\r\n")) <= 998


def test_a_line_of_exactly_998_octets_goes_eight_bit_and_a_text_only_message_ends_with_a_line_break():
    text = "я" * 499                              # 998 octets
    data = build(text=text, html=None, eight_bit=True)

    assert encodings(data) == ["8bit"] and parse(data).get_content() == text + "\r\n"
    assert data.endswith(text.encode() + b"\r\n")
