"""Placeholder: routes of the inbox API (being written)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
