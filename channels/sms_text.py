"""How many SMS segments a text costs: GSM-7 or UCS-2, single or concatenated.

Pure and stdlib-only (workflow code and cost estimates use it as well as the SMS adapter).

- GSM-7 (3GPP TS 23.038 default alphabet): a text of up to 160 septets is one message; longer texts are
  sent in parts of 153 (7 septets go to the concatenation header). The extension table characters
  ``^ { } \\ [ ~ ] | €`` and form feed take two septets (escape + character). An escape never ends a part
  without its character: when only one septet is left in a part, the pair moves to the next part.
- UCS-2: any character outside the default alphabet (Cyrillic, most accented letters, emoji) makes the whole
  text UCS-2: 70 UTF-16 code units in a single message, 67 per part. Characters outside the Basic
  Multilingual Plane (most emoji) are a surrogate pair of 2 units that is never split across parts.
  Grapheme clusters (emoji joined with ZWJ, flags) may be split between parts; phones join them again.
- An empty text is 1 segment of 0 units (Twilio bills an empty body as one message).
- National language shift tables (Turkish, Spanish, Portuguese, Indian languages) are not used: a text that
  needs them is counted as UCS-2, which is what providers do unless told otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The default alphabet, in table order (0x00-0x7F), without 0x1B (the escape to the extension table).
GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅå"
    "Δ_ΦΓΛΩΠΨΣΘΞÆæßÉ"  # 0x1B, between Ξ and Æ, is the escape
    " !\"#¤%&'()*+,-./"
    "0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNO"
    "PQRSTUVWXYZÄÖÑÜ§"
    "¿abcdefghijklmno"
    "pqrstuvwxyzäöñüà"
)
# The extension table: each costs the escape septet plus its own.
GSM7_EXTENDED = frozenset("\f^{}\\[~]|€")

GSM7_SINGLE, GSM7_PART = 160, 153
UCS2_SINGLE, UCS2_PART = 70, 67


@dataclass(frozen=True)
class SmsInfo:
    encoding: Literal["GSM-7", "UCS-2"]
    units: int  # GSM-7 septets or UTF-16 code units
    segments: int


def is_gsm7(text: str) -> bool:
    """True when every character of ``text`` is in the GSM-7 default alphabet or its extension table."""
    return all(ch in GSM7_BASIC or ch in GSM7_EXTENDED for ch in text)


def _parts(sizes: list[int], single: int, part: int) -> tuple[int, int]:
    """(total units, segments) for characters of ``sizes`` units, none split across parts."""
    total = sum(sizes)
    if total <= single:
        return total, 1
    segments, used = 1, 0
    for size in sizes:
        if used + size > part:
            segments += 1
            used = 0
        used += size
    return total, segments


def sms_segments(text: str) -> SmsInfo:
    """The encoding, length in units and number of segments an SMS with body ``text`` is sent as."""
    if is_gsm7(text):
        units, segments = _parts([2 if ch in GSM7_EXTENDED else 1 for ch in text], GSM7_SINGLE, GSM7_PART)
        return SmsInfo("GSM-7", units, segments)
    units, segments = _parts([2 if ord(ch) > 0xFFFF else 1 for ch in text], UCS2_SINGLE, UCS2_PART)
    return SmsInfo("UCS-2", units, segments)
