"""`clarion templates import NAME FILE.zip [--note TEXT] [--dry-run]`: an agency's zip becomes the next version
of a template, or nothing is stored and every problem is listed by file (templates.importer)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from app.settings import Settings
from templates.importer import MAX_ZIP_BYTES, ImportRaced, ImportRefused, import_zip

out = Console()
err = Console(stderr=True)


def register(templates_app: typer.Typer) -> None:
    """Add ``import`` to the ``clarion templates`` group (created by app/templates_cli.py)."""

    @templates_app.command("import")
    def import_(name: Annotated[str, typer.Argument(help="the template's name (a-z, 0-9, _ and -)")],
                file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, readable=True,
                                                     help="the agency's zip")],
                note: Annotated[str | None, typer.Option(help="kept with the version, e.g. 'agency drop 12/2026'")
                                ] = None,
                dry_run: Annotated[bool, typer.Option("--dry-run", help="check and report, store nothing")] = False,
                ) -> None:
        """Import an agency's zip as the next version of a template.

        The zip is checked whole (paths, sizes, images, locales, every body rendered with a sample member)
        before anything is stored; images are served at CLARION_PUBLIC_BASE_URL/assets/NAME/VERSION/images/...
        Exit 2 when the zip is refused (nothing stored)."""
        from app.worker import stored_renderer
        from storage.db import make_engine

        with file.open("rb") as f:
            data = f.read(MAX_ZIP_BYTES + 1)
        settings = Settings()
        engine = make_engine(settings.db_url)
        try:
            imported = import_zip(store=stored_renderer(engine).store, name=name, data=data,
                                  base_url=settings.base_url, note=note, dry_run=dry_run)
        except ImportRefused as exc:
            err.print(f"[red]refused:[/] {file.name}: {len(exc.errors)} problem(s); nothing was stored")
            for p in exc.problems:
                colour = "red" if p.severity == "error" else "yellow"
                err.print(f"  [{colour}]{p.severity}[/] {p.file}: {p.message}", highlight=False)
            raise typer.Exit(2) from None
        except ImportRaced as exc:
            err.print(f"[red]error:[/] {exc}")
            raise typer.Exit(1) from None
        finally:
            engine.dispose()
        if imported.stored:
            out.print(f"[green]{name} version {imported.version}[/]: {len(imported.files)} files, "
                      f"{len(imported.images)} images")
        else:
            out.print(f"[green]ok[/] (dry run, nothing stored): {name} would be version {imported.version}, "
                      f"{len(imported.files)} files, {len(imported.images)} images")
        for i in imported.images:
            out.print(f"  {i.url}  ({i.media_type}, {i.size} bytes)", highlight=False)
        for p in imported.warnings:
            out.print(f"  [yellow]warning[/] {p.file}: {p.message}", highlight=False)
