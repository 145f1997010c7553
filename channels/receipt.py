"""What a till prints for a member at the end of the receipt: plain lines for any POS, ESC/POS bytes for ours.

The POS asks ``GET /api/v1/pos/receipt-messages?card=...&store=...&width=32|42|48`` and prints what comes back.
This module only formats; it is pure apart from :func:`escpos_bytes`, which drives python-escpos's in-memory
``Dummy`` printer (no device, no I/O).

Columns. A receipt printer is a monospace device: :func:`display_width` counts what a character takes on it —
combining marks (Mn, Me) and invisible format characters (Cf: ZWJ, ZWSP, soft hyphen) take 0 columns, East Asian
wide and fullwidth characters 2, everything else 1 (Cyrillic, Latin, Greek, the "ambiguous" width class).
:data:`WIDTHS` are the characters per line at font A of the printers we meet: 32 on 58 mm paper, 42 and 48 on
80 mm paper (512 and 576 printable dots).

Wrapping (:func:`wrap`). Lines are broken between words at ``width`` display columns. A single newline is a line
break; a blank line (paragraph break) is kept as one empty line, and several blank lines as one; leading and
trailing blank lines are dropped. Runs of spaces and tabs collapse to one space, no line has trailing spaces,
control characters other than newline are removed. No-break spaces (U+00A0, U+2007, U+202F) do not break
("1 250 баллов" stays together). A word longer than the line starts a new line and is cut hard at the width,
never splitting a base character from its combining marks. No line is ever wider than ``width``.

Receipt layout (:func:`format_receipt`)::

    --------------------------------     a rule, to part our message from the till's own lines
          Ваш подарок к празднику        the title, centred (bold on ESC/POS)
    Анна, покажите этот чек на кассе     the body, wrapped
    и получите скидку 15% на всё.
             XMAS-2024-7F3K               the coupon code, centred (the POS draws the barcode / QR natively)
         Действует до 31.12.2024          the footer, centred

Texts are NFC-normalised first, so "й" typed as "и" + U+0306 reaches the printer as one character.

ESC/POS (:func:`escpos_bytes`) and the code page. python-escpos's default "magic" encoder looks for a table
per character and sends another ``ESC t`` whenever the current one lacks it (to PC437 for a «, say): every
switch is a bet that the printer holds that table in the slot its profile claims, and the bytes are hard to
check. Instead we pin one table: ``charcode("CP866")`` makes python-escpos send ``ESC t n`` once and encode
every text with that table from then on (characters it lacks print as ``?``). ``n`` comes from python-escpos
3.1's printer capability database (``escpos/capabilities.json``), not from a guess: CP866 is slot 17 in its
``default`` profile, in the Epson TM-T20II, TM-T88II to V, TM-P80 and TM-L90 profiles and in the other
Epson-compatible ones it lists (POS-5890, ZJ-5870, NT-5890K, Sunmi-V2, RP-F10); the Star profiles (TSP600,
TUP500, SP2000) put it in slot 10 and TH230 / RP326 in slot 7 — pass the python-escpos ``profile`` name and
the slot follows. The table is selected after ``ESC @``, which resets it to the printer's default. Combining marks and format characters that
survive NFC are dropped before encoding: CP866 has none, and an accent lost is better than a ``?`` printed.
CP866 also lacks the guillemets, curly quotes and dashes of Russian typography: they print as their one-column
ASCII look-alikes (``«»`` as ``"``, ``—`` as ``-``); anything else the table lacks (``€``, CJK) prints as ``?``.
The barcode is CODE128 code set B (``GS k`` function B, data prefixed ``{B``, a literal ``{`` doubled), and the
QR code is the printer's native one (``GS ( k``, model 2, UTF-8 data). Note: python-escpos's ``barcode()`` prints
"Using hardware barcode renderer" to stdout; the line carries no data.
"""

from __future__ import annotations

import copy
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

WIDTHS = (32, 42, 48)

#: characters a CODE128 (code set B) barcode can carry and a till can print under it: ASCII 32-126
CODE128_CHARS = frozenset(chr(c) for c in range(32, 127))
#: Coupon codes are short; 64 bounds the JSON and the ``GS k`` length byte. At python-escpos's narrowest module
#: (2 dots, 11 modules a character) a CODE128 of n characters is 22n + 70 dots wide, so only codes of up to 14
#: characters fit 58 mm paper (384 dots), 20 fit 512 dots and 22 fit 576: a printer skips a barcode wider than
#: the paper, and the QR code and the printed code still carry it.
MAX_COUPON_LENGTH = 64
BARCODE_TYPES = ("CODE128",)

_NO_BREAK_SPACES = frozenset("\u00a0\u2007\u202f")
_ZERO_WIDTH_CATEGORIES = frozenset({"Mn", "Me", "Cf", "Cc"})
#: punctuation Russian (and other) texts use that CP866 lacks, printed as a one-column ASCII look-alike
_ASCII_FALLBACK = {
    "«": '"', "»": '"', "„": '"', "“": '"', "”": '"', "‟": '"', "‹": "'", "›": "'",
    "‘": "'", "’": "'", "‚": "'", "‛": "'", "′": "'", "″": '"',
    "‐": "-", "‑": "-", "‒": "-", "–": "-", "—": "-", "―": "-", "−": "-", "•": "*",
}


# --- columns -----------------------------------------------------------------------------------


def char_width(ch: str) -> int:
    """Columns one character takes on a monospace printer: 0 for marks and invisible characters, 2 for wide."""
    if unicodedata.category(ch) in _ZERO_WIDTH_CATEGORIES:
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    """Columns ``text`` takes on a receipt printer or a monospace terminal (see the module docstring)."""
    return sum(char_width(ch) for ch in text)


# --- wrapping ----------------------------------------------------------------------------------


def _clean_line(line: str) -> str:
    """One input line with tabs and breaking spaces as plain spaces and control characters removed."""
    out = []
    for ch in line:
        category = unicodedata.category(ch)
        if ch == "\t" or (category == "Zs" and ch not in _NO_BREAK_SPACES):
            out.append(" ")
        elif category != "Cc":
            out.append(ch)
    return "".join(out)


def _input_lines(text: str) -> list[str]:
    """``text`` split at line breaks: CR LF, CR, LF, U+2028; U+2029 (paragraph separator) is a blank line."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u2028", "\n").replace("\u2029", "\n\n")
    return text.split("\n")


def _hard_break(word: str, width: int) -> list[str]:
    """``word`` cut into pieces of at most ``width`` columns; a zero-width mark stays with its base."""
    pieces, current, used = [], "", 0
    for ch in word:
        w = char_width(ch)
        if current and used + w > width:
            pieces.append(current)
            current, used = "", 0
        current += ch
        used += w
    pieces.append(current)
    return pieces


def _wrap_line(line: str, width: int) -> list[str]:
    """One input line (no newlines) as printed lines of at most ``width`` columns, possibly none."""
    out: list[str] = []
    current, used = "", 0
    for word in _clean_line(line).split(" "):
        if not word:
            continue
        w = display_width(word)
        if current and used + 1 + w <= width:
            current, used = f"{current} {word}", used + 1 + w
            continue
        if current:
            out.append(current)
        pieces = _hard_break(word, width) if w > width else [word]
        out.extend(pieces[:-1])
        current, used = pieces[-1], display_width(pieces[-1])
    if current:
        out.append(current)
    # a no-break space at a line end is still a trailing space
    return [stripped for printed in out if (stripped := printed.rstrip())]


def wrap(text: str, width: int) -> list[str]:
    """``text`` word-wrapped at ``width`` display columns (rules in the module docstring)."""
    if width < 2:
        raise ValueError("wrap: width must be at least 2 columns (a wide character takes 2)")
    lines: list[str] = []
    for raw in _input_lines(text):
        wrapped = _wrap_line(raw, width)
        if wrapped:
            lines.extend(wrapped)
        elif lines and lines[-1] != "":
            lines.append("")        # a paragraph break; several blank lines print as one
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def center(text: str, width: int) -> list[str]:
    """``text`` wrapped at ``width`` and each line centred with leading spaces (extra column on the right)."""
    return [" " * ((width - display_width(line)) // 2) + line if line else "" for line in wrap(text, width)]


# --- the receipt message -----------------------------------------------------------------------


@dataclass(frozen=True)
class ReceiptCoupon:
    """A coupon printed with the message: its code as text, as a barcode and, if ``qr``, as a QR code.

    The code must be printable on CODE128: 1 to 64 characters of ASCII 32-126 (ValueError otherwise)."""

    code: str
    barcode: str = "CODE128"
    qr: bool = True

    def __post_init__(self) -> None:
        if self.barcode not in BARCODE_TYPES:
            raise ValueError(f"receipt coupon: barcode type must be one of {', '.join(BARCODE_TYPES)}")
        if not 1 <= len(self.code) <= MAX_COUPON_LENGTH:
            raise ValueError(f"receipt coupon: the code must be 1 to {MAX_COUPON_LENGTH} characters")
        if not set(self.code) <= CODE128_CHARS:
            raise ValueError("receipt coupon: the code must be printable ASCII (32-126) to go on a CODE128 barcode")

    def to_json(self) -> dict[str, Any]:
        """What the POS needs to draw the codes natively."""
        return {
            "code": self.code,
            "barcode": {"type": self.barcode, "data": self.code},
            "qr": {"data": self.code} if self.qr else None,
        }


BlockKind = Literal["rule", "title", "text", "coupon", "footer"]


@dataclass(frozen=True)
class ReceiptBlock:
    """A run of printed lines of one kind, so a printer driver can style it (the title bold, say)."""

    kind: BlockKind
    lines: tuple[str, ...]


@dataclass(frozen=True)
class ReceiptMessage:
    """A message laid out for a till at ``width`` columns: ``lines`` are ready to print as they are."""

    width: int
    blocks: tuple[ReceiptBlock, ...]
    coupon: dict[str, Any] | None = field(default=None, hash=False)

    @property
    def lines(self) -> list[str]:
        """Every printed line, top to bottom."""
        return [line for block in self.blocks for line in block.lines]

    def to_json(self) -> dict[str, Any]:
        """The API's answer: ``{"width", "lines", "coupon"}`` with plain lists and dicts."""
        return {"width": self.width, "lines": self.lines, "coupon": copy.deepcopy(self.coupon)}


def _nfc(text: str | None) -> str:
    return unicodedata.normalize("NFC", text or "")


def format_receipt(*, title: str | None, text: str, coupon: ReceiptCoupon | None, width: int,
                   footer: str | None = None) -> ReceiptMessage:
    """Lay out a receipt message for a printer of ``width`` columns (one of :data:`WIDTHS`)."""
    if width not in WIDTHS:
        raise ValueError(f"receipt: width must be one of {', '.join(map(str, WIDTHS))}, not {width!r}")
    candidates: list[tuple[BlockKind, list[str]]] = [
        ("rule", ["-" * width]),
        ("title", center(_nfc(title), width)),
        ("text", wrap(_nfc(text), width)),
        ("coupon", center(coupon.code, width) if coupon else []),
        ("footer", center(_nfc(footer), width)),
    ]
    blocks = tuple(ReceiptBlock(kind, tuple(lines)) for kind, lines in candidates if lines)
    return ReceiptMessage(width=width, blocks=blocks, coupon=coupon.to_json() if coupon else None)


# --- ESC/POS -----------------------------------------------------------------------------------


def _printable(line: str, can_encode: Callable[[str], bool]) -> str:
    """A line as the printer gets it: NFC, without marks and format characters, typographic punctuation the
    code page lacks replaced by its ASCII look-alike (one column for one, so the layout holds)."""
    return "".join(ch if can_encode(ch) else _ASCII_FALLBACK.get(ch, ch)
                   for ch in unicodedata.normalize("NFC", line)
                   if unicodedata.category(ch) not in _ZERO_WIDTH_CATEGORIES)


def _code128_data(code: str) -> str:
    """ESC/POS CODE128 data: code set B selected with ``{B``; a literal ``{`` is sent as ``{{``."""
    return "{B" + code.replace("{", "{{")


def _print_codes(printer: Any, coupon: dict[str, Any]) -> None:
    """The coupon's CODE128 barcode (its text is our own centred line below it) and its native QR code."""
    printer.set(align="center", bold=False)
    if coupon.get("qr"):
        printer.qr(coupon["qr"]["data"], native=True, size=6)
    printer.barcode(_code128_data(coupon["barcode"]["data"]), "CODE128", height=64, width=2, pos="OFF",
                    align_ct=True, function_type="B")


def escpos_bytes(message: ReceiptMessage, *, codepage: str = "CP866", profile: str | None = None) -> bytes:
    """``message`` as ESC/POS bytes: init, code page, bold centred title, body, QR, barcode over the code, footer,
    feed and cut.

    ``codepage`` is a python-escpos encoding name of ``profile`` (None: python-escpos's default profile); its
    slot number for ``ESC t`` comes from that profile (see the module docstring). ValueError for a profile
    python-escpos does not know or a code page the profile lacks."""
    from escpos.printer import Dummy  # imported here: python-escpos pulls in Pillow, qrcode and barcode

    try:
        printer = Dummy(profile=profile)
    except KeyError as exc:
        raise ValueError(f"receipt: python-escpos has no printer profile {profile!r}") from exc
    encoding, tables = codepage.upper(), printer.profile.get_code_pages()
    if encoding not in tables:
        raise ValueError(f"receipt: code page {codepage!r} is not in the printer profile; it has {', '.join(tables)}")
    printer.hw("INIT")                      # ESC @ also resets the code page, so select it after
    printer.charcode(encoding)              # ESC t n once; every text below is encoded with this table

    def can_encode(ch: str) -> bool:
        return printer.magic.encoder.can_encode(encoding, ch)

    for block in message.blocks:
        if block.kind == "coupon" and message.coupon is not None:
            _print_codes(printer, message.coupon)
        centred = block.kind in ("title", "coupon", "footer")
        printer.set(align="center" if centred else "left", bold=block.kind == "title")
        for line in block.lines:
            printer.textln(_printable(line.strip() if centred else line, can_encode))
    printer.set(align="left", bold=False)
    printer.cut()                            # feeds 6 lines first, so the message clears the cutter
    return printer.output
