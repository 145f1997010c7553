"""Direct mail batches: a page per letter in order, the address in the envelope window, member data printed
literally, the language per letter, overflow, and no network or file access while rendering."""

from __future__ import annotations

import base64
import io
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from pypdf import PdfReader
from weasyprint import HTML

from channels.direct_mail import Letter, LetterPages, build_batch, lang_tag, letter_html, render_batch

MM = 72 / 25.4                     # PDF points per millimetre
A4_HEIGHT = 297 * MM

# a 1x1 black PNG
PNG = base64.b64decode(
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAAAAAA6fptVAAAACklEQVR4nGNgAAAAAgABSK+kcQAAAABJRU5ErkJggg==")
DATA_PNG = "data:image/png;base64," + base64.b64encode(PNG).decode()

SENDER = ["Clarion Loyalty GmbH", "Postfach 10 20 30", "10115 Berlin"]

RU = Letter(
    delivery_id=101,
    address=["Анна Петрова", "ул. Ленина, д. 5, кв. 12", "620014 Екатеринбург", "Россия"],
    html="<p>Здравствуйте, Анна!</p><p>Дарим вам 500 бонусных баллов ко дню рождения.</p>",
    locale="ru_RU",
    title="Подарок ко дню рождения",
)
EN = Letter(
    delivery_id=102,
    address=["John Smith", "1 High Street", "London SW1A 1AA", "United Kingdom"],
    html="<p>Dear John,</p><p>Here are 500 bonus points for your birthday.</p>",
    locale="en-GB",
)
DE = Letter(
    delivery_id=103,
    address=["Jürgen Groß", "Hauptstraße 7", "80331 München"],
    html="<p>Hallo Jürgen,</p><p>Ihr Gutschein über 10 € wartet auf Sie.</p>",
    locale="de",
)


def read(pdf: bytes) -> PdfReader:
    assert pdf.startswith(b"%PDF-")
    return PdfReader(io.BytesIO(pdf))


def page_texts(pdf: bytes) -> list[str]:
    return [page.extract_text() for page in read(pdf).pages]


def positions(page) -> dict[str, tuple[float, float]]:
    """Each text run on ``page`` -> its (x, y) baseline origin in mm from the sheet's top-left corner."""
    found: dict[str, tuple[float, float]] = {}

    def visit(text, cm, tm, font_dict, font_size):
        if text.strip():
            x, y = tm[4] * cm[0] + cm[4], tm[5] * cm[3] + cm[5]
            found.setdefault(text.strip(), (x / MM, (A4_HEIGHT - y) / MM))

    page.extract_text(visitor_text=visit)
    return found


@pytest.fixture(scope="module")
def batch() -> bytes:
    return build_batch([RU, EN, DE], sender=SENDER)


# --- pages and content -------------------------------------------------------------------------


def test_each_letter_is_one_a4_page_in_the_order_given(batch):
    reader = read(batch)
    assert len(reader.pages) == 3
    for page in reader.pages:
        assert round(float(page.mediabox.width) / MM) == 210
        assert round(float(page.mediabox.height) / MM) == 297
    texts = page_texts(batch)
    for text, letter in zip(texts, [RU, EN, DE]):
        assert letter.address[0] in text
    assert "John Smith" not in texts[0] and "Анна Петрова" not in texts[1]


def test_russian_letter_page_has_her_address_and_greeting(batch):
    text = page_texts(batch)[0]
    for line in RU.address:
        assert line in text
    assert "Здравствуйте, Анна!" in text
    assert "Подарок ко дню рождения" in text
    assert "Дарим вам 500 бонусных баллов ко дню рождения." in text


def test_english_and_german_letters_have_their_address_and_greeting(batch):
    texts = page_texts(batch)
    for line in EN.address + ["Dear John,", "Here are 500 bonus points for your birthday."]:
        assert line in texts[1]
    for line in DE.address + ["Hallo Jürgen,", "Ihr Gutschein über 10 € wartet auf Sie."]:
        assert line in texts[2]


def test_every_page_carries_the_sender_line(batch):
    for text in page_texts(batch):
        assert "Clarion Loyalty GmbH, Postfach 10 20 30, 10115 Berlin" in text


def test_the_batch_has_no_outline_and_no_single_document_language(batch):
    reader = read(batch)
    assert reader.outline == []                         # letter headings are not bookmarks in a print file
    assert "/Lang" not in reader.trailer["/Root"]


def test_render_batch_says_where_each_letter_starts():
    result = render_batch([RU, EN])
    assert result.letters == (LetterPages(101, 1, 1), LetterPages(102, 2, 1))
    assert result.pages == 2 == len(read(result.pdf).pages)


# --- the window envelope -----------------------------------------------------------------------


def test_address_sits_in_the_din_5008_form_b_window(batch):
    found = positions(read(batch).pages[0])
    # address zone: 20-105 mm from the left, 62.7-90 mm from the top; text starts 5 mm into the field
    for line in RU.address:
        x, y = found[line]
        assert x == pytest.approx(25, abs=0.5)
        assert 62.7 < y - 2.5 and y < 90, (line, y)   # the cap height (~2.5 mm at 10 pt) is inside the zone too
    # the lines come in order, one under the other
    ys = [found[line][1] for line in RU.address]
    assert ys == sorted(ys)
    # the sender line sits in the return-address zone (45-62.7 mm), just above the address
    x, y = found["Clarion Loyalty GmbH, Postfach 10 20 30, 10115 Berlin"]
    assert x == pytest.approx(25, abs=0.5)
    assert 45 < y <= 62.7
    # and the body begins below the field
    assert found["Здравствуйте, Анна!"][1] > 98


def test_six_address_lines_still_fit_the_window():
    lines = ["Müller Logistik GmbH", "Abteilung Einkauf", "Frau Dr. Anna Müller", "Hauptstraße 7",
             "80331 München", "DEUTSCHLAND"]
    found = positions(read(build_batch([Letter(50, lines, "<p>Hallo</p>", "de")])).pages[0])
    assert 62.7 < found[lines[0]][1] - 2.5
    assert found[lines[-1]][1] < 90


# --- member data is data -----------------------------------------------------------------------


def test_html_in_an_address_line_is_printed_literally():
    hostile = Letter(7, ["Bobby <b>Tables</b>", "</div><h1>FAKE</h1><!--", "<img src=x> 1 Main St", "London"],
                     "<p>Hello</p>", "en")
    text = page_texts(build_batch([hostile]))[0]
    assert "Bobby <b>Tables</b>" in text
    assert "</div><h1>FAKE</h1><!--" in text
    assert "<img src=x> 1 Main St" in text
    assert "Hello" in text                                    # the comment opener did not swallow the body
    html = letter_html(hostile)
    assert "<b>Tables</b>" not in html and "&lt;b&gt;Tables&lt;/b&gt;" in html


def test_title_and_sender_are_escaped_too():
    letter = Letter(8, ["A B"], "<p>x</p>", "en", title="<i>50%</i> off")
    text = page_texts(build_batch([letter], sender=["<script>Evil</script> Ltd"]))[0]
    assert "<i>50%</i> off" in text
    assert "<script>Evil</script> Ltd" in text


def test_blank_address_lines_are_dropped_and_too_many_are_refused_by_delivery_id():
    html = letter_html(Letter(9, ["Anna", "", "  ", "Street 1"], "", "en"))
    assert html.count("<div>") == 2
    with pytest.raises(ValueError, match="delivery 10 has 7 address lines") as error:
        build_batch([Letter(10, [f"Line {i}" for i in range(7)], "", "en")])
    assert "Line" not in str(error.value)                     # no member data in the error
    with pytest.raises(ValueError, match="delivery 11 has no address"):
        build_batch([Letter(11, ["", " "], "", "en")])


# --- language ----------------------------------------------------------------------------------


@pytest.mark.parametrize("locale,tag", [("ru", "ru"), ("ru_RU", "ru-RU"), ("en-GB", "en-GB"),
                                        ("sr_Latn_RS", "sr-Latn-RS"), ('ru"><script>', "und"), ("", "und")])
def test_lang_tag_from_locale(locale, tag):
    assert lang_tag(locale) == tag
    assert f'<html lang="{tag}">' in letter_html(Letter(1, ["A"], "", locale))


def test_hyphenation_follows_the_letters_language():
    body = '<p style="width: 25mm">Достопримечательности международного сотрудничества</p>'
    ru, en = page_texts(build_batch([Letter(1, ["A"], body, "ru"), Letter(2, ["B"], body, "en")]))
    assert "\u2010\n" in ru                                   # hyphenated by the Russian dictionary
    assert "Достопримечательности" in en and "\u2010" not in en


# --- overflow and isolation --------------------------------------------------------------------


def test_a_long_letter_runs_over_and_the_next_starts_on_a_fresh_page():
    long_body = "".join(f"<p>Абзац {i}: условия акции и правила начисления баллов.</p>" for i in range(90))
    long = Letter(20, ["Анна Петрова", "Екатеринбург"], long_body, "ru")
    result = render_batch([long, EN])
    assert result.letters[0].pages >= 2
    assert result.letters[1] == LetterPages(102, result.letters[0].pages + 1, 1)
    texts = page_texts(result.pdf)
    assert len(texts) == result.pages
    assert "Абзац 89:" in texts[result.letters[0].pages - 1]    # nothing was cut
    assert "John Smith" in texts[-1] and "Абзац" not in texts[-1]
    assert "Dear John," in texts[-1]


def test_one_letters_broken_html_or_styles_do_not_reach_the_next_letter():
    broken = Letter(30, ["Anna"], '<style>p { display: none }</style><div style="display: none"><p>x', "en")
    text = page_texts(build_batch([broken, EN]))[1]
    assert "Dear John," in text and "John Smith" in text


def test_an_empty_batch_is_refused():
    with pytest.raises(ValueError, match="at least one letter"):
        build_batch([])


def test_only_a4_paper_is_offered():
    with pytest.raises(ValueError, match="A4"):
        build_batch([EN], paper="Letter")


# --- no network, no files ----------------------------------------------------------------------


class _Recorder(BaseHTTPRequestHandler):
    requests: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        type(self).requests.append(self.path)
        body = PNG if self.path.endswith(".png") else b"p { color: red }"
        self.send_response(200)
        self.send_header("Content-Type", "image/png" if self.path.endswith(".png") else "text/css")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def http_server() -> Iterator[tuple[str, list[str]]]:
    handler = type("Recorder", (_Recorder,), {"requests": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler.requests
    finally:
        server.shutdown()
        server.server_close()


def remote_body(base: str) -> str:
    return (f'<link rel="stylesheet" href="{base}/style.css"><style>@import url("{base}/import.css");'
            f' .x {{ background: url("{base}/bg.png") }}</style>'
            f'<p class="x">Hello</p><img src="{base}/pixel.png"><object data="{base}/obj.png"></object>'
            f'<link rel="attachment" href="{base}/attach.png">')


def test_the_fake_server_does_see_a_default_weasyprint_fetch(http_server):
    # the control: without our fetcher WeasyPrint would fetch, so the next test can tell
    base, requests = http_server
    HTML(string=remote_body(base)).write_pdf()
    assert "/pixel.png" in requests


def test_remote_urls_in_a_letter_are_never_fetched(http_server):
    base, requests = http_server
    pdf = build_batch([Letter(40, ["Anna"], remote_body(base), "en")])
    assert requests == []
    assert "Hello" in page_texts(pdf)[0]
    assert len(read(pdf).pages[0].images) == 0


def test_local_files_are_not_read(tmp_path):
    image = tmp_path / "secret.png"
    image.write_bytes(PNG)
    pdf = build_batch([Letter(41, ["Anna"], f'<p>Hi</p><img src="{image.as_uri()}">', "en")])
    assert len(read(pdf).pages[0].images) == 0


def test_data_urls_still_work():
    pdf = build_batch([Letter(42, ["Anna"], f'<p>Logo</p><img src="{DATA_PNG}">', "en")])
    assert len(read(pdf).pages[0].images) == 1
