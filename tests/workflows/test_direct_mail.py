"""Direct mail handed over end to end: the REAL BroadcastCampaign and the REAL activities (delivery and the
direct-mail hand-over, registered by ``app.worker.activity_list``) on Temporal's time-skipping server, a real
SQLite file and the batch PDFs WeasyPrint writes, read back with pypdf. Assertions are on what a print shop
would get (the PDF's pages, the manifest) and on the ``delivery`` / ``stored_message`` rows.
"""

from __future__ import annotations

import hashlib
import io
import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from pathlib import Path
from typing import Any

import pytest
import typer
from pypdf import PdfReader
from sqlalchemy import insert, select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.api.enums.v1 import EventType
from temporalio.client import WorkflowHandle
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Replayer, Worker
from typer.testing import CliRunner

from activities.direct_mail import DirectMailActivities, hand_over_all, read_manifest
from app.direct_mail_cli import register
from app.settings import Settings
from app.worker import WORKFLOWS, activity_list, delivery_activities
from members.service import ensure_program
from storage.db import session_scope
from storage.tables import Delivery, Member, StoredMessage, utcnow
from tests.factories import make_campaign
from workflows.broadcast import BroadcastCampaign
from workflows.contracts import BroadcastInput, HandOver, Progress, RunState

pytestmark = pytest.mark.asyncio(loop_scope="session")

KEY = "weekend_letters"


# --- rows ---------------------------------------------------------------------------------------


def address(i: int) -> dict[str, str]:
    return {"line1": f"{i} Harbour Road", "city": "Portsmouth", "postcode": f"PO{i} 1AA", "country": "Utopia"}


def greeting(i: int) -> str:
    """What weekend_offer's letter opens with: member i is Russian when i is even."""
    return f"Name{i}, здравствуйте!" if i % 2 == 0 else f"Dear Name{i},"


def postal_members(engine: Engine, n: int, *, has_address: Callable[[int], bool] = lambda i: True,
                   time_zone: Callable[[int], str | None] = lambda i: None) -> tuple[int, list[int]]:
    """n members with a postal address (no consent: direct mail is an opt-out channel), English and Russian."""
    prog = ensure_program(engine=engine, key="shop", name="Shop & Co", default_locale="en")
    now = utcnow()
    rows = [{"program_id": prog.id, "external_id": f"M{i:06d}", "kind": "individual", "first_name": f"Name{i}",
             "locale": "ru" if i % 2 == 0 else "en", "time_zone": time_zone(i), "attributes": {},
             "postal_address": address(i) if has_address(i) else None, "created_at": now, "updated_at": now}
            for i in range(1, n + 1)]
    with session_scope(engine) as s:
        s.execute(insert(Member.__table__), rows)
        ids = dict(s.execute(select(Member.external_id, Member.id).where(Member.program_id == prog.id)).all())
    return prog.id or 0, [ids[f"M{i:06d}"] for i in range(1, n + 1)]


def letters_campaign(engine: Engine, program_id: int, **over: Any) -> int:
    return make_campaign(engine, program_id, key=KEY, channels=["direct_mail"], template="weekend_offer", **over)


def deliveries(engine: Engine, campaign_id: int) -> list[Delivery]:
    with Session(engine) as s:
        return list(s.scalars(select(Delivery).where(Delivery.campaign_id == campaign_id)
                              .order_by(Delivery.member_id)))


def stored(engine: Engine, campaign_id: int) -> list[StoredMessage]:
    with Session(engine) as s:
        return list(s.scalars(select(StoredMessage).where(StoredMessage.campaign_id == campaign_id)
                              .order_by(StoredMessage.member_id)))


def pages(pdf: Path) -> list[str]:
    return [page.extract_text() for page in PdfReader(io.BytesIO(pdf.read_bytes())).pages]


def folder_of(mail: DirectMailActivities) -> Path:
    return mail.out_dir / "shop" / KEY


def listing(folder: Path) -> dict[str, int]:
    """Every file in the folder with its modification time (temp files included: none may be left)."""
    return {p.name: p.stat().st_mtime_ns for p in sorted(folder.iterdir())} if folder.exists() else {}


# --- the harness ----------------------------------------------------------------------------------


@dataclass
class Rig:
    env: WorkflowEnvironment
    mail: DirectMailActivities
    task_queue: str

    async def start(self, campaign_id: int, **kw: Any) -> WorkflowHandle:
        return await self.env.client.start_workflow(
            BroadcastCampaign.run, BroadcastInput(campaign_id=campaign_id, **kw),
            id=f"bc-{uuid.uuid4().hex}", task_queue=self.task_queue)


@pytest.fixture
def worker(time_skipping_env: WorkflowEnvironment, engine: Engine, tmp_path: Path):
    """``async with worker(cls=..., part_size=...) as rig``: one worker with the activities app.worker wires
    (the direct-mail ones of ``cls``, writing under tmp_path/direct_mail)."""

    @asynccontextmanager
    async def _run(cls: type[DirectMailActivities] = DirectMailActivities,
                   part_size: int | None = None) -> AsyncIterator[Rig]:
        settings = Settings(var_dir=tmp_path, database_url=str(engine.url))
        acts = delivery_activities(settings, engine=engine)
        if cls is not DirectMailActivities or part_size is not None:
            acts.direct_mail = cls(engine=engine, out_dir=tmp_path / "direct_mail",  # type: ignore[attr-defined]
                                   **({"part_size": part_size} if part_size else {}))
        queue = f"tq-{uuid.uuid4().hex}"
        try:
            async with Worker(time_skipping_env.client, task_queue=queue, workflows=WORKFLOWS,
                              activities=activity_list(acts)):
                yield Rig(time_skipping_env, acts.direct_mail, queue)  # type: ignore[attr-defined]
        finally:
            await acts.aclose()

    return _run


# --- a wave handed over -----------------------------------------------------------------------------


async def test_a_wave_of_letters_becomes_one_pdf_in_member_order_and_counts_as_sent(worker, engine: Engine) -> None:
    program, ids = postal_members(engine, 6, has_address=lambda i: i != 4)
    cid = letters_campaign(engine, program)
    async with worker() as rig:
        handle = await rig.start(cid, hand_over=True, page_size=2, concurrency=2)
        result: Progress = await handle.result()
        mail = rig.mail
    history = await handle.fetch_history()
    assert any(e.event_type == EventType.EVENT_TYPE_MARKER_RECORDED for e in history.events)  # the patch
    await Replayer(workflows=WORKFLOWS).replay_workflow(history)                            # deterministic

    assert result.state == RunState.completed
    assert (result.counts.sent, result.counts.queued, result.counts.suppressed) == (5, 0, 1)
    assert result.counts.reasons == {"no_address": 1}
    folder = folder_of(mail)
    assert set(listing(folder)) == {"wave-1-main.pdf", "wave-1-main.json"}   # no temp file left, no member data

    # the print shop's file: a page per letter, in member order, each with its member's address and greeting
    texts = pages(folder / "wave-1-main.pdf")
    who = [i for i in range(1, 7) if i != 4]
    assert len(texts) == len(who)
    for text, i in zip(texts, who, strict=True):
        for line in (f"Name{i}", address(i)["line1"], f"PO{i} 1AA Portsmouth", "Utopia", greeting(i)):
            assert line in text, (i, line, text)
        assert ("WEEKEND500" in text) and (("бонусных баллов" in text) == (i % 2 == 0))

    rows = deliveries(engine, cid)
    assert [(r.member_id, r.status) for r in rows] == [(m, "suppressed" if i == 4 else "sent")
                                                        for i, m in enumerate(ids, start=1)]
    letters = stored(engine, cid)
    assert [(m.member_id, m.state, m.batch) for m in letters] == [(ids[i - 1], "done", "wave-1-main") for i in who]

    manifest = read_manifest(folder / "wave-1-main.json")
    assert manifest is not None
    sent = [r for r in rows if r.status == "sent"]
    assert manifest["deliveries"] == [{"delivery_id": r.id, "first_page": n, "pages": 1}
                                      for n, r in enumerate(sent, start=1)]
    assert (manifest["letters"], manifest["pages"], manifest["batch"], manifest["file"]) == \
        (5, 5, "wave-1-main", "wave-1-main.pdf")
    assert manifest["sha256"] == hashlib.sha256((folder / "wave-1-main.pdf").read_bytes()).hexdigest()
    assert datetime.fromisoformat(manifest["created_at"]).tzinfo is not None
    assert not any(f"Name{i}" in json.dumps(manifest) for i in range(1, 7))

    # again, with nothing queued: nothing written, nothing changed
    before = listing(folder)
    again = mail.hand_over(HandOver(campaign_id=cid))
    assert (again.letters, again.batch, again.path, again.more, again.handed_over) == (0, None, None, False, 5)
    assert listing(folder) == before
    assert [m.state for m in stored(engine, cid)] == ["done"] * 5


class CrashBeforeCommit(DirectMailActivities):
    """The worker dies once: after the batch's files are written, before the database commit."""

    seen: list[tuple[str, str, list[str]]] = []

    def _before_commit(self, batch: str, path: Path) -> None:
        statuses = sorted({d.status for d in deliveries(self._engine, self.campaign_id)})
        self.seen.append((batch, hashlib.sha256(path.read_bytes()).hexdigest(), statuses))
        if len(self.seen) == 1:
            raise RuntimeError("worker lost between the files and the commit")


async def test_a_crash_after_the_pdf_before_the_commit_hands_over_the_same_batch_once(
        worker, engine: Engine) -> None:
    program, ids = postal_members(engine, 4)
    cid = letters_campaign(engine, program)
    CrashBeforeCommit.seen = []
    CrashBeforeCommit.campaign_id = cid  # type: ignore[attr-defined]
    async with worker(cls=CrashBeforeCommit) as rig:
        handle = await rig.start(cid, hand_over=True)
        result: Progress = await handle.result()
        mail = rig.mail

    # attempt 1 wrote the batch and died with the letters still queued; attempt 2 took the same batch up
    (first, digest1, statuses1), (second, digest2, statuses2) = CrashBeforeCommit.seen
    assert first == second == "wave-1-main" and statuses1 == statuses2 == ["queued"]
    folder = folder_of(mail)
    assert set(listing(folder)) == {"wave-1-main.pdf", "wave-1-main.json"}
    assert digest1 == digest2 == hashlib.sha256((folder / "wave-1-main.pdf").read_bytes()).hexdigest()
    manifest = read_manifest(folder / "wave-1-main.json")
    assert manifest is not None
    rows = deliveries(engine, cid)
    assert [d["delivery_id"] for d in manifest["deliveries"]] == [r.id for r in rows]   # each letter once
    assert [d["first_page"] for d in manifest["deliveries"]] == [1, 2, 3, 4]
    assert len(pages(folder / "wave-1-main.pdf")) == 4
    assert {r.status for r in rows} == {"sent"}
    assert {(m.state, m.batch) for m in stored(engine, cid)} == {("done", "wave-1-main")}
    assert (result.counts.sent, result.counts.queued) == (4, 0)


async def test_letters_queued_before_the_end_date_are_still_handed_over(worker, engine: Engine) -> None:
    vlad, kal = "Asia/Vladivostok", "Europe/Kaliningrad"
    program, ids = postal_members(engine, 6, time_zone=lambda i: vlad if i % 2 else kal)
    cid = letters_campaign(engine, program, send_window={"from": "10:00", "to": "12:00"})
    async with worker() as rig:
        day = (await rig.env.get_current_time()).astimezone(UTC).date() + timedelta(days=1)
        start = datetime.combine(day, time(0, 30), UTC)     # Vladivostok in its window, Kaliningrad not
        end = datetime.combine(day, time(6, 0), UTC)        # before Kaliningrad's window opens
        handle = await rig.start(cid, hand_over=True, start_at=start.isoformat(), end_at=end.isoformat())
        result: Progress = await handle.result()
        mail = rig.mail

    assert result.state == RunState.completed
    assert (result.counts.sent, result.counts.queued, result.counts.reasons) == (3, 0, {"campaign_ended": 3})
    texts = pages(folder_of(mail) / "wave-1-main.pdf")
    assert [greeting(i) in t for i, t in zip((1, 3, 5), texts, strict=True)] == [True] * 3
    assert len(texts) == 3


# --- parts, and the hand-over by hand -------------------------------------------------------------------


async def test_large_waves_come_in_numbered_parts_and_the_cli_hands_over_the_rest(
        worker, engine: Engine, tmp_path: Path) -> None:
    program, ids = postal_members(engine, 5)
    cid = letters_campaign(engine, program)
    async with worker() as rig:  # launched without the hand-over (as before it existed): letters stay queued
        result: Progress = await (await rig.start(cid)).result()
    assert (result.counts.sent, result.counts.queued) == (0, 5)
    assert {r.status for r in deliveries(engine, cid)} == {"queued"}

    mail = DirectMailActivities(engine=engine, out_dir=tmp_path / "direct_mail", part_size=2)
    first = mail.hand_over(HandOver(campaign_id=cid))
    assert (first.batch, first.letters, first.more, first.handed_over) == ("wave-1-main", 2, True, 2)
    second = mail.hand_over(HandOver(campaign_id=cid))
    assert (second.batch, second.letters, second.more, second.handed_over) == ("wave-1-main-2", 2, True, 4)

    cli = typer.Typer()
    register(cli)
    env = {"CLARION_VAR_DIR": str(tmp_path), "CLARION_DATABASE_URL": str(engine.url)}
    done = CliRunner().invoke(cli, ["direct-mail", "hand-over", "shop", KEY], env=env)
    assert done.exit_code == 0, done.output
    assert "wave-1-main-3: 1 letter(s), 1 page(s)" in done.output and "1 letter(s) handed over" in done.output
    assert {r.status for r in deliveries(engine, cid)} == {"sent"}

    folder = folder_of(mail)
    order = [(m.member_id, m.batch) for m in stored(engine, cid)]
    assert order == list(zip(ids, ["wave-1-main"] * 2 + ["wave-1-main-2"] * 2 + ["wave-1-main-3"], strict=True))
    assert [len(pages(folder / f"{b}.pdf")) for b in ("wave-1-main", "wave-1-main-2", "wave-1-main-3")] == [2, 2, 1]
    assert pages(folder / "wave-1-main-2.pdf")[0].count(greeting(3)) == 1

    listed = CliRunner().invoke(cli, ["direct-mail", "batches", "shop", KEY], env=env)
    assert listed.exit_code == 0, listed.output
    for name in ("wave-1-main ", "wave-1-main-2", "wave-1-main-3"):
        assert name in listed.output
    assert listed.output.count("handed over") == 3

    nothing = CliRunner().invoke(cli, ["direct-mail", "hand-over", "shop", KEY], env=env)
    assert nothing.exit_code == 0 and "nothing written" in nothing.output
    assert hand_over_all(mail, HandOver(campaign_id=cid, occurrence=None)) == []
    unknown = CliRunner().invoke(cli, ["direct-mail", "batches", "shop", "nope"], env=env)
    assert unknown.exit_code == 1 and "not found" in unknown.output
