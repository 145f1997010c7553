"""Templates: MJML compiled with Jinja intact, sandboxed per-member rendering, locale fallback."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from jinja2.exceptions import SecurityError
from jinja2.sandbox import SandboxedEnvironment

from templates.render import Renderer, TemplateProblem, compile_mjml, normalize_locale

CONDITIONAL_SECTIONS = """\
<mjml>
  <mj-body>
    <mj-section>
      <mj-column>
        <mj-text>You have {{ points }} points{% if points > 100 and points < 1000 %} (nice){% endif %}.</mj-text>
      </mj-column>
    </mj-section>
    {% if points > 100 %}
    <mj-section>
      <mj-column>
        <mj-text>BIG-SPENDER-OFFER</mj-text>
      </mj-column>
    </mj-section>
    {% endif %}
    <mj-section>
      <mj-column>
        <mj-button href="{{ url }}">Open</mj-button>
      </mj-column>
    </mj-section>
  </mj-body>
</mjml>
"""


def render_html(html: str, **context) -> str:
    return SandboxedEnvironment(autoescape=True).from_string(html).render(**context)


def jinja_tags(text: str) -> list[str]:
    return re.findall(r"{{.*?}}|{%.*?%}", text)


def visible_text(html: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", html).split())


@pytest.fixture(scope="module")
def compiled() -> str:
    return compile_mjml(CONDITIONAL_SECTIONS)


def test_compiled_mjml_keeps_every_jinja_tag_verbatim(compiled):
    assert jinja_tags(compiled) == jinja_tags(CONDITIONAL_SECTIONS)
    assert "&gt;" not in "".join(jinja_tags(compiled))


def test_compiled_mjml_is_html(compiled):
    assert compiled.lstrip().lower().startswith("<!doctype html>")
    assert "<mj-" not in compiled


def test_conditional_section_appears_when_condition_holds(compiled):
    html = render_html(compiled, points=150, url="https://x.example/")

    assert "BIG-SPENDER-OFFER" in html
    assert "You have 150 points (nice)." in visible_text(html)


def test_conditional_section_disappears_when_condition_fails(compiled):
    html = render_html(compiled, points=50, url="https://x.example/")

    assert "BIG-SPENDER-OFFER" not in html
    assert "You have 50 points." in visible_text(html)


def test_jinja_in_attribute_survives_compilation(compiled):
    html = render_html(compiled, points=1, url="https://x.example/a?b=1&c=2")

    assert 'href="https://x.example/a?b=1&amp;c=2"' in html


def test_loop_between_components_repeats_them():
    source = """\
<mjml><mj-body><mj-section><mj-column>
{% for item in items %}
<mj-text>ITEM-{{ item }}</mj-text>
{% endfor %}
</mj-column></mj-section></mj-body></mjml>
"""
    html = render_html(compile_mjml(source), items=["a", "b", "c"])

    assert re.findall(r"ITEM-(\w)", html) == ["a", "b", "c"]


def test_jinja_tag_that_mjml_would_drop_is_reported_not_lost():
    source = """\
<mjml><mj-body>
<mj-section><mj-column><mj-text>x</mj-text></mj-column></mj-section>
{% if a %}<mj-section><mj-column><mj-text>y</mj-text></mj-column></mj-section>{% endif %}
</mj-body></mjml>
"""
    with pytest.raises(TemplateProblem, match=r"my/email\.en: MJML dropped the Jinja tag '\{% if a %\}'"):
        compile_mjml(source, where="my/email.en")


# --- the shipped library -------------------------------------------------------------------------

def context(**member) -> dict:
    return {
        "member": {"first_name": None, "tier": None, **member},
        "program": {"name": "A & B"},
        "unsubscribe_url": "https://clarion.example/u?t=abc&m=1",
        "preferences_url": "https://clarion.example/p/xyz",
    }


@pytest.fixture(scope="module")
def shipped() -> Renderer:
    return Renderer()


def test_english_email_is_in_english(shipped):
    email = shipped.render_email("double_points", "en", context(first_name="Anna"))

    assert email.locale == "en"
    assert email.subject == "Anna, double points all week at A & B"
    assert email.text.startswith("Hi Anna,")
    assert "Until Sunday every purchase at A & B earns double points." in email.text
    assert "Until Sunday every purchase at A &amp; B earns" in email.html
    assert "<!doctype html>" in email.html.lower()


def test_russian_email_is_in_russian(shipped):
    email = shipped.render_email("double_points", "ru", context(first_name="Анна"))

    assert email.locale == "ru"
    assert email.subject == "Анна, двойные баллы всю неделю в A & B"
    assert email.text.startswith("Анна, здравствуйте!")
    assert "Отписаться: https://clarion.example/u?t=abc&m=1" in email.text
    assert "каждая покупка в A &amp; B приносит" in email.html
    assert "Until Sunday" not in email.html + email.text


def test_program_name_is_escaped_in_html_but_not_in_text(shipped):
    email = shipped.render_email("double_points", "en", context())

    assert "A &amp; B" in email.html
    assert "A & B" not in email.html
    assert "A & B" in email.text
    assert "&amp;" not in email.text


def test_unsubscribe_url_is_escaped_inside_href(shipped):
    email = shipped.render_email("double_points", "en", context())

    assert '<a href="https://clarion.example/u?t=abc&amp;m=1">Unsubscribe</a>' in email.html


def test_member_value_with_markup_cannot_inject_html(shipped):
    email = shipped.render_email("double_points", "en", context(first_name="<script>x</script>"))

    assert "<script>x" not in email.html
    assert "&lt;script&gt;x&lt;/script&gt;" in email.html


def test_greeting_without_first_name_uses_generic_hello(shipped):
    email = shipped.render_email("double_points", "en", context())

    assert email.subject.startswith("Hello, double points")
    assert email.text.startswith("Hello,")


def test_gold_section_only_for_gold_members(shipped):
    gold = shipped.render_email("double_points", "en", context(tier="gold"))
    silver = shipped.render_email("double_points", "en", context(tier="silver"))

    assert "free delivery" in gold.html and "free delivery" in gold.text
    assert "free delivery" not in silver.html and "free delivery" not in silver.text


def test_shipped_template_lists_its_locales(shipped):
    assert shipped.meta("double_points")["locales"] == ["en", "ru"]


@pytest.mark.parametrize(("wanted", "fallback", "expected"), [
    ("ru", None, "ru"),
    ("ru-RU", None, "ru"),
    ("en-GB", "ru", "en"),
    ("de", "ru", "ru"),
    ("de", "ru-RU", "ru"),
    ("de", None, "en"),
    ("de", "fr", "en"),
    (None, None, "en"),
    ("", "ru", "ru"),
])
def test_locale_falls_back_to_language_then_program_then_template_default(shipped, wanted, fallback, expected):
    assert shipped.resolve_locale("double_points", wanted, fallback) == expected


def test_missing_variable_names_the_template(shipped):
    with pytest.raises(TemplateProblem, match=r"double_points/email\.en: 'program' is undefined"):
        shipped.render_email("double_points", "en", {"member": {"first_name": "A", "tier": None},
                                                     "unsubscribe_url": "u"})


def test_unknown_template_is_a_template_problem(shipped):
    with pytest.raises(TemplateProblem, match="'no_such' not found"):
        shipped.render_email("no_such", "en", context())


@pytest.mark.parametrize("name", ["../double_points", "Double", "a/b", ""])
def test_template_name_outside_the_library_is_refused(shipped, name):
    with pytest.raises(TemplateProblem, match="use a-z"):
        shipped.meta(name)


# --- a library of our own --------------------------------------------------------------------------

MJML_BODY = "<mjml><mj-body><mj-section><mj-column><mj-text>{body}</mj-text></mj-column></mj-section></mj-body></mjml>"


def make_template(library: Path, name: str, *, subjects: dict[str, str], html: dict[str, str],
                  text: dict[str, str], default_locale: str | None = None) -> None:
    folder = library / name
    folder.mkdir()
    meta = "".join(f"  {loc}: {json.dumps(subject)}\n" for loc, subject in subjects.items())
    head = f"default_locale: {default_locale}\n" if default_locale else ""
    (folder / "template.yaml").write_text(f"{head}version: 1\nsubject:\n{meta}", "utf-8")
    for loc, body in html.items():
        (folder / f"email.{loc}.mjml").write_text(MJML_BODY.format(body=body), "utf-8")
    for loc, body in text.items():
        (folder / f"email.{loc}.txt").write_text(body, "utf-8")


def test_own_template_renders_from_a_temp_library(tmp_path):
    make_template(tmp_path, "hello", subjects={"en": "Hi {{ name }}"}, html={"en": "HTML {{ name }}"},
                  text={"en": "TEXT {{ name }}"})

    email = Renderer(library=tmp_path).render_email("hello", "en", {"name": "Tom & Jerry"})

    assert (email.subject, email.text) == ("Hi Tom & Jerry", "TEXT Tom & Jerry")
    assert "HTML Tom &amp; Jerry" in email.html


def test_subject_whitespace_and_newlines_are_collapsed(tmp_path):
    make_template(tmp_path, "hello", subjects={"en": "Hi\n  {{ name }}  "}, html={"en": "x"}, text={"en": "x"})

    email = Renderer(library=tmp_path).render_email("hello", "en", {"name": "A\r\nBcc: evil@x"})

    assert email.subject == "Hi A Bcc: evil@x"


def test_missing_variable_in_own_template_names_template_and_locale(tmp_path):
    make_template(tmp_path, "promo", subjects={"de": "Hallo"}, html={"de": "{{ missing_thing }}"},
                  text={"de": "x"}, default_locale="de")

    with pytest.raises(TemplateProblem) as info:
        Renderer(library=tmp_path).render_email("promo", "de", {})

    assert "promo/email.de" in str(info.value)
    assert "missing_thing" in str(info.value)


@pytest.mark.parametrize("expression", [
    "{{ ''.__class__.__mro__ }}",
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ func.__globals__ }}",
])
@pytest.mark.parametrize("part", ["html", "text"])
def test_template_cannot_reach_python_internals(tmp_path, expression, part):
    bodies = {"html": "ok", "text": "ok"}
    bodies[part] = expression
    make_template(tmp_path, "evil", subjects={"en": "s"}, html={"en": bodies["html"]}, text={"en": bodies["text"]})

    with pytest.raises(TemplateProblem) as info:
        Renderer(library=tmp_path).render_email("evil", "en", {"func": normalize_locale})

    assert "evil/email.en" in str(info.value)
    assert "is unsafe" in str(info.value)
    assert isinstance(info.value.__cause__, SecurityError)


def test_subject_cannot_reach_python_internals(tmp_path):
    make_template(tmp_path, "evil", subjects={"en": "{{ ''.__class__.__mro__ }}"}, html={"en": "ok"},
                  text={"en": "ok"})

    with pytest.raises(TemplateProblem, match="unsafe"):
        Renderer(library=tmp_path).render_email("evil", "en", {})


def test_jinja_syntax_error_names_template_and_line(tmp_path):
    make_template(tmp_path, "broken", subjects={"en": "s"}, html={"en": "ok"}, text={"en": "a\nb\n{% if %}"})

    with pytest.raises(TemplateProblem, match=r"broken/email\.en: line 3"):
        Renderer(library=tmp_path).render_email("broken", "en", {})


def test_missing_text_part_is_named(tmp_path):
    make_template(tmp_path, "half", subjects={"en": "s"}, html={"en": "ok"}, text={})

    with pytest.raises(TemplateProblem, match=r"half/email\.en: missing file email\.en\.txt"):
        Renderer(library=tmp_path).render_email("half", "en", {})


def test_locale_without_subject_is_named(tmp_path):
    make_template(tmp_path, "nosubj", subjects={"en": "s"}, html={"en": "ok", "ru": "ok"},
                  text={"en": "ok", "ru": "ok"})

    with pytest.raises(TemplateProblem, match="no subject for locale 'ru'"):
        Renderer(library=tmp_path).render_email("nosubj", "ru", {})


def test_default_locale_without_files_is_a_template_problem(tmp_path):
    make_template(tmp_path, "only_ru", subjects={"ru": "s"}, html={"ru": "ok"}, text={"ru": "ok"})

    renderer = Renderer(library=tmp_path)

    assert renderer.resolve_locale("only_ru", "ru-RU") == "ru"
    with pytest.raises(TemplateProblem, match="default locale 'en'"):
        renderer.resolve_locale("only_ru", "de")


def test_region_specific_template_wins_over_language(tmp_path):
    make_template(tmp_path, "pt", subjects={"pt": "pt", "pt-BR": "br"}, html={"pt": "ok", "pt-BR": "ok"},
                  text={"pt": "PT", "pt-BR": "BR"}, default_locale="pt")
    renderer = Renderer(library=tmp_path)

    assert renderer.resolve_locale("pt", "pt-BR") == "pt-BR"
    assert renderer.resolve_locale("pt", "pt-PT") == "pt"
    assert renderer.render_email("pt", "pt-BR", {}).text == "BR"


def test_money_and_number_helpers_follow_the_locale(tmp_path):
    make_template(tmp_path, "money", subjects={"en": "s", "ru": "s"},
                  html={"en": "ok", "ru": "ok"},
                  text={"en": "{{ money(1234.5, 'EUR') }}|{{ number(1234567) }}",
                        "ru": "{{ money(1234.5, 'RUB') }}|{{ number(1234567) }}"})
    renderer = Renderer(library=tmp_path)

    assert renderer.render_email("money", "en", {}).text == "€1,234.50|1,234,567"
    assert renderer.render_email("money", "ru", {}).text == "1\xa0234,50\xa0₽|1\xa0234\xa0567"


@pytest.mark.parametrize(("value", "expected"), [
    ("ru_RU", "ru-RU"),
    ("ru-ru", "ru-RU"),
    ("ru-RU", "ru-RU"),
    ("en", "en"),
    ("pt_br", "pt-BR"),
])
def test_locale_codes_are_normalized(value, expected):
    assert normalize_locale(value) == expected


@pytest.mark.parametrize("value", ["xx", "zz-ZZ", "klingon", ""])
def test_unknown_locale_is_refused(value):
    with pytest.raises(ValueError, match="unknown locale"):
        normalize_locale(value)


# --- the other channels ----------------------------------------------------------------------------

SHIPPED_CONTEXT = {"member": {"first_name": "Анна"}, "program": {"name": "A & <B>"}, "unsubscribe_url": "u",
                   "preferences_url": "p"}


def test_shipped_omnichannel_template_has_a_body_for_every_channel(shipped):
    assert shipped.channels("weekend_offer") == ["email", "sms", "whatsapp", "telegram", "push", "inbox",
                                                 "receipt", "direct_mail"]


def test_sms_text_is_not_html_escaped_but_telegram_and_letters_are(shipped):
    sms = shipped.render("weekend_offer", "sms", "ru", SHIPPED_CONTEXT)
    telegram = shipped.render("weekend_offer", "telegram", "ru", SHIPPED_CONTEXT)
    letter = shipped.render("weekend_offer", "direct_mail", "en", SHIPPED_CONTEXT)
    assert sms.text.startswith("A & <B>: 500 баллов")
    assert "A &amp; &lt;B&gt;" in telegram.text and telegram.text.startswith("<b>Анна,")
    assert "A &amp; &lt;B&gt;" in letter.text and letter.locale == "en"


def test_push_gets_title_link_and_image_and_whatsapp_its_approved_template(shipped):
    push = shipped.render("weekend_offer", "push", "en", SHIPPED_CONTEXT)
    wa = shipped.render("weekend_offer", "whatsapp", "ru", SHIPPED_CONTEXT)
    assert push.title == "500 bonus points this weekend" and push.link.endswith("/offers/weekend")
    assert push.image.endswith(".png")
    assert wa.content_sid == "HXd3a2c4e1f0b9a8c7d6e5f4a3b2c1d0e9" and wa.content_variables == {"1": "Анна", "2": "500"}


def test_locale_falls_back_per_channel(tmp_path):
    make_template(tmp_path, "t", subjects={"en": "s", "ru": "с"}, html={"en": "x", "ru": "х"},
                  text={"en": "x", "ru": "х"}, default_locale="en")
    (tmp_path / "t" / "sms.en.txt").write_text("hi", "utf-8")
    r = Renderer(tmp_path)
    assert r.resolve_locale("t", "ru", None) == "ru"
    assert r.resolve_locale("t", "ru", None, channel="sms") == "en"
    with pytest.raises(TemplateProblem, match="has no push.en.txt"):
        r.resolve_locale("t", "ru", None, channel="push")


def test_telegram_template_with_a_tag_telegram_refuses_is_a_template_problem(tmp_path):
    make_template(tmp_path, "t", subjects={"en": "s"}, html={"en": "x"}, text={"en": "x"})
    (tmp_path / "t" / "telegram.en.html").write_text("<div>{{ 1 }}</div>", "utf-8")
    with pytest.raises(TemplateProblem, match=r"t/telegram\.en: Telegram does not allow the tag\(s\) div"):
        Renderer(tmp_path).render("t", "telegram", "en", {})


def test_channel_body_cannot_reach_python_internals(tmp_path):
    make_template(tmp_path, "t", subjects={"en": "s"}, html={"en": "x"}, text={"en": "x"})
    (tmp_path / "t" / "sms.en.txt").write_text("{{ ''.__class__.__mro__ }}", "utf-8")
    with pytest.raises(TemplateProblem, match=r"t/sms\.en"):
        Renderer(tmp_path).render("t", "sms", "en", {})
