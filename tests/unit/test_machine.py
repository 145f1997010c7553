"""Machine opens and clicks told apart from people's: HEAD, no or bare User-Agent, Apple MPP, scanners and
bots, fetches too soon after sending; image proxies that fetch when a person opens are people."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from analytics.machine import CLICK_WINDOW_S, OPEN_WINDOW_S, classify

SAFARI = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.5 Mobile/15E148 Safari/604.1")
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
OUTLOOK = "Microsoft Office/16.0 (Windows NT 10.0; Microsoft Outlook 16.0.17328; Pro)"
GMAIL = "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
YAHOO = "YahooMailProxy; https://help.yahoo.com/kb/yahoo-mail-proxy-SLN28749.html"
HOUR = 3600.0


@pytest.mark.parametrize("ua", [SAFARI, CHROME, OUTLOOK, GMAIL, YAHOO])
def test_a_person_opening_the_message_an_hour_later_is_a_human_open(ua):
    assert classify("GET", ua, "203.0.113.9", HOUR, "open") is None


@pytest.mark.parametrize("ua", [SAFARI, CHROME])
def test_a_person_clicking_in_a_browser_is_a_human_click(ua):
    assert classify("GET", ua, "17.1.2.3", HOUR, "click") is None     # a person behind iCloud Private Relay


@pytest.mark.parametrize("kind", ["open", "click"])
def test_a_head_request_is_a_machine(kind):
    assert classify("HEAD", SAFARI, "203.0.113.9", HOUR, kind) == "head"


@pytest.mark.parametrize("ua", [None, "", "   "])
def test_no_user_agent_is_a_machine(ua):
    assert classify("GET", ua, "203.0.113.9", HOUR, "open") == "no_user_agent"


def test_apple_mail_privacy_protection_prefetch_is_a_machine_open():
    assert classify("GET", "Mozilla/5.0", "17.58.101.7", HOUR, "open") == "apple_mpp"
    assert classify("GET", "Mozilla/5.0", "2001:db8::1", HOUR, "open") == "bare_user_agent"
    assert classify("GET", "Mozilla/5.0", "not-an-ip", HOUR, "open") == "bare_user_agent"


@pytest.mark.parametrize("ua, token", [
    ("Mozilla/5.0 (compatible; bingbot/2.0; +http://www.bing.com/bingbot.htm)", "bot"),
    ("python-requests/2.32.3", "python-requests"),
    ("curl/8.5.0", "curl/"),
    ("Wget/1.21.4", "wget"),
    ("Go-http-client/1.1", "go-http-client"),
    ("Barracuda Sentinel (EE)", "barracuda"),
    ("Mozilla/5.0 (compatible; Mimecast URL Protect)", "mimecast"),
    ("Proofpoint URL Defense", "proofpoint"),
    ("Symantec Email Security.cloud", "symantec"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) BingPreview/1.0b", "preview"),
    ("Mozilla/4.0 (compatible; ms-office; MSOffice 16)", "ms-office"),
    ("Microsoft Office Existence Discovery", "existence discovery"),
    ("Mozilla/5.0 HeadlessChrome/124.0.0.0", "headless"),
])
def test_scanners_bots_tools_and_preview_fetchers_are_machines(ua, token):
    assert classify("GET", ua, "203.0.113.9", HOUR, "click") == f"ua:{token}"
    assert classify("GET", ua, "203.0.113.9", HOUR, "open") == f"ua:{token}"


def test_an_image_proxy_following_a_link_is_not_a_person_clicking():
    assert classify("GET", GMAIL, "66.249.84.1", HOUR, "click") == "ua:googleimageproxy"
    assert classify("GET", YAHOO, "98.136.1.1", HOUR, "click") == "ua:yahoomailproxy"


def test_fetches_right_after_sending_are_the_receiving_servers_scanner():
    assert classify("GET", SAFARI, "203.0.113.9", 0.5, "open") == "too_soon"
    assert classify("GET", SAFARI, "203.0.113.9", OPEN_WINDOW_S + 0.1, "open") is None
    assert classify("GET", CHROME, "203.0.113.9", 9.0, "click") == "too_soon"
    assert classify("GET", CHROME, "203.0.113.9", CLICK_WINDOW_S + 0.1, "click") is None
    assert classify("GET", GMAIL, "66.249.84.1", 0.2, "open") == "too_soon"
    assert classify("GET", SAFARI, "203.0.113.9", None, "click") is None      # sending time unknown


@pytest.mark.parametrize("channel", ["push", "telegram", "inbox"])
def test_a_tap_right_after_a_push_telegram_or_inbox_message_is_a_person(channel):
    assert classify("GET", SAFARI, "203.0.113.9", 0.5, "click", channel) is None
    assert classify("GET", SAFARI, "203.0.113.9", 0.5, "click", "email") == "too_soon"


@given(method=st.sampled_from(["GET", "HEAD", "get", "head"]), ua=st.one_of(st.none(), st.text(max_size=200)),
       ip=st.one_of(st.none(), st.text(max_size=40), st.ip_addresses().map(str)),
       seconds=st.one_of(st.none(), st.floats(allow_nan=False, min_value=-1e6, max_value=1e9)),
       kind=st.sampled_from(["open", "click"]))
def test_classify_answers_a_short_reason_or_none_for_anything(method, ua, ip, seconds, kind):
    reason = classify(method, ua, ip, seconds, kind)
    assert reason is None or (isinstance(reason, str) and 0 < len(reason) <= 40)
    if method.upper() == "HEAD":
        assert reason == "head"
