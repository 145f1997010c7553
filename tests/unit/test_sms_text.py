"""SMS segment counting: GSM-7 and UCS-2, single and concatenated, characters never split."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from channels.sms_text import GSM7_BASIC, GSM7_EXTENDED, SmsInfo, is_gsm7, sms_segments

BASIC = sorted(GSM7_BASIC)
EXTENDED = sorted(GSM7_EXTENDED)


@pytest.mark.parametrize("n,segments", [(1, 1), (160, 1), (161, 2), (306, 2), (307, 3), (459, 3), (460, 4)])
def test_gsm_boundaries(n, segments):
    assert sms_segments("a" * n) == SmsInfo("GSM-7", n, segments)


@pytest.mark.parametrize("n,segments", [(1, 1), (70, 1), (71, 2), (134, 2), (135, 3)])
def test_ucs2_boundaries(n, segments):
    assert sms_segments("ж" * n) == SmsInfo("UCS-2", n, segments)


def test_empty_text_is_one_segment_of_nothing():
    assert sms_segments("") == SmsInfo("GSM-7", 0, 1)


def test_the_whole_default_alphabet_is_gsm7_one_septet_each():
    text = "".join(BASIC)
    assert len(text) == 127  # 128 codes minus the escape
    assert sms_segments(text) == SmsInfo("GSM-7", 127, 1)


@pytest.mark.parametrize("ch", list("^{}\\[~]|€\f"))
def test_extension_characters_take_two_septets(ch):
    assert sms_segments(ch) == SmsInfo("GSM-7", 2, 1)
    assert sms_segments(ch * 80) == SmsInfo("GSM-7", 160, 1)
    assert sms_segments(ch * 81) == SmsInfo("GSM-7", 162, 2)


def test_extension_character_on_a_part_boundary_moves_to_the_next_part():
    # 152 + 2 would end part one with a bare escape: the € starts part two, which then overflows
    assert sms_segments("a" * 152 + "€" + "a" * 152) == SmsInfo("GSM-7", 306, 3)
    assert sms_segments("a" * 151 + "€" + "a" * 153) == SmsInfo("GSM-7", 306, 2)
    assert sms_segments("a" * 152 + "€" + "a" * 6) == SmsInfo("GSM-7", 160, 1)


def test_emoji_is_two_units_and_never_split():
    assert sms_segments("😀") == SmsInfo("UCS-2", 2, 1)
    assert sms_segments("ж" * 68 + "😀") == SmsInfo("UCS-2", 70, 1)
    assert sms_segments("ж" * 69 + "😀") == SmsInfo("UCS-2", 71, 2)
    assert sms_segments("ж" * 66 + "😀" + "ж" * 66) == SmsInfo("UCS-2", 134, 3)
    assert sms_segments("ж" * 65 + "😀" + "ж" * 67) == SmsInfo("UCS-2", 134, 2)


def test_cyrillic_text_is_ucs2():
    text = "Привет, Анна! Ваши 1 250 баллов сгорят 31 декабря."
    assert sms_segments(text) == SmsInfo("UCS-2", 50, 1)
    assert sms_segments(text + " Успейте потратить их в любом магазине сети.") == SmsInfo("UCS-2", 94, 2)


def test_one_cyrillic_letter_makes_the_whole_text_ucs2():
    assert sms_segments("a" * 100) == SmsInfo("GSM-7", 100, 1)
    assert sms_segments("a" * 100 + "Я") == SmsInfo("UCS-2", 101, 2)


@pytest.mark.parametrize("ch", ["ç", "á", "’", "“", "`", "\t", "\x1b", "ÿ", "ı"])
def test_lookalikes_outside_the_alphabet_force_ucs2(ch):
    assert not is_gsm7("price " + ch)
    assert sms_segments("price " + ch).encoding == "UCS-2"


def test_extension_characters_count_once_in_ucs2():
    assert sms_segments("€Я") == SmsInfo("UCS-2", 2, 1)


# --- properties -----------------------------------------------------------------------------

gsm_basic_text = st.text(st.sampled_from(BASIC), max_size=800)
gsm_text = st.text(st.sampled_from(BASIC + EXTENDED), max_size=600)
any_text = st.one_of(gsm_text, st.text(max_size=300), st.text(st.sampled_from(BASIC + ["ж", "😀", "€"]), max_size=400))


@settings(max_examples=300)
@given(text=any_text, ch=st.one_of(st.characters(), st.sampled_from(BASIC + EXTENDED + ["😀"])), data=st.data())
def test_adding_a_character_never_reduces_segments(text, ch, data):
    at = data.draw(st.integers(0, len(text)))
    longer = text[:at] + ch + text[at:]
    before, after = sms_segments(text), sms_segments(longer)
    assert after.segments >= before.segments
    if after.encoding == before.encoding:
        assert after.units > before.units


@settings(max_examples=200)
@given(text=gsm_basic_text)
def test_plain_gsm_text_of_n_septets_is_ceil_n_over_153_parts(text):
    info = sms_segments(text)
    assert info == SmsInfo("GSM-7", len(text), 1 if len(text) <= 160 else math.ceil(len(text) / 153))


@settings(max_examples=200)
@given(text=st.text(st.characters(max_codepoint=0xFFFF, exclude_categories=["Cs"]), min_size=1, max_size=400)
       .filter(lambda t: not is_gsm7(t)))
def test_bmp_ucs2_text_of_n_units_is_ceil_n_over_67_parts(text):
    info = sms_segments(text)
    assert info == SmsInfo("UCS-2", len(text), 1 if len(text) <= 70 else math.ceil(len(text) / 67))


@settings(max_examples=200)
@given(text=any_text)
def test_units_and_segments_are_within_the_limits_of_their_encoding(text):
    info = sms_segments(text)
    single, part = (160, 153) if info.encoding == "GSM-7" else (70, 67)
    if info.encoding == "UCS-2":
        assert info.units == len(text.encode("utf-16-le")) // 2
    if info.units <= single:
        assert info.segments == 1
    else:
        # whole characters per part: at most one unit of each part left unused
        assert math.ceil(info.units / part) <= info.segments <= math.ceil(info.units / (part - 1))
