"""Agency import: a zip of MJML/HTML, text bodies and images becomes the next version of a template, whole or
not at all.

    import_zip(store=..., name=..., data=..., base_url=...) -> Imported      stored (or, dry run, only checked)
    ImportRefused(problems)      every error found, by file (warnings too); nothing was stored

What a zip may hold (one top-level folder wrapping everything is stripped; ``__MACOSX/``, ``.DS_Store``,
``._*``, ``Thumbs.db`` and ``desktop.ini`` are ignored):

    template.yaml                      required; a top-level ``version:`` is dropped (the store numbers versions)
    email.<locale>.mjml + .txt         both or neither, per locale
    <channel>.<locale>.<ext>           sms, whatsapp, push, inbox, receipt: .txt; telegram, direct_mail: .html
    _shared/**.mjml|.html|.txt         layouts and partials (``<mj-include path="_shared/..."/>``)
    images/**.png|.jpg|.jpeg|.gif|.webp

Locales are CLDR codes written as the renderer matches them (``ru``, ``en-GB``). SVG is refused: it can carry
script, and most email clients do not show it.

Images become assets of the new version, served to email clients at ``/assets/<name>/<version>/images/...``.
Relative references to them in the MJML/HTML (``src``, ``href``, ``background``, ``background-url``, CSS
``url()``) and in ``template.yaml`` values (a push ``image``) are rewritten at import time to
``<base_url>/assets/<name>/<version>/images/...``, so a rendered message is self-contained. A reference to an
image the zip does not hold is an error; an image nothing references is a warning.

Order of the checks, each stage reporting everything it finds before the import stops: the zip's directory
(paths, symlinks, encryption, counts and sizes as declared: nothing is decompressed yet) → the content (each
member read with a cap, so one that inflates past its declared size stops there; UTF-8; image signatures) →
structure and Jinja (syntax, filters, Python internals) → the whole version rendered by ``templates.check``
with a sample member, from memory. Only then ``TemplateStore.add``: the files and images in one transaction.
"""

from __future__ import annotations

import io
import lzma
import re
import stat
import struct
import threading
import zipfile
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal
from urllib.parse import urlsplit

import yaml
from jinja2 import TemplateError
from sqlalchemy.exc import IntegrityError

from templates.check import check
from templates.helpers import install_helpers
from templates.render import (
    CHANNEL_FILES,
    STRAY_INCLUDE,
    Renderer,
    normalize_locale,
    stray_includes,
)
from templates.sandbox import BoundedSandbox
from templates.store import (
    SHARED,
    TEXT_SUFFIXES,
    TemplateStore,
    Version,
    VersionTaken,
    check_name,
)

KB, MB = 1024, 1024 * 1024
MAX_ZIP_BYTES = 25 * MB          # the upload itself
MAX_FILES = 200                  # files that count (not folders, not macOS/Windows litter)
MAX_ENTRIES = 1000               # everything in the zip's directory
MAX_TOTAL_BYTES = 20 * MB        # uncompressed, all files together
MAX_IMAGE_BYTES = 2 * MB
MAX_TEXT_BYTES = 256 * KB
MAX_PATH = 200
MAX_NOTE = 500                   # template_version.note

IMAGES = "images"
IMAGE_TYPES = {"png": "image/png", "jpg": "image/jpeg", "jpeg": "image/jpeg", "gif": "image/gif",
               "webp": "image/webp"}
MEDIA_TYPES = frozenset(IMAGE_TYPES.values())
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "0.0.0.0"})
_JUNK_NAMES = frozenset({".ds_store", "thumbs.db", "desktop.ini"})
_SAFE_PART = re.compile(r"[A-Za-z0-9_\-][A-Za-z0-9._\-]*")
_BODY = re.compile(r"(?P<channel>[a-z_]+)\.(?P<locale>[^./]+)\.(?P<ext>[A-Za-z0-9]+)")
_VERSION_KEY = re.compile(r"^version[ \t]*:.*(?:\n|$)", re.MULTILINE)
_JINJA_TAG = re.compile(r"{{.*?}}|{%.*?%}", re.DOTALL)
_DUNDER = re.compile(r"__[A-Za-z0-9_]*__|\bmro\b|\bf_globals\b|\bgi_frame\b|\bfunc_globals\b")
# a reference to images/... where a URL is expected: an attribute, CSS url(), or (template.yaml) a value
_REF_MARKUP = re.compile(r"""(?P<lead>\b(?:src|href|background|background-url)\s*=\s*["']\s*|url\(\s*["']?\s*)"""
                         r"""(?:\./)?images/(?P<path>[A-Za-z0-9._/\-]*)(?P<after>.?)""", re.IGNORECASE)
_REF_YAML = re.compile(r"""(?P<lead>:[ \t]*["']?)(?:\./)?images/(?P<path>[A-Za-z0-9._/\-]*)(?P<after>.?)""")

Severity = Literal["error", "warning"]


@dataclass(frozen=True)
class ImportProblem:
    file: str                    # the file in the zip ("images/logo.png", "email.ru.mjml"), or "zip", "name"
    message: str
    severity: Severity = "error"

    def __str__(self) -> str:
        return f"{self.file}: {self.message}" + (" (warning)" if self.severity == "warning" else "")


class ImportRefused(ValueError):
    """The zip was refused whole: ``problems`` holds every error found (and the warnings so far)."""

    def __init__(self, problems: list[ImportProblem]) -> None:
        self.problems = sorted(problems, key=lambda p: p.severity != "error")
        errors = [p for p in self.problems if p.severity == "error"]
        super().__init__(f"the zip was refused ({len(errors)} problem{'s' if len(errors) != 1 else ''}): "
                         + "; ".join(str(p) for p in errors[:5]) + ("; ..." if len(errors) > 5 else ""))

    @property
    def errors(self) -> list[ImportProblem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[ImportProblem]:
        return [p for p in self.problems if p.severity == "warning"]


class ImportRaced(RuntimeError):
    """Another process stored a version of the same template between numbering and storing (see _store)."""


@dataclass(frozen=True)
class ImportedImage:
    path: str                    # images/logo.png
    media_type: str
    size: int
    url: str                     # where email clients fetch it


@dataclass(frozen=True)
class Imported:
    name: str
    version: int                 # stored as, or (dry run) the number it would get now
    stored: bool
    files: tuple[str, ...]
    images: tuple[ImportedImage, ...]
    warnings: tuple[ImportProblem, ...] = ()


@dataclass
class _Entry:
    info: zipfile.ZipInfo
    path: str                    # inside the template (wrapper folder stripped)
    kind: Literal["text", "image"]


@dataclass
class _Report:
    problems: list[ImportProblem] = field(default_factory=list)

    def error(self, file: str, message: str) -> None:
        self.problems.append(ImportProblem(file, message))

    def warn(self, file: str, message: str) -> None:
        self.problems.append(ImportProblem(file, message, "warning"))

    def stop_if_errors(self) -> None:
        if any(p.severity == "error" for p in self.problems):
            raise ImportRefused(self.problems)


# --- the zip's directory: nothing is decompressed here ---------------------------------------------------


def _is_junk(path: str) -> bool:
    parts = path.split("/")
    base = parts[-1].lower()
    return parts[0] == "__MACOSX" or base in _JUNK_NAMES or base.startswith("._")


def _unsafe(path: str) -> str | None:
    """Why a member's path could write outside a folder or mean something else on another system."""
    if "\\" in path:
        return "backslash in the path: a zip uses '/' (it could leave the folder when unpacked on Windows)"
    if path.startswith("/") or re.match(r"[A-Za-z]:", path):
        return "absolute path: every file must be inside the zip's folder"
    if any(ord(c) < 32 or ord(c) == 127 for c in path):
        return "control characters in the path"
    parts = path.rstrip("/").split("/")
    if ".." in parts:
        return "'..' in the path: it would leave the folder (zip slip)"
    if any(p in ("", ".") for p in parts):
        return "empty or '.' part in the path"
    if len(path) > MAX_PATH:
        return f"path longer than {MAX_PATH} characters"
    return None


def _file_type(info: zipfile.ZipInfo) -> str | None:
    """'symlink' / 'special' when the Unix mode bits say the member is not a regular file."""
    kind = stat.S_IFMT(info.external_attr >> 16)         # 0 when only permissions (or nothing) are set
    if kind == stat.S_IFLNK:
        return "symlink"
    if kind in (stat.S_IFIFO, stat.S_IFCHR, stat.S_IFBLK, stat.S_IFSOCK):
        return "special"
    return None


def _wrapper(paths: list[str]) -> str | None:
    """The single top-level folder wrapping everything (agencies zip a folder), if there is one."""
    if not paths or "template.yaml" in paths:
        return None
    tops = {p.split("/", 1)[0] for p in paths}
    if len(tops) != 1 or any("/" not in p for p in paths):
        return None
    top = tops.pop()
    return None if top in (SHARED, IMAGES) else top


def _kind(path: str, report: _Report) -> Literal["text", "image"] | None:
    """What a member is by its path (``None``: refused, the report says why)."""
    parts = path.split("/")
    ext = PurePosixPath(path).suffix.lower().lstrip(".")
    if parts[0] in (IMAGES, SHARED):
        bad = next((p for p in parts[1:] if not _SAFE_PART.fullmatch(p)), None)
        if bad is not None or len(parts) < 2:
            report.error(path, "file and folder names under images/ and _shared/ use A-Z, a-z, 0-9, '.', '_' "
                               "and '-' (they end up in URLs and include paths)")
            return None
    if parts[0] == IMAGES:
        if ext == "svg":
            report.error(path, "SVG is not accepted: it can carry script and most email clients do not show it; "
                               "export PNG")
            return None
        if ext not in IMAGE_TYPES:
            report.error(path, f"not an image kind we serve: use {', '.join('.' + e for e in IMAGE_TYPES)}")
            return None
        return "image"
    if parts[0] == SHARED:
        if ext not in ("mjml", "html", "txt") or PurePosixPath(path).suffix != "." + ext:
            report.error(path, "_shared/ holds layouts and partials: .mjml, .html or .txt")
            return None
        return "text"
    if len(parts) > 1:
        report.error(path, "unknown folder: a template has template.yaml and its bodies at the top, "
                           "layouts and partials in _shared/, pictures in images/")
        return None
    if path == "template.yaml":
        return "text"
    m = _BODY.fullmatch(path)
    if m is None or (m["channel"] != "email" and m["channel"] not in CHANNEL_FILES):
        report.error(path, "unknown file: expected template.yaml, email.<locale>.mjml/.txt, "
                           f"<channel>.<locale>.<ext> ({', '.join(CHANNEL_FILES)}), _shared/... or images/...")
        return None
    channel, locale, ext = m["channel"], m["locale"], m["ext"]
    allowed = ("mjml", "txt") if channel == "email" else (CHANNEL_FILES[channel][0],)
    if ext not in allowed:
        report.error(path, f"{channel} bodies are {' and '.join('.' + a for a in allowed)}")
        return None
    try:
        canonical = normalize_locale(locale)
    except ValueError:
        report.error(path, f"unknown locale {locale!r}: CLDR does not know it (e.g. ru, en, en-GB, pt-BR)")
        return None
    if canonical != locale:
        report.error(path, f"write the locale as {canonical!r} ({channel}.{canonical}.{ext}): members' locales "
                           "are matched as written")
        return None
    return "text"


def _directory(zf: zipfile.ZipFile, report: _Report) -> list[_Entry]:
    infos = zf.infolist()
    if len(infos) > MAX_ENTRIES:
        report.error("zip", f"{len(infos)} entries: more than {MAX_ENTRIES}")
        report.stop_if_errors()
    members: list[zipfile.ZipInfo] = []
    seen: set[str] = set()
    for info in infos:
        raw = info.filename
        why = _unsafe(raw)
        if why:
            report.error(raw, why)
            continue
        special = _file_type(info)
        if special == "symlink":
            report.error(raw, "symbolic link: only regular files are accepted")
            continue
        if special:
            report.error(raw, "not a regular file (device, pipe or socket)")
            continue
        if info.is_dir() or _is_junk(raw):
            continue
        if raw in seen:
            report.error(raw, "in the zip twice")
            continue
        seen.add(raw)
        if info.flag_bits & 0x1:
            report.error(raw, "encrypted: send the zip without a password")
            continue
        members.append(info)
    if len(members) > MAX_FILES:
        report.error("zip", f"{len(members)} files: more than {MAX_FILES}")
    report.stop_if_errors()

    top = _wrapper([i.filename for i in members])
    entries: list[_Entry] = []
    for info in members:
        path = info.filename[len(top) + 1:] if top else info.filename
        kind = _kind(path, report)
        if kind is not None:
            entries.append(_Entry(info, path, kind))

    by_case: dict[str, list[str]] = {}
    for e in entries:
        by_case.setdefault(e.path.lower(), []).append(e.path)
    for same in by_case.values():
        for path in same if len(same) > 1 else ():
            report.error(path, f"names that differ only by case: {', '.join(sorted(same))} (they clash on "
                               "Windows and macOS)")

    paths = {e.path for e in entries}
    if "template.yaml" not in paths:
        report.error("template.yaml", "missing: every template has a template.yaml (default_locale, subject per "
                                      "locale)" + (f" in {top}/" if top else " at the top of the zip"))
    for e in entries:
        m = _BODY.fullmatch(e.path)
        if m and m["channel"] == "email":
            pair = f"email.{m['locale']}.{'txt' if m['ext'] == 'mjml' else 'mjml'}"
            if pair not in paths:
                report.error(e.path, f"{pair} is missing: an email needs both its MJML and its plain text")

    total = 0
    for e in entries:
        limit = MAX_IMAGE_BYTES if e.kind == "image" else MAX_TEXT_BYTES
        total += e.info.file_size
        if e.info.file_size > limit:
            report.error(e.path, f"{_size(e.info.file_size)} uncompressed: more than the {_size(limit)} allowed for "
                                 f"{'an image' if e.kind == 'image' else 'a text file'}")
    if total > MAX_TOTAL_BYTES:
        report.error("zip", f"{_size(total)} uncompressed in all: more than the {_size(MAX_TOTAL_BYTES)} allowed")
    report.stop_if_errors()
    return entries


def _size(n: int) -> str:
    return f"{n / MB:.1f} MB" if n >= MB else f"{n / KB:.0f} KB" if n >= KB else f"{n} bytes"


# --- the content --------------------------------------------------------------------------------------


class _Damaged(Exception):
    pass


def _read(zf: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """The member's bytes, never more than it declared (nor than ``limit``): a member that inflates past
    its header stops here instead of filling memory."""
    cap = min(info.file_size, limit)
    chunks, n = [], 0
    try:
        with zf.open(info) as f:
            while chunk := f.read(64 * KB):
                n += len(chunk)
                if n > cap:
                    raise _Damaged("inflates past the size its header declares (zip bomb?)")
                chunks.append(chunk)
    except _Damaged:
        raise
    except (zipfile.BadZipFile, zlib.error, lzma.LZMAError, struct.error, EOFError, OSError, ValueError) as exc:
        raise _Damaged(f"damaged, or its data does not match the zip's header ({exc})") from None
    except (NotImplementedError, RuntimeError) as exc:
        raise _Damaged(f"cannot be unpacked: {exc}") from None
    if n != info.file_size:
        raise _Damaged("shorter than its header declares (damaged)")
    return b"".join(chunks)


def _image_type(content: bytes) -> str | None:
    if content.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if content.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if content[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if content[:4] == b"RIFF" and content[8:12] == b"WEBP":
        return "image/webp"
    return None


def _looks_like(content: bytes) -> str:
    head = content[:512].lstrip().lower()
    if head.startswith((b"<svg", b"<?xml")) or b"<svg" in head:
        return "SVG/XML text"
    if head.startswith((b"<!doctype", b"<html", b"<")):
        return "markup text"
    if not content:
        return "an empty file"
    return "not an image we know"


def _decode(path: str, content: bytes, report: _Report) -> str | None:
    try:
        text = content.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = content[:exc.start].count(b"\n") + 1
        report.error(path, f"not UTF-8 text (byte 0x{content[exc.start]:02x} on line {line}): save it as UTF-8")
        return None
    if "\x00" in text:
        report.error(path, "contains NUL bytes: not a text file")
        return None
    return text.replace("\r\n", "\n")


def _content(zf: zipfile.ZipFile, entries: list[_Entry], report: _Report
             ) -> tuple[dict[str, str], dict[str, tuple[str, bytes]]]:
    texts: dict[str, str] = {}
    images: dict[str, tuple[str, bytes]] = {}
    for e in entries:
        try:
            content = _read(zf, e.info, MAX_IMAGE_BYTES if e.kind == "image" else MAX_TEXT_BYTES)
        except _Damaged as exc:
            report.error(e.path, str(exc))
            continue
        if e.kind == "image":
            expected = IMAGE_TYPES[PurePosixPath(e.path).suffix.lstrip(".").lower()]
            found = _image_type(content)
            if found != expected:
                what = f"a {found.split('/')[1].upper()} image" if found else _looks_like(content)
                report.error(e.path, f"its bytes are {what}, not what .{e.path.rsplit('.', 1)[1]} says "
                                     f"({expected})")
                continue
            images[e.path] = (expected, content)
            continue
        text = _decode(e.path, content, report)
        if text is not None:
            texts[e.path] = text
    report.stop_if_errors()
    return texts, images


# --- structure, Jinja and images -------------------------------------------------------------------


def _static_checks(texts: Mapping[str, str], report: _Report) -> None:
    try:
        meta = yaml.safe_load(texts["template.yaml"])
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        report.error("template.yaml", f"not valid YAML{f' (line {mark.line + 1})' if mark else ''}: "
                                      f"{getattr(exc, 'problem', None) or exc}")
    else:
        if not isinstance(meta, dict):
            report.error("template.yaml", "must be a mapping of settings (default_locale, subject, ...)")
    env = BoundedSandbox()       # compiling folds constants: '{{ "x"|center(10**9) }}' would run here
    install_helpers(env)
    for path, text in texts.items():
        for m in _JINJA_TAG.finditer(text):
            bad = _DUNDER.search(m.group(0))
            if bad:
                line = text.count("\n", 0, m.start()) + 1
                report.error(path, f"line {line}: reaches for Python internals ({bad.group(0)}): not allowed in "
                                   "a template")
        if path == "template.yaml":
            continue                     # its values are templates of their own: checked when rendered
        for line in stray_includes(text):    # the mjml library would read the file it names from our disk
            report.error(path, f"line {line}: {STRAY_INCLUDE}")
        try:
            env.compile(env.parse(text, filename=path))
        except TemplateError as exc:
            line = getattr(exc, "lineno", None)
            report.error(path, f"{f'line {line}: ' if line else ''}{getattr(exc, 'message', None) or exc}")


def _references(texts: Mapping[str, str]) -> Iterable[tuple[str, str | None]]:
    """(file, images/... path) of every relative image reference; the path is None when Jinja builds it."""
    for path, text in texts.items():
        pattern = _REF_YAML if path == "template.yaml" else _REF_MARKUP if path.endswith((".mjml", ".html")) else None
        if pattern is None:
            continue
        for m in pattern.finditer(text):
            yield path, None if m["after"] == "{" else f"{IMAGES}/{m['path']}"


def _check_images(texts: Mapping[str, str], images: Mapping[str, object], report: _Report) -> None:
    used: set[str] = set()
    dynamic = False
    lower = {p.lower(): p for p in images}
    for file, ref in _references(texts):
        if ref is None:
            dynamic = True
            continue
        used.add(ref)
        if ref in images:
            continue
        hint = f" (there is {lower[ref.lower()]}: names are case-sensitive)" if ref.lower() in lower else ""
        report.error(file, f"refers to {ref}, which is not in the zip{hint}")
    if not dynamic:
        for path in sorted(set(images) - used):
            report.warn(path, "not referenced by any MJML or HTML file (stored anyway)")


def _rewrite(texts: Mapping[str, str], prefix: str) -> dict[str, str]:
    """Relative ``images/...`` references → ``prefix`` + ``images/...``; a top-level ``version:`` dropped."""
    out: dict[str, str] = {}
    for path, text in texts.items():
        if path == "template.yaml":
            text = _REF_YAML.sub(lambda m: f"{m['lead']}{prefix}{IMAGES}/{m['path']}{m['after']}",
                                 _VERSION_KEY.sub("", text))
        elif path.endswith((".mjml", ".html")):
            text = _REF_MARKUP.sub(lambda m: f"{m['lead']}{prefix}{IMAGES}/{m['path']}{m['after']}", text)
        out[path] = text
    return out


# --- the whole version, rendered before anything is stored -----------------------------------------


class _Candidate(TemplateStore):
    """A store holding only the version being imported, so the renderer and the check read it from memory."""

    def __init__(self, version: Version) -> None:
        super().__init__(library=Path("/nonexistent/clarion-import"))
        self.candidate = version

    def latest(self, name: str) -> int:
        return self.candidate.version

    def get(self, name: str, version: int | None = None) -> Version:
        return self.candidate


def _where_file(where: str) -> str:
    """check()'s ``email.ru`` / ``sms.en`` → the file the agency sent."""
    channel, _, locale = where.partition(".")
    if channel == "email" and "." not in locale and locale:
        return f"email.{locale}.mjml"
    if channel in CHANNEL_FILES and locale and "." not in locale:
        return f"{where}.{CHANNEL_FILES[channel][0]}"
    return where


def _render_check(name: str, number: int, files: Mapping[str, str], report: _Report) -> None:
    renderer = Renderer(store=_Candidate(Version(name, number, dict(files), "import")))
    for p in check(renderer, name, number):
        (report.error if p.severity == "error" else report.warn)(_where_file(p.where), p.message)


def _library_shared(store: TemplateStore) -> dict[str, str]:
    """The library's shared layouts and partials, so an agency's MJML may include them (copied into the
    version like a pinned library version: a version never changes)."""
    folder = store.library / SHARED
    if not folder.is_dir():
        return {}
    return {f"{SHARED}/{p.relative_to(folder).as_posix()}": p.read_text("utf-8")
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in TEXT_SUFFIXES}


def _next_number(store: TemplateStore, name: str) -> int:
    """What ``store.add`` will number the version (read now, not from the store's short cache)."""
    return max((v for v, _ in store.versions(name)), default=0) + 1


def _prefix(base_url: str, name: str, number: int) -> str:
    return f"{base_url.rstrip('/')}/assets/{name}/{number}/"


_STORE_LOCK = threading.Lock()


def import_zip(*, store: TemplateStore, name: str, data: bytes, base_url: str, note: str | None = None,
               dry_run: bool = False) -> Imported:
    """Check the agency's zip whole and store it as the next version of ``name`` (a new name starts at 1, or
    after the library's version). Raises :class:`ImportRefused` with every problem; stores nothing then."""
    report = _Report()
    try:
        check_name(name)
    except ValueError as exc:
        report.error("name", str(exc))
    if len(data) > MAX_ZIP_BYTES:
        report.error("zip", f"larger than the {_size(MAX_ZIP_BYTES)} accepted for an upload")
    if note is not None and len(note) > MAX_NOTE:
        report.error("note", f"at most {MAX_NOTE} characters")
    report.stop_if_errors()
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, struct.error, ValueError, EOFError, OSError) as exc:
        report.error("zip", f"not a zip file, or a damaged one ({exc})")
        raise ImportRefused(report.problems) from None
    except NotImplementedError as exc:
        report.error("zip", f"a zip this program cannot read ({exc})")
        raise ImportRefused(report.problems) from None
    with zf:
        entries = _directory(zf, report)
        texts, images = _content(zf, entries, report)
    _static_checks(texts, report)
    _check_images(texts, images, report)
    report.stop_if_errors()

    number = _next_number(store, name)
    shared = {p: t for p, t in _library_shared(store).items() if p not in texts}
    files = shared | _rewrite(texts, _prefix(base_url, name, number))
    _render_check(name, number, files, report)
    report.stop_if_errors()
    if images and (urlsplit(base_url).hostname or "") in _LOCAL_HOSTS:
        report.warn("zip", f"image URLs start with {base_url}, which email clients cannot reach: set "
                           "CLARION_PUBLIC_BASE_URL to the public address of the API")
    if not dry_run:
        number, files = _store(store, name, texts, shared, images, base_url, note)
    prefix = _prefix(base_url, name, number)
    return Imported(
        name=name, version=number, stored=not dry_run, files=tuple(sorted(files)),
        images=tuple(ImportedImage(p, t, len(b), prefix + p) for p, (t, b) in sorted(images.items())),
        warnings=tuple(p for p in report.problems if p.severity == "warning"))


def _store(store: TemplateStore, name: str, texts: Mapping[str, str], shared: Mapping[str, str],
           images: Mapping[str, tuple[str, bytes]], base_url: str, note: str | None) -> tuple[int, dict[str, str]]:
    """The image URLs carry the version number, which ``store.add`` gives inside its transaction: number
    again right before it (imports in this process wait for each other) and make sure it agreed."""
    with _STORE_LOCK:
        number = _next_number(store, name)
        files = dict(shared) | _rewrite(texts, _prefix(base_url, name, number))
        try:
            store.add(name, files, source="import", note=note, assets=images, expect_version=number)
        except (IntegrityError, VersionTaken):     # another process stored a version first: nothing stored
            raise ImportRaced(f"template {name!r}: another version was stored at the same moment: "
                              "import again") from None
    return number, files
