"""Agency import: a good zip becomes the next version with its images served from absolute URLs; a bad one is
refused whole, with a report naming each problem's file, and the database is left exactly as it was."""

from __future__ import annotations

import io
import stat
import struct
import zipfile
import zlib
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlmodel import Session

from storage.db import make_engine
from storage.tables import TemplateAsset, TemplateVersion
from templates.check import sample_context
from templates.importer import ImportRefused, import_zip
from templates.render import Renderer
from templates.store import TemplateStore

BASE = "https://mail.shop.example"


def png(width: int = 1, height: int = 1) -> bytes:
    """A real (tiny, grey) PNG."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    raw = b"".join(b"\x00" + b"\x80" * width for _ in range(height))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


LOGO = png(2, 2)
JPEG = b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(32)


def mjml(text: str, image: str | None = "images/logo.png") -> str:
    img = f'<mj-image src="{image}" alt="Shop" width="120px"/>' if image else ""
    return (f"<mjml><mj-body><mj-section><mj-column>{img}<mj-text>{text}</mj-text></mj-column></mj-section>"
            '<mj-include path="_shared/footer.mjml"/></mj-body></mjml>')


GOOD: dict[str, str | bytes] = {
    "template.yaml": "default_locale: ru\nversion: 7\nsubject:\n  ru: '{{ member.first_name }}, двойные баллы'\n"
                     "  en: '{{ member.first_name }}, double points'\n",
    "email.ru.mjml": mjml("{{ member.first_name }}, двойные баллы всю неделю!"),
    "email.ru.txt": "{{ member.first_name }}, двойные баллы всю неделю!",
    "email.en.mjml": mjml("{{ member.first_name }}, double points all week!"),
    "email.en.txt": "{{ member.first_name }}, double points all week!",
    "sms.ru.txt": "{{ program.name }}: двойные баллы до воскресенья",
    "_shared/footer.mjml": "<mj-section><mj-column><mj-text>{{ program.name }}</mj-text></mj-column></mj-section>",
    "images/logo.png": LOGO,
}


def make_zip(files: dict[str, str | bytes], *, prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for path, content in files.items():
            zf.writestr(prefix + path, content.encode() if isinstance(content, str) else content)
    return buf.getvalue()


def with_entry(info: zipfile.ZipInfo, content: bytes, files: dict[str, str | bytes] | None = None) -> bytes:
    """The good zip (or ``files``) plus one hand-made entry."""
    buf = io.BytesIO(make_zip(GOOD if files is None else files))
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr(info, content)
    return buf.getvalue()


def patched(data: bytes, name: str, *, local_at: int, central_at: int, value: int, fmt: str = "<I") -> bytes:
    """``data`` with a field of ``name``'s local header and central directory entry overwritten."""
    out = bytearray(data)
    for signature, name_len_at, name_at, field_at in ((b"PK\x03\x04", 26, 30, local_at),
                                                      (b"PK\x01\x02", 28, 46, central_at)):
        at = out.find(signature)
        while at >= 0:
            n = struct.unpack_from("<H", out, at + name_len_at)[0]
            if bytes(out[at + name_at:at + name_at + n]) == name.encode():
                struct.pack_into(fmt, out, at + field_at, value)
            at = out.find(signature, at + 4)
    return bytes(out)


def lying_header(real_size: int, declared: int) -> bytes:
    """email.en.txt inflating to ``real_size`` while its headers say ``declared``."""
    return patched(make_zip({**GOOD, "email.en.txt": "a" * real_size}), "email.en.txt", local_at=22,
                   central_at=24, value=declared)


def library_v1(library: Path) -> None:
    folder = library / "promo"
    folder.mkdir(parents=True)
    (folder / "template.yaml").write_text("version: 1\ndefault_locale: en\nsubject:\n  en: 'Hi {{ member.first_name }}'\n")
    (folder / "email.en.mjml").write_text("<mjml><mj-body><mj-section><mj-column><mj-text>Old copy for "
                                          "{{ member.first_name }}</mj-text></mj-column></mj-section></mj-body></mjml>")
    (folder / "email.en.txt").write_text("Old copy for {{ member.first_name }}")


@pytest.fixture
def store(any_db_url: str, tmp_path: Path):
    engine = make_engine(any_db_url)
    library_v1(tmp_path / "lib")
    yield TemplateStore(library=tmp_path / "lib", engine=engine)
    engine.dispose()


def rows(store: TemplateStore) -> tuple[int, int]:
    with Session(store._engine) as s:
        return (s.scalar(select(func.count()).select_from(TemplateVersion)) or 0,
                s.scalar(select(func.count()).select_from(TemplateAsset)) or 0)


def test_a_good_zip_becomes_the_next_version_with_its_images_at_absolute_urls(store):
    before = Renderer(store=store).render_email("promo", "en", sample_context("en"), version=1).html
    imported = import_zip(store=store, name="promo", data=make_zip(GOOD), base_url=BASE + "/", note="agency drop")

    assert (imported.version, imported.stored, imported.warnings) == (2, True, ())
    url = f"{BASE}/assets/promo/2/images/logo.png"
    assert [(i.path, i.media_type, i.url) for i in imported.images] == [("images/logo.png", "image/png", url)]
    fresh = Renderer(store=TemplateStore(library=store.library, engine=store._engine))
    email = fresh.render_email("promo", "ru", sample_context("ru"))            # the newest: the import
    assert f'src="{url}"' in email.html and "Anna, двойные баллы всю неделю!" in email.html
    assert "Shop &amp; Co" in email.html                                      # the zip's own _shared footer
    assert fresh.render("promo", "sms", "ru", sample_context("ru")).text == "Shop & Co: двойные баллы до воскресенья"
    assert store.asset("promo", 2, "images/logo.png") == ("image/png", LOGO)
    assert "version" not in fresh.store.get("promo", 2).meta()               # the store numbers versions
    assert fresh.store.versions("promo") == [(1, "library"), (2, "import")]
    assert fresh.render_email("promo", "en", sample_context("en"), version=1).html == before


def test_a_zip_of_a_folder_is_accepted_and_the_macos_litter_ignored(store):
    data = make_zip(GOOD, prefix="Shop — spring drop/")
    buf = io.BytesIO(data)
    with zipfile.ZipFile(buf, "a") as zf:
        zf.writestr("__MACOSX/Shop — spring drop/._email.ru.mjml", b"\x00\x05\x16\x07")
        zf.writestr("Shop — spring drop/.DS_Store", b"\x00\x00\x00\x01Bud1")
    imported = import_zip(store=store, name="promo", data=buf.getvalue(), base_url=BASE)
    assert imported.version == 2 and "email.ru.mjml" in imported.files and "template.yaml" in imported.files
    assert not any(".DS_Store" in f or "MACOSX" in f for f in imported.files)


def test_a_dry_run_checks_everything_and_stores_nothing(store):
    imported = import_zip(store=store, name="promo", data=make_zip(GOOD), base_url=BASE, dry_run=True)
    assert (imported.version, imported.stored) == (2, False)
    assert rows(store) == (0, 0) and store.versions("promo") == [(1, "library")]


def test_a_new_name_starts_at_version_1_and_warns_of_unreachable_or_unused_images(store):
    files = {**GOOD, "images/spare.png": png()}
    imported = import_zip(store=store, name="spring_sale", data=make_zip(files), base_url="http://127.0.0.1:8000")
    assert imported.version == 1
    warnings = {(w.file, w.message.split(":")[0]) for w in imported.warnings}
    assert ("images/spare.png", "not referenced by any MJML or HTML file (stored anyway)") in warnings
    assert any(w.file == "zip" and "CLARION_PUBLIC_BASE_URL" in w.message for w in imported.warnings)
    assert store.asset("spring_sale", 1, "images/spare.png") == ("image/png", files["images/spare.png"])


def test_an_image_path_built_by_jinja_is_rewritten_too(store):
    files = {**GOOD, "email.en.mjml": mjml("Hi", image="images/{{ member.tier }}.png"), "images/gold.png": png()}
    imported = import_zip(store=store, name="promo", data=make_zip(files), base_url=BASE)
    html = Renderer(store=store).render_email("promo", "en", sample_context("en"), version=imported.version).html
    assert f'src="{BASE}/assets/promo/2/images/gold.png"' in html


def symlink() -> bytes:
    info = zipfile.ZipInfo("images/logo.png")
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return with_entry(info, b"/etc/passwd", {k: v for k, v in GOOD.items() if k != "images/logo.png"})


def encrypted() -> bytes:
    return patched(make_zip({**GOOD, "_shared/notes.txt": "secret"}), "_shared/notes.txt", local_at=6,
                   central_at=8, value=0x1, fmt="<H")


def bomb() -> bytes:
    buf = io.BytesIO(make_zip(GOOD))
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("_shared/huge.txt", bytes(50 * 1024 * 1024))               # 50 MB of zeros, ~50 KB deflated
    return buf.getvalue()


def many_small_bombs() -> bytes:
    buf = io.BytesIO(make_zip(GOOD))
    with zipfile.ZipFile(buf, "a", zipfile.ZIP_DEFLATED) as zf:
        for i in range(12):                                                    # each under 2 MB, 22 MB together
            zf.writestr(f"images/b{i}.png", b"\x89PNG\r\n\x1a\n" + bytes(1_900_000))
    return buf.getvalue()


def without(*paths: str) -> dict[str, str | bytes]:
    return {k: v for k, v in GOOD.items() if k not in paths}


REFUSED = {
    "zip slip": (lambda: make_zip({**GOOD, "../../etc/cron.d/evil": "x"}), "../../etc/cron.d/evil", "zip slip"),
    "absolute path": (lambda: with_entry(zipfile.ZipInfo("/etc/cron.d/evil"), b"x"), "/etc/cron.d/evil", "absolute"),
    "backslashes": (lambda: make_zip({**GOOD, "..\\..\\evil.txt": "x"}), "..\\..\\evil.txt", "backslash"),
    "symlink": (symlink, "images/logo.png", "symbolic link"),
    "encrypted": (encrypted, "_shared/notes.txt", "encrypted"),
    "too many files": (lambda: make_zip({**GOOD, **{f"_shared/p{i}.txt": "x" for i in range(200)}}), "zip",
                       "208 files: more than 200"),
    "zip bomb": (bomb, "_shared/huge.txt", "50.0 MB uncompressed: more than the 256 KB allowed"),
    "zip bomb in parts": (many_small_bombs, "zip", "uncompressed in all: more than the 20.0 MB allowed"),
    "lying header": (lambda: lying_header(1_000_000, 100), "email.en.txt", "does not match the zip's header"),
    "not a zip": (lambda: b"PK\x03\x04 this is not really a zip", "zip", "not a zip file"),
    "image with a wrong signature": (lambda: make_zip({**GOOD, "images/logo.png": JPEG}), "images/logo.png",
                                     "its bytes are a JPEG image, not what .png says"),
    "svg": (lambda: make_zip({**GOOD, "images/logo.svg": "<svg onload='alert(1)'/>"}), "images/logo.svg", "SVG"),
    "non-UTF-8 text": (lambda: make_zip({**GOOD, "email.ru.txt": "Двойные баллы".encode("cp1251")}),
                       "email.ru.txt", "not UTF-8 text"),
    "unknown locale": (lambda: make_zip({**GOOD, "email.zz.mjml": mjml("x"), "email.zz.txt": "x"}),
                       "email.zz.mjml", "unknown locale 'zz'"),
    "locale not as members have it": (lambda: make_zip({**GOOD, "sms.en_gb.txt": "x"}), "sms.en_gb.txt",
                                      "write the locale as 'en-GB'"),
    "unknown file": (lambda: make_zip({**GOOD, "brief.docx": b"PK"}), "brief.docx", "unknown file"),
    "names differing by case": (lambda: make_zip({**GOOD, "images/Logo.png": LOGO}), "images/Logo.png",
                                "differ only by case"),
    "missing template.yaml": (lambda: make_zip(without("template.yaml")), "template.yaml", "missing"),
    "email mjml without its txt": (lambda: make_zip(without("email.en.txt")), "email.en.mjml",
                                   "email.en.txt is missing"),
    "jinja syntax error": (lambda: make_zip({**GOOD, "email.en.txt": "Hi\n{% if member.first_name %}Anna"}),
                           "email.en.txt", "line 2"),
    "unknown filter": (lambda: make_zip({**GOOD, "_shared/sig.txt": "{{ program.name | shout }}"}),
                       "_shared/sig.txt", "No filter named 'shout'"),
    "python internals": (lambda: make_zip({**GOOD, "email.en.mjml": mjml("{{ ''.__class__.__mro__ }}")}),
                         "email.en.mjml", "reaches for Python internals"),
    "python internals, disguised": (
        lambda: make_zip({**GOOD, "email.en.txt": "{{ member | attr('_' ~ '_class_' ~ '_') }}"}),
        "email.en.txt", "not allowed in a template"),
    "misspelt variable": (lambda: make_zip({**GOOD, "email.en.mjml": mjml("Hi {{ member.nick_name }}")}),
                          "email.en.mjml", "nick_name"),
    "missing image": (lambda: make_zip({**GOOD, "email.en.mjml": mjml("x", image="images/banner.jpg")}),
                      "email.en.mjml", "refers to images/banner.jpg, which is not in the zip"),
    "no subject for a locale": (lambda: make_zip({**GOOD, "template.yaml": "default_locale: ru\nsubject:\n  ru: x\n"}),
                                "email.en.mjml", "no subject for locale 'en'"),
    "bad name": (lambda: make_zip(GOOD), "name", "use a-z, 0-9"),
}


@pytest.mark.parametrize("case", list(REFUSED))
def test_a_bad_zip_is_refused_whole_with_a_report_and_nothing_is_stored(store, case):
    build, file, message = REFUSED[case]
    with pytest.raises(ImportRefused) as refused:
        import_zip(store=store, name="Promo!" if case == "bad name" else "promo", data=build(), base_url=BASE)
    assert any(p.file == file and message in p.message and p.severity == "error" for p in refused.value.errors), \
        [str(p) for p in refused.value.problems]
    assert rows(store) == (0, 0) and store.versions("promo") == [(1, "library")]


def test_the_report_lists_every_problem_not_just_the_first(store):
    files = {**GOOD, "images/logo.svg": "<svg/>", "email.zz.txt": "x", "notes.pdf": b"%PDF"}
    with pytest.raises(ImportRefused) as refused:
        import_zip(store=store, name="promo", data=make_zip(files), base_url=BASE)
    assert {p.file for p in refused.value.errors} == {"images/logo.svg", "email.zz.txt", "notes.pdf"}


def test_a_damaged_zip_is_refused_cleanly_whatever_the_damage():
    """Random bytes overwritten or the tail cut off: a report, never a crash (found: negative seeks, zip
    versions from the future, undecodable names)."""
    import random

    store = TemplateStore(library=Path("/nonexistent"))            # no database: a dry run only
    good, rng, outcomes = make_zip(GOOD), random.Random(7), set()
    for _ in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        data = data[:rng.randrange(len(data))] if rng.random() < 0.2 else data
        try:
            import_zip(store=store, name="promo", data=bytes(data), base_url=BASE, dry_run=True)
            outcomes.add("imported")                               # the damage was in a date or a comment
        except ImportRefused as exc:
            assert exc.errors
            outcomes.add("refused")
    assert "refused" in outcomes
