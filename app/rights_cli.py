"""Placeholder: `clarion members export|erase` (being written)."""

from __future__ import annotations

import typer


def register(members_app: typer.Typer) -> None:
    """Add the member-rights commands to `clarion members`."""
