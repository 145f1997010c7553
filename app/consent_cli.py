"""Placeholder: `clarion consent ...` (being written)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add `clarion consent` to the CLI."""
