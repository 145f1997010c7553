"""Where templates live, by version: the shipped library on disk, and versions kept in the database.

A template is a set of text files (``template.yaml``, ``email.ru.mjml``, ``sms.en.txt``, ...) plus the
library's shared layouts and partials (``_shared/...``, included by path). Each version is immutable:

- the library folder holds one version of each template (``version:`` in its ``template.yaml``);
- the database keeps every version ever used or imported (``template_version``): launching a campaign
  *pins* the version it starts with (a copy of the library's files when they are not stored yet), so a
  running campaign keeps rendering exactly what it launched with whatever changes on disk; an agency import
  adds the next version.

The newest version of a name is the higher of the library's and the database's. Names are checked
(a-z, 0-9, _ and -): no path can leave the library.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from storage.db import insert_ignore, session_scope
from storage.tables import TemplateAsset, TemplateVersion, utcnow

LIBRARY = Path(__file__).with_name("library")
SHARED = "_shared"
NAME = re.compile(r"[a-z0-9][a-z0-9_\-]{0,63}")
TEXT_SUFFIXES = (".yaml", ".yml", ".mjml", ".txt", ".html")
CURRENT_TTL_S = 5.0


class TemplateNotFound(LookupError):
    pass


class VersionTaken(RuntimeError):
    """Another version of the template was stored first (two imports at once): store again."""


def check_name(name: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or name == SHARED:
        raise ValueError(f"template name {name!r}: use a-z, 0-9, _ and -")
    return name


@dataclass(frozen=True)
class Version:
    name: str
    version: int
    files: Mapping[str, str] = field(repr=False)    # relative path → text, ``_shared/...`` included
    source: str = "library"                          # library | pinned | import

    def meta(self) -> dict:
        return yaml.safe_load(self.files.get("template.yaml", "")) or {}


def _read_folder(folder: Path, prefix: str = "") -> dict[str, str]:
    files: dict[str, str] = {}
    if not folder.is_dir():
        return files
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in TEXT_SUFFIXES:
            files[prefix + path.relative_to(folder).as_posix()] = path.read_text("utf-8")
    return files


class TemplateStore:
    """Thread-safe; without an engine only the library is used (tests, tools without a database)."""

    def __init__(self, *, library: Path = LIBRARY, engine: Engine | None = None) -> None:
        self.library = library
        self._engine = engine
        self._versions: dict[tuple[str, int], Version] = {}            # immutable once read
        self._current: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()

    # --- reading ----------------------------------------------------------------------------------

    def _library_version(self, name: str) -> Version | None:
        folder = self.library / name
        if not (folder / "template.yaml").is_file():
            return None
        files = _read_folder(folder)
        files.update(_read_folder(self.library / SHARED, SHARED + "/"))
        number = int((yaml.safe_load(files["template.yaml"]) or {}).get("version", 1))
        return Version(name, number, files, "library")

    def _db_latest(self, name: str) -> int | None:
        if self._engine is None:
            return None
        with Session(self._engine) as s:
            return s.scalar(select(func.max(TemplateVersion.version)).where(TemplateVersion.name == name))

    def _db_version(self, name: str, version: int) -> Version | None:
        if self._engine is None:
            return None
        with Session(self._engine) as s:
            row = s.scalar(select(TemplateVersion).where(TemplateVersion.name == name,
                                                         TemplateVersion.version == version))
        return None if row is None else Version(name, version, dict(row.files), row.source)

    def latest(self, name: str) -> int:
        """The newest version number (cached for a few seconds)."""
        check_name(name)
        now = time.monotonic()
        found = self._current.get(name)
        if found is not None and now - found[0] < CURRENT_TTL_S:
            return found[1]
        lib = self._library_version(name)
        db = self._db_latest(name)
        if lib is None and db is None:
            raise TemplateNotFound(f"template {name!r} not found (library {self.library})")
        number = max(v for v in (lib.version if lib else None, db) if v is not None)
        self._current[name] = (now, number)
        return number

    def get(self, name: str, version: int | None = None) -> Version:
        """A version (the newest when None). Stored versions win over the library's files of the same number."""
        check_name(name)
        number = self.latest(name) if version is None else int(version)
        key = (name, number)
        found = self._versions.get(key)
        if found is not None and found.source != "library":
            return found
        stored = self._db_version(name, number)
        if stored is not None:
            with self._lock:
                self._versions[key] = stored
            return stored
        if found is not None:
            return found
        lib = self._library_version(name)
        if lib is not None and lib.version == number:
            with self._lock:
                self._versions[key] = lib
            return lib
        raise TemplateNotFound(f"template {name!r} has no version {number}")

    def names(self) -> list[str]:
        names = {p.name for p in self.library.iterdir() if p.is_dir() and (p / "template.yaml").is_file()} \
            if self.library.is_dir() else set()
        if self._engine is not None:
            with Session(self._engine) as s:
                names |= set(s.scalars(select(TemplateVersion.name).distinct()))
        return sorted(names)

    def versions(self, name: str) -> list[tuple[int, str]]:
        """(version, source) of every version known, oldest first."""
        check_name(name)
        found: dict[int, str] = {}
        lib = self._library_version(name)
        if lib is not None:
            found[lib.version] = "library"
        if self._engine is not None:
            with Session(self._engine) as s:
                found.update({v: src for v, src in s.execute(
                    select(TemplateVersion.version, TemplateVersion.source).where(TemplateVersion.name == name))})
        return sorted(found.items())

    # --- writing ----------------------------------------------------------------------------------

    def pin(self, name: str) -> int:
        """Keep the newest version in the database (so it can be rendered as it is now, for as long as a
        campaign runs) and return its number. Idempotent."""
        v = self.get(name)
        if v.source != "library" or self._engine is None:
            return v.version
        with session_scope(self._engine) as s:
            s.execute(insert_ignore(s, TemplateVersion.__table__, ["name", "version"]), [{
                "name": name, "version": v.version, "files": dict(v.files), "source": "pinned",
                "note": "copied from the library when a campaign launched", "created_at": utcnow()}])
        with self._lock:
            self._versions.pop((name, v.version), None)
        return v.version

    def add(self, name: str, files: Mapping[str, str], *, source: str = "import", note: str | None = None,
            assets: Mapping[str, tuple[str, bytes]] | None = None, expect_version: int | None = None) -> Version:
        """Store ``files`` (and binary ``assets``: path → (media type, bytes)) as the next version of ``name``.
        The caller validated them. One transaction: the version and its assets, or nothing. With
        ``expect_version``, a version stored meanwhile by someone else makes it store nothing and raise
        :class:`VersionTaken` (the files may carry their number, e.g. in image URLs)."""
        if self._engine is None:
            raise RuntimeError("storing a template version needs the database")
        check_name(name)
        with session_scope(self._engine) as s:
            newest = max([v for v in (s.scalar(select(func.max(TemplateVersion.version)).where(
                TemplateVersion.name == name)), self._library_version_number(name)) if v is not None], default=0)
            number = newest + 1
            if expect_version is not None and number != expect_version:
                raise VersionTaken(f"template {name!r}: version {expect_version} is taken; the next is {number}")
            s.add(TemplateVersion(name=name, version=number, files=dict(files), source=source, note=note,
                                  created_at=utcnow()))
            for path, (media_type, content) in (assets or {}).items():
                s.add(TemplateAsset(name=name, version=number, path=path, media_type=media_type, content=content))
        self._current.pop(name, None)
        return Version(name, number, dict(files), source)

    def _library_version_number(self, name: str) -> int | None:
        lib = self._library_version(name)
        return lib.version if lib else None

    def asset(self, name: str, version: int, path: str) -> tuple[str, bytes] | None:
        """An image of an imported version: (media type, bytes)."""
        if self._engine is None:
            return None
        with Session(self._engine) as s:
            row = s.scalar(select(TemplateAsset).where(TemplateAsset.name == name, TemplateAsset.version == version,
                                                       TemplateAsset.path == path))
        return None if row is None else (row.media_type, bytes(row.content))
