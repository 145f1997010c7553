"""A template cannot read the server's files: the mjml library opens whatever an ``<mj-include>`` names, so
only the includes the renderer expands itself (``<mj-include path="_shared/..."/>``, a file of the same
version) may reach it. Every other spelling (another case, another attribute, no quotes) is refused, at
import naming the file and line, and when compiling as a TemplateProblem; the file's bytes never show up."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from storage.db import make_engine
from storage.tables import TemplateVersion
from templates.check import sample_context
from templates.importer import ImportRefused, import_zip
from templates.render import Renderer, TemplateProblem, compile_mjml
from templates.store import TemplateStore
from tests.storage.test_template_importer import BASE, GOOD, make_zip

SECRET = "SERVER-SECRET-7f3a9c"

VARIANTS = {
    "another attribute first": '<mj-include type="mjml" path="{path}"/>',
    "upper case": '<MJ-INCLUDE path="{path}"/>',
    "mixed case with a closing tag": '<Mj-Include path="{path}"></Mj-Include>',
    "unquoted": "<mj-include path={path} />",
    "css type after the path": '<mj-include path="{path}" type="css"/>',
}


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "outside" / "secret.mjml"
    path.parent.mkdir()
    path.write_text(f"<mj-section><mj-column><mj-text>{SECRET}</mj-text></mj-column></mj-section>", "utf-8")
    return path


def body(include: str) -> str:
    return (f"<mjml><mj-body><mj-section><mj-column><mj-text>Hi {{{{ member.first_name }}}}</mj-text></mj-column>"
            f"</mj-section>\n{include}\n</mj-body></mjml>")


def library(root: Path, mjml_source: str, shared: dict[str, str] | None = None) -> Path:
    folder = root / "lib" / "promo"
    folder.mkdir(parents=True)
    (folder / "template.yaml").write_text("version: 1\ndefault_locale: en\nsubject:\n  en: Hi\n", "utf-8")
    (folder / "email.en.mjml").write_text(mjml_source, "utf-8")
    (folder / "email.en.txt").write_text("Hi", "utf-8")
    for path, text in (shared or {}).items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_text(text, "utf-8")
    return root / "lib"


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_an_include_the_renderer_does_not_expand_never_reads_a_server_file(tmp_path, secret_file, variant):
    include = VARIANTS[variant].format(path=secret_file)
    renderer = Renderer(library(tmp_path, body(include)))

    with pytest.raises(TemplateProblem) as info:
        renderer.render_email("promo", "en", sample_context("en"))

    assert "promo/email.en" in str(info.value) and "mj-include" in str(info.value)
    assert SECRET not in str(info.value)


def test_a_stray_include_in_a_shared_partial_is_refused_too(tmp_path, secret_file):
    lib = library(tmp_path, body('<mj-include path="_shared/footer.mjml"/>'),
                  shared={"_shared/footer.mjml": f'<MJ-INCLUDE path="{secret_file}"/>'})

    with pytest.raises(TemplateProblem, match="mj-include") as info:
        Renderer(lib).render_email("promo", "en", sample_context("en"))
    assert SECRET not in str(info.value)


def test_compile_mjml_refuses_any_include_left_in_the_source(secret_file):
    with pytest.raises(TemplateProblem, match="mj-include"):
        compile_mjml(body(f'<mj-include path="{secret_file}"/>'), where="t/email.en")


def test_the_includes_the_renderer_expands_still_work(tmp_path):
    lib = library(tmp_path, body('<mj-include path="_shared/footer.mjml"/>'),
                  shared={"_shared/footer.mjml": "<mj-section><mj-column><mj-text>FOOTER {{ program.name }}"
                                                 "</mj-text></mj-column></mj-section>"})
    assert "FOOTER Shop &amp; Co" in Renderer(lib).render_email("promo", "en", sample_context("en")).html


@pytest.fixture
def store(db_url: str, tmp_path: Path):
    engine = make_engine(db_url)
    (tmp_path / "lib").mkdir()
    yield TemplateStore(library=tmp_path / "lib", engine=engine)
    engine.dispose()


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_an_import_with_such_an_include_is_refused_naming_the_file_and_line(store, secret_file, variant):
    include = VARIANTS[variant].format(path=secret_file)
    files = {**GOOD, "email.en.mjml": body(include)}

    with pytest.raises(ImportRefused) as refused:
        import_zip(store=store, name="promo", data=make_zip(files), base_url=BASE)

    assert any(p.file == "email.en.mjml" and p.message.startswith("line 2: an <mj-include>")
               for p in refused.value.errors), [str(p) for p in refused.value.problems]
    assert SECRET not in str(refused.value) and not any(SECRET in str(p) for p in refused.value.problems)
    with Session(store._engine) as s:
        assert s.scalar(select(func.count()).select_from(TemplateVersion)) == 0


def test_an_import_with_such_an_include_in_a_partial_is_refused_naming_the_partial(store, secret_file):
    files = {**GOOD, "_shared/footer.mjml": f'<mj-text>x</mj-text>\n<mj-include path="{secret_file}" type="mjml"/>'}
    with pytest.raises(ImportRefused) as refused:
        import_zip(store=store, name="promo", data=make_zip(files), base_url=BASE, dry_run=True)
    assert [(p.file, p.message.split(":")[0]) for p in refused.value.errors] == [("_shared/footer.mjml", "line 2")]
    assert SECRET not in str(refused.value)
