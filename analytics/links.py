"""Tracked links: a message's links rewritten to our click redirect, and the open pixel. Pure; no I/O.

A tracked link is ``BASE/t/c/<token>``, the pixel ``BASE/t/o/<token>``: sealed tokens
(``consent.tokens.Signer``, purposes ``TRACK_CLICK`` / ``TRACK_OPEN``) holding the delivery id and, for a
click, the original URL and the link's label. The redirect reads its target from the token only, so it
cannot be pointed anywhere else, and nobody can read the URL or the delivery out of it.

What is rewritten (absolute ``http(s)`` links that :func:`safe_target` accepts):

- email HTML: every ``<a href>`` (only the href value changes: other attributes, entities and text stay as
  they are), and the pixel goes in just before ``</body>``; the plain-text part: bare URLs (a URL the HTML
  has too gets the same tracked link, so it is one link in the report);
- Telegram: the URL buttons and the ``<a href>`` of the HTML text; push and inbox: the message's ``link``.

What is left alone: our own member links (``/u/`` unsubscribe, ``/p/`` preferences, ``/c/`` confirmation,
``/t/`` already tracked: a redirect in front of them would only add a hop and a log line), ``mailto:``,
``tel:``, ``#anchors``, relative links, and links marked ``data-notrack`` or ``clicktracking=off``.
SMS and WhatsApp are not rewritten: a tracked URL is ~150 characters where the original is often 30, which
costs segments (money) on every message and WhatsApp approved templates fix their URLs; receipts and direct
mail are paper, where nobody clicks.

A link's label is its index within the message and a slug of its text (``2-see-the-offer``), at most
``LABEL_MAX`` characters: it names the link in the report and in the click's event id. It never carries
personal data: words of the member's own data (names, email, card), long digit runs and anything with ``@``
are dropped from the slug; ``data-label="..."`` on the ``<a>`` names a link explicitly.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import lru_cache
from html import unescape
from urllib.parse import urlsplit

from consent.tokens import TRACK_CLICK, TRACK_OPEN, TRACK_TTL_S, Signer

LABEL_MAX = 32
OWN_PREFIXES = ("/u/", "/p/", "/c/", "/t/")

# <a ...>text</a>; attribute values may hold ">"
_ANCHOR = re.compile(r"""<a\b((?:[^>"']|"[^"]*"|'[^']*')*)>(.*?)</a\s*>""", re.IGNORECASE | re.DOTALL)
_HREF = re.compile(r"""(?<![\w:-])href\s*=\s*(?:"([^"]*)"|'([^']*)'|([^\s"'=<>`]+))""", re.IGNORECASE)
_LABEL_ATTR = re.compile(r"""(?<![\w:-])data-label\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_NO_TRACK = re.compile(r"""(?<![\w:-])(?:data-notrack\b|clicktracking\s*=\s*["']?off\b)""", re.IGNORECASE)
_ALT = re.compile(r"""\balt\s*=\s*(?:"([^"]*)"|'([^']*)')""", re.IGNORECASE)
_TAG = re.compile(r"<[^>]*>")
_WORD = re.compile(r"[^\W_]+")
_BARE_URL = re.compile(r"""https?://[^\s<>"'`{}|\\^\[\]]+""", re.IGNORECASE)
_TRAILING = ".,;:!?'\")"
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_UNSAFE_CHARS = re.compile(r"[\x00-\x20\x7f\\]")


@lru_cache(maxsize=4096)       # a campaign's messages repeat the same few URLs
def safe_target(url: str) -> bool:
    """May we send a person to ``url``? Absolute http(s) with a host, no userinfo (``https://trusted@evil``
    shows one host and goes to another), no whitespace, control characters or backslashes (browsers read
    ``https:\\\\evil`` as ``https://evil``)."""
    if not url or len(url) > 4096 or _UNSAFE_CHARS.search(url):
        return False
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.netloc) and bool(host) and "@" not in parts.netloc


def slug(text: str, personal: frozenset[str] = frozenset()) -> str:
    """Lower-case words of ``text`` joined by ``-``, at most LABEL_MAX characters, without personal data."""
    words: list[str] = []
    size = 0
    for w in _words(text):
        if w in personal or sum(c.isdigit() for c in w) >= 5:
            continue
        if size + len(w) + bool(words) > LABEL_MAX:
            break
        words.append(w)
        size += len(w) + (len(words) > 1)
    return "-".join(words)


@lru_cache(maxsize=4096)
def _words(text: str) -> tuple[str, ...]:
    return tuple(_WORD.findall(text.lower()))


def personal_words(values: Iterable[object]) -> frozenset[str]:
    """The lower-case words of the member's own data (for :func:`slug` to leave out)."""
    out: set[str] = set()
    for v in values:
        if isinstance(v, str) and v:
            out.update(_WORD.findall(v.lower()))
    return frozenset(out)


@dataclass
class Tracker:
    """Rewrites the links of one delivery's message. ``personal``: the member's own words (see slug)."""

    signer: Signer
    base_url: str
    delivery_id: int
    personal: frozenset[str] = frozenset()
    _index: int = 0
    _seen: dict[str, str] = field(default_factory=dict)   # original URL → its tracked URL (HTML → text part)

    def __post_init__(self) -> None:
        self.base_url = self.base_url.rstrip("/")

    def trackable(self, url: str) -> bool:
        # our own links first: they carry a token per message, so they would only churn safe_target's cache
        if url.startswith(self.base_url) and url[len(self.base_url):].startswith(OWN_PREFIXES):
            return False
        return safe_target(url)

    def label(self, text: str) -> str:
        self._index += 1
        s = slug(text, self.personal)
        return f"{self._index}-{s}" if s else str(self._index)

    def click_url(self, url: str, text: str) -> str:
        """The tracked URL for ``url`` (assumed trackable), labelled from ``text``."""
        label = self.label(text)
        token = self.signer.sign(TRACK_CLICK, {"d": self.delivery_id, "u": url, "l": label}, ttl_s=TRACK_TTL_S)
        tracked = f"{self.base_url}/t/c/{token}"
        self._seen.setdefault(url, tracked)
        return tracked

    def open_url(self) -> str:
        token = self.signer.sign(TRACK_OPEN, {"d": self.delivery_id}, ttl_s=TRACK_TTL_S)
        return f"{self.base_url}/t/o/{token}"

    def pixel(self) -> str:
        return (f'<img src="{self.open_url()}" width="1" height="1" alt="" '
                'style="display:block;border:0">')

    # --- the parts of a message ----------------------------------------------------------------

    def html(self, html: str) -> str:
        """``<a href>`` rewritten; nothing else in the HTML changes."""
        # no `"<a" in html` test first: in a Cyrillic message (a UCS-2 str) that search took 9.4 µs of 9 KB,
        # more than the regex's whole pass (7.7 µs)
        return _ANCHOR.sub(self._anchor, html)

    def _anchor(self, m: re.Match[str]) -> str:
        parts = _anchor_parts(m.group(1), m.group(2))
        if parts is None or not self.trackable(parts[0]):
            return m.group(0)
        url, text, start, end = parts
        tracked = self.click_url(url, text)
        a0 = m.start(1)   # href's span is within the attributes: only the value is replaced
        return m.string[m.start():a0 + start] + tracked + m.string[a0 + end:m.end()]

    def email_html(self, html: str) -> str:
        """Links rewritten and the open pixel added just before ``</body>`` (or at the end)."""
        out = self.html(html)
        pixel = self.pixel()
        pos = out.rfind("</body>")
        if pos < 0:
            last = None
            for last in _BODY_END.finditer(out):
                pass
            pos = last.start() if last else -1
        return out + pixel if pos < 0 else out[:pos] + pixel + out[pos:]

    def text(self, text: str) -> str:
        """Bare URLs of a plain-text part rewritten (one the HTML has too gets the HTML's tracked link)."""
        if "http" not in text and "HTTP" not in text:
            return text
        return _BARE_URL.sub(self._bare, text)

    def _bare(self, m: re.Match[str]) -> str:
        url = m.group(0)
        tail = ""
        while url and url[-1] in _TRAILING:
            if url[-1] == ")" and url.count("(") >= url.count(")"):
                break
            tail = url[-1] + tail
            url = url[:-1]
        if not self.trackable(url):
            return m.group(0)
        tracked = self._seen.get(url)
        if tracked is None:
            line_start = m.string.rfind("\n", 0, m.start()) + 1     # labelled by the words before it
            tracked = self.click_url(url, _BARE_URL.sub(" ", m.string[line_start:m.start()]))
        return tracked + tail

    def link(self, url: str | None, text: str = "link") -> str | None:
        """One link (push, inbox): tracked when it is an http(s) link we may track."""
        if not url or not self.trackable(url.strip()):
            return url
        return self.click_url(url.strip(), text)

    def buttons(self, buttons: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
        return [(text, self.link(url, text) or url) for text, url in buttons]


@lru_cache(maxsize=4096)   # every message of a campaign has the same few anchors
def _anchor_parts(attrs: str, inner: str) -> tuple[str, str, int, int] | None:
    """(URL, the text its label is made of, where the href's value starts and ends within ``attrs``) of an
    anchor, or None when it has no href or says not to track it."""
    href = _HREF.search(attrs)
    if href is None or _NO_TRACK.search(attrs):
        return None
    group = 1 if href.group(1) is not None else 2 if href.group(2) is not None else 3
    named = _LABEL_ATTR.search(attrs)
    explicit = unescape(named.group(1) or named.group(2) or "") if named else None
    start, end = href.span(group)
    return (unescape(href.group(group)).strip(), explicit if explicit is not None else _anchor_text(inner),
            start, end)


@lru_cache(maxsize=4096)
def _anchor_text(inner: str) -> str:
    text = unescape(_TAG.sub(" ", inner)) if "<" in inner or "&" in inner else inner
    if text.strip():
        return text
    alt = _ALT.search(inner)
    return unescape(alt.group(1) or alt.group(2) or "") if alt else ""

