"""Was an open or a click a machine's? Pure heuristics over what a tracking request tells us.

:func:`classify` answers a short reason (kept in the response's ``detail``) or None for a person. Checked in
this order; the first that matches wins:

``head``             a HEAD request: link checkers and scanners ask whether a URL exists, people's mail
                     clients and browsers GET it.
``too_soon``         an open within ``OPEN_WINDOW_S`` or a click within ``CLICK_WINDOW_S`` of sending: the
                     receiving server's scanner fetched it on arrival (Microsoft Defender Safe Links, for one,
                     checks URLs before the message is delivered); nobody reads that fast. Email only: a push,
                     Telegram or inbox message is often tapped within seconds by its reader.
``no_user_agent``    no User-Agent at all: every mail client and browser sends one.
``apple_mpp``        Apple Mail Privacy Protection: the proxy fetches every remote image when the message
                     arrives, opened or not, with the bare User-Agent ``Mozilla/5.0`` (ua-parser/uap-core#509),
                     from Apple's 17.0.0.0/8 (ARIN APPLE-WWNET). The same bare User-Agent from elsewhere
                     (MPP egresses through iCloud Private Relay's partners too) is ``bare_user_agent``.
``ua:<token>``       a User-Agent naming a bot, crawler, HTTP library, link scanner or preview fetcher
                     (``MACHINE_UA``, matched case-insensitively as substrings).

Image proxies that fetch when a person opens the message (Gmail's ``GoogleImageProxy``, ``YahooMailProxy``)
are human opens; the same proxies following a link are not a person clicking it.
"""

from __future__ import annotations

import ipaddress
from typing import Literal

Kind = Literal["open", "click"]

OPEN_WINDOW_S = 2.0      # an open this soon after sending is the receiving server's scanner
CLICK_WINDOW_S = 10.0    # a click this soon after sending is a link scanner at the receiving server

APPLE = ipaddress.ip_network("17.0.0.0/8")
MPP_USER_AGENT = "mozilla/5.0"

#: fetchers that load images when a person opens the message: human opens (never human clicks)
OPEN_PROXIES = ("googleimageproxy", "yahoomailproxy")

#: substrings of machine User-Agents (lower case): bots and crawlers, HTTP libraries and tools, the link
#: scanners of mail security gateways, and link-preview fetchers
MACHINE_UA = (
    # bots, crawlers, headless browsers
    "bot", "spider", "crawl", "slurp", "headless", "phantomjs", "lighthouse",
    # HTTP libraries and command-line tools
    "python-requests", "python-urllib", "python-httpx", "aiohttp", "httpx/", "curl/", "wget", "go-http-client",
    "java/", "okhttp", "apache-httpclient", "libwww-perl", "node-fetch", "axios/", "powershell",
    # mail security gateways and link scanners
    "barracuda", "mimecast", "proofpoint", "symantec", "messagelabs", "ironport", "fortiguard", "sophos",
    "trendmicro", "forcepoint", "safelinks", "safe links", "urldefense", "scanner",
    # Microsoft link checks and previews, other link previews
    "ms-office", "existence discovery", "preview", "facebookexternalhit", "whatsapp", "embedly",
)


def _apple(ip: str | None) -> bool:
    if not ip:
        return False
    try:
        return ipaddress.ip_address(ip) in APPLE
    except ValueError:
        return False


def classify(method: str, user_agent: str | None, ip: str | None, seconds_since_sent: float | None,
             kind: Kind, channel: str | None = "email") -> str | None:
    """Why this open or click is a machine's, or None when a person made it."""
    if method.upper() == "HEAD":
        return "head"
    if channel == "email" and seconds_since_sent is not None and \
            seconds_since_sent < (OPEN_WINDOW_S if kind == "open" else CLICK_WINDOW_S):
        return "too_soon"
    ua = (user_agent or "").strip().lower()
    if not ua:
        return "no_user_agent"
    if ua == MPP_USER_AGENT:
        return "apple_mpp" if _apple(ip) else "bare_user_agent"
    for proxy in OPEN_PROXIES:
        if proxy in ua:
            return None if kind == "open" else f"ua:{proxy}"
    for token in MACHINE_UA:
        if token in ua:
            return f"ua:{token}"
    return None
