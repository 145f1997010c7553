"""The small public pages members open from a link (one-click unsubscribe, double opt-in confirmation):
one shell, the same headers (no cache, no referrer, no indexing, a CSP that allows nothing but the page's
own inline style and posting back to itself)."""

from __future__ import annotations

import base64
import hashlib
from html import escape

from fastapi.responses import HTMLResponse

STYLE = ("body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem;line-height:1.5}"
         "button{font-size:1.1rem;padding:.6rem 1.2rem}.wording{color:#555;font-size:.9rem}")
_STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(STYLE.encode()).digest()).decode()
HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer", "X-Robots-Tag": "noindex",
           "X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY",
           "Content-Security-Policy": f"default-src 'none'; style-src '{_STYLE_HASH}'; form-action 'self'; "
                                      "frame-ancestors 'none'; base-uri 'none'"}


def small_page(lang: str, title: str, body: str, status: int = 200) -> HTMLResponse:
    """``body`` is HTML the caller escaped."""
    return HTMLResponse(
        f'<!doctype html><html lang="{escape(lang)}"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body><main>{body}</main></body></html>",
        status_code=status, headers=HEADERS)
