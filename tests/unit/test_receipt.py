"""Till receipt messages: display width, word wrap at 32/42/48 columns, the layout, coupons, ESC/POS bytes."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.receipt import (
    WIDTHS,
    ReceiptCoupon,
    center,
    display_width,
    escpos_bytes,
    format_receipt,
    wrap,
)

PROMO = (
    "Анна, только до конца недели — двойные баллы за покупки в отделе «Свежая выпечка»! "
    "Покажите этот чек кассиру при следующей покупке и получите скидку 15% на любой торт. "
    "Предложение действует во всех магазинах сети, кроме Привокзальной площади."
)

ESC, GS = b"\x1b", b"\x1d"


def words(text: str) -> list[str]:
    return text.split()


# --- display width -----------------------------------------------------------------------------


@pytest.mark.parametrize("text,columns", [
    ("", 0),
    ("Привет", 6),                   # Cyrillic is "ambiguous" width in Unicode: one column on a till
    ("Ёлка", 4),
    ("Ё", 1),
    ("Е\u0308лка", 4),                # decomposed Ё: the combining diaeresis takes no column
    ("café", 4),
    ("cafe\u0301", 4),
    ("日本", 4),                      # wide
    ("ＡＢ", 4),                      # fullwidth Latin
    ("ｱｲ", 2),                        # halfwidth katakana
    ("한국어", 6),
    ("😀", 2),
    ("a\u200db", 2),                  # zero-width joiner
    ("1\u00a0250", 5),                # no-break space is a column
])
def test_display_width_counts_columns_on_a_monospace_printer(text, columns):
    assert display_width(text) == columns


# --- wrapping ----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
def test_russian_promo_wraps_within_the_width_without_splitting_words(width):
    lines = wrap(PROMO, width)
    assert len(lines) > 1
    assert all(display_width(line) <= width for line in lines)
    assert all(line == line.strip() for line in lines)
    # every printed word is a whole word of the text, and they come back in order
    assert [w for line in lines for w in line.split()] == words(PROMO)
    # lines are filled: the next line's first word would not have fitted
    for line, following in zip(lines, lines[1:]):
        assert display_width(line) + 1 + display_width(following.split()[0]) > width


def test_wrap_at_32_columns_gives_the_expected_lines():
    assert wrap("Дарим 500 бонусных баллов ко дню рождения! Потратьте их до 31 декабря.", 32) == [
        "Дарим 500 бонусных баллов ко дню",          # exactly 32 columns
        "рождения! Потратьте их до 31",
        "декабря.",
    ]


def test_a_paragraph_break_is_one_empty_line_and_a_newline_is_a_line_break():
    text = "Первый абзац.\n\n\n\nВторой абзац,\nновая строка."
    assert wrap(text, 32) == ["Первый абзац.", "", "Второй абзац,", "новая строка."]


def test_blank_lines_at_the_start_and_end_are_dropped():
    assert wrap("\n\n  \nТекст\n\n \n", 32) == ["Текст"]
    assert wrap("", 32) == []
    assert wrap(" \t\n\n", 32) == []


def test_windows_and_old_mac_line_ends_are_line_breaks():
    assert wrap("один\r\nдва\rтри", 32) == ["один", "два", "три"]


def test_tabs_become_spaces_and_runs_of_spaces_collapse():
    assert wrap("Скидка\t15%  на\t\tвсё", 32) == ["Скидка 15% на всё"]


def test_control_characters_other_than_newline_are_removed():
    assert wrap("Ски\x00дка\x1b[1m 15%\x07\x7f\x85", 32) == ["Скидка[1m 15%"]


def test_no_break_space_keeps_a_number_with_its_unit():
    text = "Вам начислено 1\u00a0250\u00a0баллов"         # 29 columns up to "1 250"
    assert wrap("x" * 20 + " " + text, 32) == ["x" * 20 + " Вам", "начислено 1\u00a0250\u00a0баллов"]


def test_a_word_longer_than_the_line_is_cut_hard():
    link = "https://example.com/p/" + "a" * 60
    lines = wrap("Ссылка: " + link + " конец", 32)
    assert lines == ["Ссылка:", link[:32], link[32:64], link[64:] + " конец"]
    assert all(display_width(line) <= 32 for line in lines)


def test_hard_cut_never_parts_a_letter_from_its_combining_mark():
    word = "е\u0301" * 40                           # 40 columns
    lines = wrap(word, 32)
    assert [display_width(line) for line in lines] == [32, 8]
    assert all(not unicodedata.combining(line[0]) for line in lines)
    assert "".join(lines) == word


def test_wide_characters_take_two_columns_when_wrapping():
    text = "日本語のテキスト" * 5                     # 40 wide characters, 80 columns, no spaces
    lines = wrap(text, 32)
    assert [display_width(line) for line in lines] == [32, 32, 16]
    assert "".join(lines) == text
    # an odd width leaves the last column empty rather than halving a character
    assert wrap("日" * 5, 3) == ["日"] * 5


def test_width_below_two_columns_is_refused():
    with pytest.raises(ValueError):
        wrap("a", 1)


# --- centring ----------------------------------------------------------------------------------


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("title", ["Ваш подарок", "Скидка 15%", "日本の贈り物", "A", "Привет, Анна! " * 10])
def test_a_heading_is_centred_to_within_one_column(width, title):
    lines = center(title, width)
    assert lines
    for line in lines:
        text = line.lstrip(" ")
        left = len(line) - len(text)
        right = width - left - display_width(text)
        assert right >= 0
        assert right - left in (0, 1)
    assert [w for line in lines for w in line.split()] == title.split()


# --- properties --------------------------------------------------------------------------------

printable_words = st.text(st.sampled_from(list("абвгдеёжзийклмнопрстуфхцчшщъыьэюя ЁЖ.,!—") + ["日", "😀", "\u0301", "\t",
                                                                                                 "\n", "\u00a0"]),
                          max_size=400)
any_text = st.one_of(st.text(max_size=300), printable_words)


def non_space(text: str) -> list[str]:
    """The characters a wrap must keep, in order: everything but whitespace and removed control characters."""
    return [ch for ch in text if not ch.isspace() and unicodedata.category(ch) != "Cc"]


@settings(max_examples=300)
@given(text=any_text, width=st.sampled_from(WIDTHS))
def test_no_line_exceeds_the_width_and_no_character_is_lost(text, width):
    lines = wrap(text, width)
    assert all(display_width(line) <= width for line in lines)
    assert all("\n" not in line and line == line.rstrip() for line in lines)
    assert non_space("".join(lines)) == non_space(text)
    assert "" not in (lines[:1] + lines[-1:])
    assert all(not (a == b == "") for a, b in zip(lines, lines[1:]))


@settings(max_examples=200)
@given(text=any_text, width=st.integers(2, 80))
def test_any_width_of_two_or_more_is_respected(text, width):
    assert all(display_width(line) <= width for line in wrap(text, width))


@settings(max_examples=200)
@given(text=st.text(max_size=200), width=st.sampled_from(WIDTHS))
def test_centred_lines_fit_and_keep_every_character(text, width):
    lines = center(text, width)
    assert all(display_width(line) <= width for line in lines)
    assert non_space("".join(lines)) == non_space(text)


# --- the message -------------------------------------------------------------------------------


def promo_message(width: int = 32, **overrides):
    kwargs = dict(title="Ваш подарок", text=PROMO, coupon=ReceiptCoupon("XMAS-2024-7F3K"), width=width,
                  footer="Действует до 31.12.2024")
    kwargs.update(overrides)
    return format_receipt(**kwargs)


@pytest.mark.parametrize("width", WIDTHS)
def test_receipt_lines_are_rule_title_body_coupon_footer(width):
    message = promo_message(width)
    lines = message.lines
    body = wrap(PROMO, width)
    assert lines[0] == "-" * width
    assert lines[1] == center("Ваш подарок", width)[0]
    assert lines[2:2 + len(body)] == body
    assert lines[2 + len(body)] == center("XMAS-2024-7F3K", width)[0]
    assert lines[3 + len(body):] == center("Действует до 31.12.2024", width)
    assert all(display_width(line) <= width for line in lines)
    assert [b.kind for b in message.blocks] == ["rule", "title", "text", "coupon", "footer"]


def test_message_without_title_coupon_or_footer_is_the_rule_and_the_body():
    message = format_receipt(title=None, text="Спасибо за покупку!", coupon=None, width=42)
    assert message.lines == ["-" * 42, "Спасибо за покупку!"]
    assert message.coupon is None


def test_decomposed_letters_are_composed_before_printing():
    message = format_receipt(title=None, text="Ваи\u0306", coupon=None, width=32)
    assert message.lines[1] == "Вай"


@pytest.mark.parametrize("width", [0, 24, 40, 64, 80])
def test_a_width_the_printers_do_not_have_is_refused_naming_the_allowed_ones(width):
    with pytest.raises(ValueError, match="32, 42, 48"):
        promo_message(width)


def test_json_is_what_the_pos_prints_and_draws():
    data = promo_message(42).to_json()
    assert json.loads(json.dumps(data, ensure_ascii=False)) == data
    assert set(data) == {"width", "lines", "coupon"}
    assert data["width"] == 42
    assert data["lines"] == promo_message(42).lines
    assert data["coupon"] == {
        "code": "XMAS-2024-7F3K",
        "barcode": {"type": "CODE128", "data": "XMAS-2024-7F3K"},
        "qr": {"data": "XMAS-2024-7F3K"},
    }


def test_json_without_qr_or_coupon():
    assert promo_message(coupon=ReceiptCoupon("ABC", qr=False)).to_json()["coupon"]["qr"] is None
    assert promo_message(coupon=None).to_json()["coupon"] is None


def test_changing_the_json_does_not_change_the_message():
    message = promo_message()
    data = message.to_json()
    data["coupon"]["barcode"]["data"] = "HACKED"
    data["lines"].append("more")
    assert message.to_json() == promo_message().to_json()


# --- coupons -----------------------------------------------------------------------------------


@pytest.mark.parametrize("code", ["A", "XMAS-2024-7F3K", " !~{}", "x" * 64, "".join(map(chr, range(32, 96)))])
def test_printable_ascii_codes_are_accepted(code):
    assert ReceiptCoupon(code).code == code


@pytest.mark.parametrize("code", ["", "СКИДКА", "CAFÉ", "TAB\tCODE", "NL\n", "DEL\x7f", "€5", "x" * 65])
def test_codes_a_code128_barcode_cannot_carry_are_refused(code):
    with pytest.raises(ValueError):
        ReceiptCoupon(code)


def test_unsupported_barcode_type_is_refused():
    with pytest.raises(ValueError, match="CODE128"):
        ReceiptCoupon("123", barcode="EAN13")


# --- ESC/POS -----------------------------------------------------------------------------------


def test_escpos_selects_cp866_and_prints_cyrillic_in_it():
    data = escpos_bytes(promo_message(32))
    assert data.startswith(ESC + b"@" + ESC + b"t\x11")              # init, then code page 17 = CP866
    assert data.count(ESC + b"t") == 1                                # pinned: no switching mid-receipt
    for word in ["Ваш", "подарок", "Анна,", "баллы", "Свежая", "выпечка", "Действует"]:
        assert word.encode("cp866") in data
    assert "Ваш подарок".encode("utf-8") not in data
    text = data.decode("cp866")
    assert "Предложение действует во всех" in text
    assert "?" not in text


def test_escpos_prints_russian_quotes_and_dashes_cp866_lacks_as_ascii_look_alikes():
    message = format_receipt(title="«Свежая выпечка» — скидка", text="Акция „2+1“ – до 31.12", coupon=None,
                             width=32)
    text = escpos_bytes(message).decode("cp866")
    assert '"Свежая выпечка" - скидка' in text
    assert 'Акция "2+1" - до 31.12' in text
    assert "?" not in text


def test_escpos_title_is_bold_and_centred():
    data = escpos_bytes(promo_message(32))
    title = "Ваш подарок".encode("cp866")
    before = data[:data.index(title)]
    assert before.endswith(ESC + b"E\x01" + ESC + b"a\x01")
    after = data[data.index(title):]
    assert ESC + b"E\x00" in after                                    # bold off for the body


def test_escpos_prints_the_coupon_as_code128_and_native_qr():
    data = escpos_bytes(promo_message(48))
    code = b"XMAS-2024-7F3K"
    # GS k m=73 (CODE128, function B), length, code set B selector, data
    assert GS + b"kI" + bytes([len(code) + 2]) + b"{B" + code in data
    # GS ( k: store the QR data (cn=49 '1', fn=80 'P', m='0') and print it (fn=81 'Q')
    store = GS + b"(k" + (len(code) + 3).to_bytes(2, "little") + b"1P0" + code
    assert store in data
    assert GS + b"(k\x03\x001Q0" in data
    assert data.endswith(GS + b"V\x00")                               # full cut after the feed
    assert ESC + b"d\x06" in data


def test_escpos_without_qr_prints_only_the_barcode():
    data = escpos_bytes(promo_message(coupon=ReceiptCoupon("ABC-1", qr=False)))
    assert GS + b"kI\x07{BABC-1" in data
    assert GS + b"(k" not in data


def test_escpos_doubles_a_brace_in_code128_data():
    data = escpos_bytes(promo_message(coupon=ReceiptCoupon("A{B", qr=False)))
    assert GS + b"kI\x06{BA{{B" in data


def test_escpos_without_coupon_has_no_codes():
    data = escpos_bytes(promo_message(coupon=None))
    assert GS + b"k" not in data and GS + b"(k" not in data


def test_escpos_composes_letters_and_drops_accents_cp866_lacks():
    message = format_receipt(title=None, text="Вои\u0306на и мир, замо\u0301к", coupon=None, width=32)
    data = escpos_bytes(message)
    assert "Война и мир, замок".encode("cp866") in data
    assert b"?" not in data


def test_escpos_prints_a_question_mark_for_what_the_code_page_lacks():
    data = escpos_bytes(format_receipt(title=None, text="Цена 5 € 日本", coupon=None, width=32))
    assert "Цена 5 ? ?".encode("cp866") in data


def test_escpos_takes_the_slot_from_the_printer_profile():
    data = escpos_bytes(promo_message(coupon=None), profile="TSP600")   # Star: CP866 is slot 10
    assert data.startswith(ESC + b"@" + ESC + b"t\x0a")
    assert "подарок".encode("cp866") in data


def test_escpos_other_code_page_is_used_when_asked():
    data = escpos_bytes(promo_message(coupon=None), codepage="cp1251")
    assert data.startswith(ESC + b"@" + ESC + b"t\x2e")              # CP1251 is slot 46 in the default profile
    assert "подарок".encode("cp1251") in data


def test_escpos_unknown_code_page_is_refused():
    with pytest.raises(ValueError, match="CP437"):
        escpos_bytes(promo_message(), codepage="KOI8-R")


def test_escpos_unknown_printer_profile_is_refused():
    with pytest.raises(ValueError, match="NoSuchPrinter"):
        escpos_bytes(promo_message(), profile="NoSuchPrinter")
