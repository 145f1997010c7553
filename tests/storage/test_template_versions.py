"""Template versions: a campaign renders the version it launched with, whatever changes in the library or
is imported later; shared layouts and partials come from the same version; a preheader per locale."""

from __future__ import annotations

from pathlib import Path

import pytest

from storage.db import make_engine
from templates.render import Renderer, TemplateProblem
from templates.store import TemplateStore

SHARED_FOOTER = '<mj-section><mj-column><mj-text>{{ program.name }} — footer v{{ footer_v }}</mj-text></mj-column></mj-section>'


def write(library: Path, version: int, greeting: str) -> None:
    folder = library / "promo"
    folder.mkdir(parents=True, exist_ok=True)
    (library / "_shared" / "partials").mkdir(parents=True, exist_ok=True)
    (library / "_shared" / "partials" / "footer.mjml").write_text(SHARED_FOOTER, "utf-8")
    (library / "_shared" / "partials" / "footer.txt").write_text("-- {{ program.name }}", "utf-8")
    (folder / "template.yaml").write_text(
        f"version: {version}\ndefault_locale: en\nsubject:\n  en: 'Hi {{{{ member.first_name }}}}'\n"
        "preheader:\n  en: 'Only this week, {{ member.first_name }}'\n", "utf-8")
    (folder / "email.en.mjml").write_text(
        "<mjml><mj-body><mj-section><mj-column><mj-text>" + greeting + " {{ member.first_name }}</mj-text>"
        '</mj-column></mj-section><mj-include path="_shared/partials/footer.mjml"/></mj-body></mjml>', "utf-8")
    (folder / "email.en.txt").write_text(greeting + ' {{ member.first_name }}\n{% include "_shared/partials/footer.txt" %}',
                                         "utf-8")


CTX = {"member": {"first_name": "Anna"}, "program": {"name": "Shop"}, "footer_v": 1}


@pytest.fixture
def store(any_db_url: str, tmp_path: Path):
    engine = make_engine(any_db_url)
    yield TemplateStore(library=tmp_path / "lib", engine=engine), tmp_path / "lib"
    engine.dispose()


def test_a_pinned_version_renders_the_same_after_the_library_changes(store):
    s, library = store
    write(library, 1, "Hello")
    pinned = s.pin("promo")
    write(library, 2, "Welcome")                 # the agency's new copy lands in the library
    fresh = Renderer(store=TemplateStore(library=library, engine=s._engine))
    assert pinned == 1
    assert "Hello Anna" in fresh.render_email("promo", "en", CTX, version=1).text
    assert "Welcome Anna" in fresh.render_email("promo", "en", CTX).text        # the newest for new campaigns
    assert [v for v, _ in fresh.store.versions("promo")] == [1, 2]


def test_an_imported_version_is_the_next_number_and_never_changes(store):
    s, library = store
    write(library, 3, "Hello")
    files = dict(s.get("promo").files)
    files["email.en.txt"] = "Imported {{ member.first_name }}"
    v = s.add("promo", files, note="agency drop 2026-12")
    renderer = Renderer(store=TemplateStore(library=library, engine=s._engine))
    assert v.version == 4 and renderer.render_email("promo", "en", CTX).text == "Imported Anna"
    assert renderer.render_email("promo", "en", CTX, version=3).text.startswith("Hello Anna")


def test_shared_partials_and_the_preheader_are_rendered(tmp_path):
    write(tmp_path, 1, "Hello")
    email = Renderer(tmp_path).render_email("promo", "en", CTX)
    assert "Shop — footer v1" in email.html and email.text.endswith("-- Shop")
    assert email.preheader == "Only this week, Anna" and "Only this week, Anna" in email.html


def test_an_include_of_a_file_outside_the_template_is_refused(tmp_path):
    write(tmp_path, 1, "Hello")
    mjml = tmp_path / "promo" / "email.en.mjml"
    mjml.write_text(mjml.read_text().replace("_shared/partials/footer.mjml", "../../etc/passwd"), "utf-8")
    with pytest.raises(TemplateProblem, match="mj-include of '../../etc/passwd': no such file"):
        Renderer(tmp_path).render_email("promo", "en", CTX)


def test_an_unknown_version_is_a_clear_problem(tmp_path):
    write(tmp_path, 1, "Hello")
    with pytest.raises(TemplateProblem, match="template 'promo' has no version 7"):
        Renderer(tmp_path).render_email("promo", "en", CTX, version=7)


def test_a_campaign_launched_before_pinning_is_pinned_once_when_it_next_runs(store, tmp_path):
    """Campaigns from before migration 0005 have no pins: the first time a worker loads one, it pins the
    versions current then and keeps them on the row, so a later import does not change what it sends."""
    from sqlalchemy import select, update
    from sqlmodel import Session

    from app.settings import Settings
    from app.worker import delivery_activities
    from storage.tables import Campaign
    from tests.factories import make_campaign, seed_members

    s, library = store
    write(library, 1, "Hello")
    engine = s._engine
    cid = make_campaign(engine, seed_members(engine, 1), template="promo")
    with engine.begin() as conn:
        conn.execute(update(Campaign).where(Campaign.id == cid).values(template_versions=None))
    settings = Settings(var_dir=tmp_path, templates_dir=library)
    ctx = delivery_activities(settings, engine=engine).campaign(cid)
    assert ctx.template("main") == ("promo", 1)
    with Session(engine) as db:
        assert db.scalar(select(Campaign.template_versions).where(Campaign.id == cid)) == {"promo": 1}
    s.add("promo", dict(s.get("promo").files), note="an import after the upgrade")   # version 2
    again = delivery_activities(settings, engine=engine).campaign(cid)                 # another worker
    assert again.template("main") == ("promo", 1)
