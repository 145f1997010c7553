"""A template that fails while rendering one member's message (arithmetic on a text attribute, a division by
zero, a helper given the wrong thing) is a TemplateProblem of that message, named by template, locale, line
and the error's type, never an exception that fails the whole page or campaign; the member's data stays out
of the message."""

from __future__ import annotations

from pathlib import Path

import pytest

from templates.render import Renderer, TemplateProblem

MJML = "<mjml><mj-body><mj-section><mj-column><mj-text>{body}</mj-text></mj-column></mj-section></mj-body></mjml>"


def library(root: Path, *, html: str = "Hi", text: str = "Hi", sms: str = "Hi", subject: str = "Hi") -> Path:
    folder = root / "points"
    folder.mkdir(parents=True)
    (folder / "template.yaml").write_text(f"version: 1\ndefault_locale: en\nsubject:\n  en: {subject!r}\n", "utf-8")
    (folder / "email.en.mjml").write_text(MJML.format(body=html), "utf-8")
    (folder / "email.en.txt").write_text(text, "utf-8")
    (folder / "sms.en.txt").write_text(sms, "utf-8")
    return root


def member(**attrs: object) -> dict[str, object]:
    return {"member": {"first_name": "Anna-Private", "locale": "en", **attrs}}


CASES = {
    "text minus a number": ("{{ member.points - 10 }}", {"points": "Anna-Private-1250"}, "TypeError"),
    "division by zero": ("{{ 100 // member.visits }}", {"visits": 0}, "ZeroDivisionError"),
    "int() of a word": ("{{ member.points | int // 0 }}", {"points": "12"}, "ZeroDivisionError"),
}


@pytest.mark.parametrize("part", ["html", "text", "subject"])
@pytest.mark.parametrize("case", ["text minus a number", "division by zero"])
def test_an_email_that_fails_while_rendering_is_a_template_problem_naming_the_type(tmp_path, part, case):
    expression, attrs, error = CASES[case]
    renderer = Renderer(library(tmp_path, **{part: f"Hello\n{expression}"}))

    with pytest.raises(TemplateProblem) as info:
        renderer.render_email("points", "en", member(**attrs))

    message = str(info.value)
    assert message.startswith("points/email.en: ") and error in message
    assert "Anna-Private" not in message


def test_the_line_of_the_failing_tag_is_named(tmp_path):
    renderer = Renderer(library(tmp_path, text="Hello\n\n{{ member.points - 10 }}"))
    with pytest.raises(TemplateProblem, match=r"^points/email\.en: line 3: TypeError while rendering$"):
        renderer.render_email("points", "en", member(points="1250"))


@pytest.mark.parametrize("case", ["text minus a number", "division by zero", "int() of a word"])
def test_a_channel_message_that_fails_while_rendering_is_a_template_problem(tmp_path, case):
    expression, attrs, error = CASES[case]
    renderer = Renderer(library(tmp_path, sms=expression))

    with pytest.raises(TemplateProblem) as info:
        renderer.render("points", "sms", "en", member(**attrs))

    assert str(info.value).startswith("points/sms.en: ") and error in str(info.value)
    assert "Anna-Private" not in str(info.value)


def test_the_same_template_renders_for_a_member_whose_data_fits(tmp_path):
    renderer = Renderer(library(tmp_path, sms="{{ member.points - 10 }} points"))
    with pytest.raises(TemplateProblem):
        renderer.render("points", "sms", "en", member(points="lots"))
    assert renderer.render("points", "sms", "en", member(points=1250)).text == "1240 points"


def test_the_check_reports_such_a_template_by_file_and_line_instead_of_crashing(tmp_path):
    from templates.check import check

    renderer = Renderer(library(tmp_path, text="Hello\n{{ member.first_name - 1 }}", sms="{{ 1 // (member.points_balance - 1250) }}"))
    problems = {(p.where, p.message) for p in check(renderer, "points")}
    assert ("email.en.txt", "line 2: TypeError: unsupported operand type(s) for -: 'str' and 'int'") in problems
    assert ("sms.en", "line 1: ZeroDivisionError: integer division or modulo by zero") in problems
