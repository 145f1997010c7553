"""Link rewriting: a message's http(s) links go through the click redirect with sealed tokens, the email gets
the open pixel; our own member links, mailto:, tel:, anchors and opted-out links stay as written, and nothing
else in the HTML changes."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.links import LABEL_MAX, Tracker, personal_words, safe_target, slug
from consent.tokens import TRACK_CLICK, TRACK_OPEN, UNSUBSCRIBE, BadToken, Signer

SIGNER = Signer(b"t" * 32)
BASE = "https://clarion.example"
TRACKED = re.compile(re.escape(BASE) + r"/t/c/([A-Za-z0-9_-]+)")
PIXEL = re.compile(r'<img src="' + re.escape(BASE) + r'/t/o/([A-Za-z0-9_-]+)" width="1" height="1" alt="" '
                   r'style="display:block;border:0">')


def tracker(delivery_id: int = 7, personal: frozenset[str] = frozenset()) -> Tracker:
    return Tracker(SIGNER, BASE, delivery_id, personal)


def clicks(text: str) -> list[dict]:
    return [SIGNER.verify(TRACK_CLICK, t) for t in TRACKED.findall(text)]


EMAIL = """<html><body><div>
<a href="https://shop.example/offer?utm_source=mail&amp;utm_medium=email" style="color:#fff" target="_blank">See the
 <b>offer</b> &amp; more</a>
<A HREF='https://shop.example/caf%C3%A9' class="btn">Caf&eacute; menu</A>
<a href=https://shop.example/plain>Plain</a>
<a href="https://clarion.example/u/UNSUB">Unsubscribe</a> <a href="https://clarion.example/p/PREFS">Preferences</a>
<a href="mailto:help@shop.example">Write to us</a> <a href="tel:+14155550100">Call</a> <a href="#top">Top</a>
<a href="/relative">Relative</a> <a data-notrack href="https://shop.example/private">Private</a>
<a href="https://shop.example/sg" clicktracking=off>SendGrid style</a>
<a href="https://trusted@evil.example/">Userinfo</a>
<a href="https://shop.example/logo"><img src="https://shop.example/logo.png" alt="Shop logo"></a>
</div></body></html>"""


def test_email_links_go_through_the_redirect_with_the_original_url_sealed_in():
    out = tracker().email_html(EMAIL)

    found = clicks(out)
    assert [(c["d"], c["u"], c["l"]) for c in found] == [
        (7, "https://shop.example/offer?utm_source=mail&utm_medium=email", "1-see-the-offer-more"),
        (7, "https://shop.example/caf%C3%A9", "2-café-menu"),
        (7, "https://shop.example/plain", "3-plain"),
        (7, "https://shop.example/logo", "4-shop-logo"),
    ]


def test_only_the_href_value_changes_attributes_text_and_entities_stay():
    out = tracker().email_html(EMAIL)

    assert out.count("<a ") + out.count("<A ") == EMAIL.count("<a ") + EMAIL.count("<A ")
    assert len(TRACKED.findall(out)) == 4
    assert 'style="color:#fff" target="_blank">See the\n <b>offer</b> &amp; more</a>' in out
    assert "class=\"btn\">Caf&eacute; menu</A>" in out and "<A HREF='https://clarion.example/t/c/" in out
    assert "<a href=https://clarion.example/t/c/" in out


@pytest.mark.parametrize("kept", [
    '<a href="https://clarion.example/u/UNSUB">', '<a href="https://clarion.example/p/PREFS">',
    '<a href="mailto:help@shop.example">', '<a href="tel:+14155550100">', '<a href="#top">',
    '<a href="/relative">', '<a data-notrack href="https://shop.example/private">',
    '<a href="https://shop.example/sg" clicktracking=off>', '<a href="https://trusted@evil.example/">',
])
def test_own_member_links_mailto_tel_anchors_and_opted_out_links_are_left_as_written(kept):
    assert kept in tracker().email_html(EMAIL)


def test_the_open_pixel_goes_just_before_the_end_of_the_body():
    out = tracker(delivery_id=9).email_html(EMAIL)

    [token] = PIXEL.findall(out)
    assert out.endswith(PIXEL.search(out).group(0) + "</body></html>")
    assert SIGNER.verify(TRACK_OPEN, token)["d"] == 9
    assert tracker().email_html("<p>no body</p>").startswith("<p>no body</p><img src=")
    assert PIXEL.search(tracker().email_html("<HTML><BODY>x</BODY ></HTML>")).end() == len("<HTML><BODY>x") + \
        len(tracker().pixel())


def test_a_token_of_one_purpose_is_refused_for_another():
    out = tracker().email_html(EMAIL)
    [open_token] = PIXEL.findall(out)
    with pytest.raises(BadToken):
        SIGNER.verify(TRACK_CLICK, open_token)
    with pytest.raises(BadToken):
        SIGNER.verify(UNSUBSCRIBE, TRACKED.findall(out)[0])


def test_the_text_part_uses_the_same_tracked_links_as_the_html():
    t = tracker()
    html = t.email_html(EMAIL)
    text = t.text("See the offer: https://shop.example/offer?utm_source=mail&utm_medium=email\n"
                  "Our app (https://app.example/get). Or https://shop.example/new.\n"
                  "Unsubscribe: https://clarion.example/u/UNSUB\n"
                  "Mail help@shop.example, see <https://shop.example/plain>")

    html_links = dict(zip([c["u"] for c in clicks(html)], TRACKED.findall(html), strict=True))
    assert f"See the offer: {BASE}/t/c/{html_links['https://shop.example/offer?utm_source=mail&utm_medium=email']}\n" \
        in text
    assert f"<{BASE}/t/c/{html_links['https://shop.example/plain']}>" in text
    assert "Unsubscribe: https://clarion.example/u/UNSUB\n" in text and "Mail help@shop.example" in text
    assert re.search(r"Our app \(" + re.escape(BASE) + r"/t/c/[A-Za-z0-9_-]+\)\. Or ", text)
    assert re.search(re.escape(BASE) + r"/t/c/[A-Za-z0-9_-]+\.\n", text)
    only_text = [c for c in clicks(text) if c["u"] not in html_links]
    assert [(c["u"], c["l"]) for c in only_text] == [("https://app.example/get", "5-our-app"),
                                                    ("https://shop.example/new", "6-our-app-or")]


def test_telegram_html_links_buttons_and_push_or_inbox_links():
    t = tracker()
    text = t.html('<b>Hi</b> <a href="https://shop.example/a">the offer</a> and <a href="tg://resolve?x">bot</a>')
    buttons = t.buttons([("See the offer", "https://shop.example/weekend"), ("App", "shopapp://offers")])
    link = tracker().link("https://app.example/offers/weekend")

    assert [(c["u"], c["l"]) for c in clicks(text)] == [("https://shop.example/a", "1-the-offer")]
    assert '<a href="tg://resolve?x">bot</a>' in text
    assert buttons[1] == ("App", "shopapp://offers") and buttons[0][0] == "See the offer"
    assert [(c["u"], c["l"]) for c in clicks(buttons[0][1])] == [("https://shop.example/weekend", "2-see-the-offer")]
    assert [(c["u"], c["l"]) for c in clicks(link)] == [("https://app.example/offers/weekend", "1-link")]
    assert tracker().link(None) is None and tracker().link("shopapp://x") == "shopapp://x"


def test_labels_never_carry_the_members_data():
    t = tracker(personal=personal_words(["Anna", "Petrova", "anna.petrova"]))
    out = t.html('<a href="https://s.example/1">Anna Petrova, your card 2770123456789012 awaits</a>'
                 '<a href="https://s.example/2">write to anna.petrova@mail.example</a>'
                 '<a href="https://s.example/3" data-label="Spring banner">Anna, look</a>')

    assert [c["l"] for c in clicks(out)] == ["1-your-card-awaits", "2-write-to-mail-example", "3-spring-banner"]


def test_slug_is_short_lower_case_words():
    assert slug("  See THE offer!!  ") == "see-the-offer"
    assert len(slug("word " * 40)) <= LABEL_MAX and slug("word " * 40).startswith("word-word")
    assert slug("Подробнее о предложении") == "подробнее-о-предложении"
    assert slug("") == ""


@pytest.mark.parametrize("url, ok", [
    ("https://shop.example/a?b=1#c", True), ("http://shop.example:8080/", True),
    ("https://trusted@evil.example", False), ("https://user:pw@shop.example/", False),
    ("//evil.example", False), ("/t/c/x", False), ("javascript:alert(1)", False), ("data:text/html,x", False),
    ("https:///evil.example", False), ("https:\\\\evil.example", False), ("https://evil.example\n", False),
    ("https:evil.example", False), ("ftp://shop.example/", False), ("https://shop.example:99999/", False),
    ("", False), ("https://", False),
])
def test_safe_target(url, ok):
    assert safe_target(url) is ok


@given(st.text(alphabet=st.sampled_from(list("<>a hrefHREF=\"'/:.#&;bodyhttps\n")) | st.characters(), max_size=300))
def test_rewriting_never_fails_and_keeps_text_without_links(html):
    out = tracker().html(html)
    if "/t/c/" not in out:
        assert out == html
    assert tracker().text(html).count("\n") == html.count("\n")
