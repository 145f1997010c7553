"""The direct-mail hand-over: a step's queued letters become a print-ready PDF batch, and count as sent.

A direct-mail "send" only keeps the letter in ``stored_message`` (channel direct_mail, state pending) and
leaves its delivery ``queued``. :meth:`DirectMailActivities.hand_over` makes the batch:

1. claim (one transaction, the campaign row locked so hand-overs of one campaign take turns): a batch left
   unfinished by an earlier attempt is taken up again as it is; otherwise up to ``part_size`` letters of the
   step (and wave) not in any batch yet are given the next free batch name (``stored_message.batch`` set,
   state still pending). The name is the file's stem: ``<occurrence>-<step>``, then ``-2``, ``-3`` ... for
   further parts or later hand-overs of the same wave (``<YYYY-MM-DD>-<step>`` when the letters of every
   occurrence go together: triggered campaigns, whose occurrence is an event id);
2. render the claimed letters, in member order, with :func:`channels.direct_mail.render_batch` (the
   program's ``DirectMailAccount`` sender lines and paper, when it has one) and write the PDF and a JSON
   manifest beside it (delivery id → first page and pages, counts, sha256 of the PDF, created time), each
   atomically (temp file, fsync, ``os.replace``, fsync of the folder), under
   ``out_dir/<program key>/<campaign key>/<batch>.pdf``. Folder and file names carry keys and the wave only,
   never member data;
3. commit (one transaction): those deliveries ``queued`` → ``sent`` (forward only) and their stored
   messages pending → ``done``.

Idempotent: the letters of a batch are fixed in the database before its file exists, so a retry after a
crash anywhere finds the same batch with the same letters; when its manifest and PDF are already complete
(the crash came between writing them and the commit) they are kept byte for byte, else they are written
again under the same name. No letter is ever in two batches, none is lost, and a hand-over with nothing
queued returns ``letters=0`` and writes nothing. Files are written by one hand-over at a time per campaign
folder (a lock on the folder), so an abandoned attempt still rendering cannot interleave its files with a
retry's. Several worker hosts need ``out_dir`` on storage they share (a retry on another host would write
the same batch, same name and letters, to its own disk).

Size: WeasyPrint takes ~12-18 ms a letter and holds every laid-out page until the PDF is written (~230 MB for
1,000), so a batch has at most ``part_size`` (1,000) letters; a wave with more becomes numbered parts, one per
call (``more`` says another part is waiting). The activity heartbeats while a part renders.
"""

from __future__ import annotations

import asyncio
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, func, select, update
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio import activity
from temporalio.exceptions import ApplicationError

from channels.accounts import AccountError, DirectMailAccount, parse_account
from storage.db import session_scope
from storage.tables import (
    Campaign,
    ChannelAccount,
    ChannelName,
    Delivery,
    DeliveryStatus,
    Program,
    StoredMessage,
    utcnow,
)
from workflows.contracts import HandOver, HandOverResult

PART_SIZE = 1000           # letters per batch PDF: ~15 s to render, ~230 MB while it renders
HEARTBEAT_EVERY_S = 5.0
PENDING, DONE = "pending", "done"
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")

if TYPE_CHECKING:   # WeasyPrint loads in ~0.6 s and tens of MB: only when letters are rendered
    from channels.direct_mail import Letter, MailBatch


class CampaignNotFound(LookupError):
    pass


class UnprintableBatch(ValueError):
    """The batch cannot be printed as configured (paper size, an address that does not fit the window, a
    program account that is not valid): retrying does not help, fixing the data does."""


@dataclass(frozen=True)
class _Claim:
    name: str
    program_key: str
    campaign_key: str
    letters: list[Letter]


def _safe(part: str) -> str:
    """A file-name part: keys and waves are slugs already; anything else is replaced, never a path."""
    return _UNSAFE.sub("_", part).lstrip(".") or "_"


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextmanager
def _folder_lock(folder: Path) -> Iterator[None]:
    """One writer at a time in a campaign's folder (on this host): a retry that starts while an abandoned
    attempt still renders the same batch waits for it, then finds its files complete."""
    folder.mkdir(parents=True, exist_ok=True)
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def read_manifest(path: Path) -> dict[str, Any] | None:
    """The manifest at ``path`` (``<batch>.json``), or None when it is missing or not readable."""
    try:
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


class DirectMailActivities:
    def __init__(self, *, engine: Engine, out_dir: Path, part_size: int = PART_SIZE) -> None:
        self._engine = engine
        self.out_dir = Path(out_dir)
        self._part_size = part_size

    @activity.defn(name="hand_over_letters")
    async def hand_over_letters(self, inp: HandOver) -> HandOverResult:
        done = asyncio.Event()

        async def beat() -> None:
            while not done.is_set():
                activity.heartbeat()
                try:
                    await asyncio.wait_for(done.wait(), HEARTBEAT_EVERY_S)
                except TimeoutError:
                    pass

        ticker = asyncio.create_task(beat())
        try:
            return await asyncio.to_thread(self.hand_over, inp)
        except CampaignNotFound as exc:
            raise ApplicationError(str(exc), type="CampaignNotFound", non_retryable=True) from exc
        except UnprintableBatch as exc:
            raise ApplicationError(str(exc), type="UnprintableBatch", non_retryable=True) from exc
        finally:
            done.set()
            await ticker

    # --- the hand-over, synchronous (the activity runs it in a thread; the CLI calls it directly) ---

    def hand_over(self, inp: HandOver) -> HandOverResult:
        """Hand over one batch (at most ``part_size`` letters) of the step's queued letters."""
        claim = self._claim(inp)
        if claim is None:
            return HandOverResult(letters=0, pages=0, batch=None, path=None,
                                  handed_over=self._handed_over(inp))
        folder = self.out_dir / _safe(claim.program_key) / _safe(claim.campaign_key)
        pdf_path, manifest_path = folder / f"{claim.name}.pdf", folder / f"{claim.name}.json"
        with _folder_lock(folder):
            manifest = self._finished_manifest(claim, pdf_path, manifest_path) \
                or self._write(inp, claim, pdf_path, manifest_path)
        self._before_commit(claim.name, pdf_path)
        self._commit(inp, claim, manifest)
        return HandOverResult(letters=manifest["letters"], pages=manifest["pages"], batch=claim.name,
                              path=str(pdf_path), more=self._left(inp) > 0, handed_over=self._handed_over(inp))

    def _before_commit(self, batch: str, path: Path) -> None:
        """Called once the batch's files are written, before the commit (a seam for fault-injection tests)."""

    # --- 1. claim --------------------------------------------------------------------------------

    def _scope(self, inp: HandOver) -> list[ColumnElement[bool]]:
        """The letters of the step (and wave) still queued: their stored message joined to the delivery."""
        where = [StoredMessage.campaign_id == inp.campaign_id, StoredMessage.channel == ChannelName.direct_mail,
                 StoredMessage.state == PENDING, Delivery.step == inp.step,
                 Delivery.status == DeliveryStatus.queued]
        if inp.occurrence is not None:
            where.append(Delivery.occurrence == inp.occurrence)
        return where  # type: ignore[return-value]

    def _claim(self, inp: HandOver) -> _Claim | None:
        join = (Delivery, Delivery.id == StoredMessage.delivery_id)
        with session_scope(self._engine) as s:
            # hand-overs of one campaign take turns (a worker and the CLI may run one at once)
            s.execute(update(Campaign).where(Campaign.id == inp.campaign_id)  # type: ignore[arg-type]
                      .values(budget_spent=Campaign.budget_spent))
            keys = s.execute(select(Program.key, Campaign.key).join(Program, Program.id == Campaign.program_id)
                             .where(Campaign.id == inp.campaign_id)).first()
            if keys is None:
                raise CampaignNotFound(f"campaign {inp.campaign_id} not found")
            name = s.scalar(select(StoredMessage.batch).join(*join)
                            .where(*self._scope(inp), StoredMessage.batch.is_not(None))  # type: ignore[union-attr]
                            .order_by(StoredMessage.id).limit(1))
            if name is None:  # nothing unfinished: the next letters get the next free name
                ids = list(s.scalars(select(StoredMessage.id).join(*join)
                                     .where(*self._scope(inp), StoredMessage.batch.is_(None))  # type: ignore[union-attr]
                                     .order_by(Delivery.member_id, Delivery.id).limit(self._part_size)))
                if not ids:
                    return None
                name = self._next_name(s, inp, keys[0], keys[1])
                s.execute(update(StoredMessage).where(StoredMessage.id.in_(ids),  # type: ignore[union-attr]
                                                      StoredMessage.batch.is_(None))  # type: ignore[union-attr]
                          .values(batch=name, updated_at=utcnow()))
            rows = s.execute(
                select(StoredMessage.delivery_id, StoredMessage.data, StoredMessage.body, StoredMessage.title,
                       StoredMessage.locale, Delivery.locale.label("delivery_locale"))  # type: ignore[attr-defined]
                .join(*join).where(*self._scope(inp), StoredMessage.batch == name)
                .order_by(Delivery.member_id, Delivery.id)).all()
        from channels.direct_mail import Letter

        letters = [Letter(delivery_id=r.delivery_id, address=list((r.data or {}).get("address") or []),
                          html=r.body, locale=r.locale or r.delivery_locale or "und", title=r.title)
                   for r in rows]
        return _Claim(name=name, program_key=keys[0], campaign_key=keys[1], letters=letters)

    def _next_name(self, s: Session, inp: HandOver, program_key: str, campaign_key: str) -> str:
        label = inp.occurrence if inp.occurrence is not None else \
            (datetime.fromisoformat(inp.now) if inp.now else utcnow()).astimezone(UTC).strftime("%Y-%m-%d")
        base = f"{_safe(label)}-{_safe(inp.step)}"
        taken = set(s.scalars(select(StoredMessage.batch).distinct().where(
            StoredMessage.campaign_id == inp.campaign_id, StoredMessage.batch.is_not(None))))  # type: ignore[union-attr]
        folder = self.out_dir / _safe(program_key) / _safe(campaign_key)
        n = 1
        while True:
            name = base if n == 1 else f"{base}-{n}"
            # a file of that name is never overwritten, even one the database does not know (a restored backup)
            if name not in taken and not (folder / f"{name}.pdf").exists() \
                    and not (folder / f"{name}.json").exists():
                return name
            n += 1

    # --- 2. the files ------------------------------------------------------------------------------

    def _finished_manifest(self, claim: _Claim, pdf_path: Path, manifest_path: Path) -> dict[str, Any] | None:
        """The manifest of an earlier attempt when it and its PDF are complete and hold exactly these letters."""
        manifest = read_manifest(manifest_path)
        if manifest is None or [d.get("delivery_id") for d in manifest.get("deliveries", [])] != \
                [letter.delivery_id for letter in claim.letters]:
            return None
        try:
            digest = hashlib.sha256(pdf_path.read_bytes()).hexdigest()
        except OSError:
            return None
        return manifest if digest == manifest.get("sha256") else None

    def _write(self, inp: HandOver, claim: _Claim, pdf_path: Path, manifest_path: Path) -> dict[str, Any]:
        from channels.direct_mail import render_batch

        sender, paper = self._account(claim)
        try:
            batch: MailBatch = render_batch(claim.letters, paper=paper, sender=sender)
        except ValueError as exc:
            raise UnprintableBatch(f"{claim.program_key}/{claim.campaign_key} batch {claim.name}: {exc}") from exc
        manifest = {
            "batch": claim.name, "file": pdf_path.name, "program": claim.program_key,
            "campaign": claim.campaign_key, "campaign_id": inp.campaign_id, "step": inp.step,
            "occurrence": inp.occurrence, "paper": paper, "letters": len(batch.letters), "pages": batch.pages,
            "sha256": hashlib.sha256(batch.pdf).hexdigest(), "created_at": utcnow().isoformat(),
            "deliveries": [{"delivery_id": lp.delivery_id, "first_page": lp.first_page, "pages": lp.pages}
                           for lp in batch.letters],
        }
        _write_atomically(pdf_path, batch.pdf)      # the PDF first: a manifest always describes a whole file
        _write_atomically(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        return manifest

    def _account(self, claim: _Claim) -> tuple[list[str], str]:
        """The program's sender lines and paper (its direct_mail account), else no sender line and A4."""
        with Session(self._engine) as s:
            row = s.execute(select(ChannelAccount.provider, ChannelAccount.config)
                            .join(Program, Program.id == ChannelAccount.program_id)
                            .where(Program.key == claim.program_key,
                                   ChannelAccount.channel == ChannelName.direct_mail)).first()
        if row is None:
            return [], "A4"
        try:
            account = parse_account(ChannelName.direct_mail, row.provider, row.config or {})
        except AccountError as exc:
            raise UnprintableBatch(f"{claim.program_key}: the direct_mail account is not valid: {exc}") from exc
        assert isinstance(account, DirectMailAccount)
        return list(account.sender), account.paper

    # --- 3. commit -----------------------------------------------------------------------------------

    def _commit(self, inp: HandOver, claim: _Claim, manifest: dict[str, Any]) -> None:
        ids = [d["delivery_id"] for d in manifest["deliveries"]]
        now = utcnow()
        with session_scope(self._engine) as s:
            s.execute(update(Delivery).where(Delivery.id.in_(ids),  # type: ignore[union-attr]
                                             Delivery.status == DeliveryStatus.queued)
                      .values(status=DeliveryStatus.sent, updated_at=now))
            s.execute(update(StoredMessage).where(StoredMessage.campaign_id == inp.campaign_id,
                                                  StoredMessage.batch == claim.name,
                                                  StoredMessage.delivery_id.in_(ids),  # type: ignore[attr-defined]
                                                  StoredMessage.state == PENDING)
                      .values(state=DONE, updated_at=now))

    # --- figures -------------------------------------------------------------------------------------

    def _left(self, inp: HandOver) -> int:
        with Session(self._engine) as s:
            return s.scalar(select(func.count()).select_from(StoredMessage)
                            .join(Delivery, Delivery.id == StoredMessage.delivery_id).where(*self._scope(inp))) or 0

    def _handed_over(self, inp: HandOver) -> int:
        """Letters of the step (and wave) handed over so far, by any hand-over (the workflow, the CLI)."""
        where = [StoredMessage.campaign_id == inp.campaign_id, StoredMessage.channel == ChannelName.direct_mail,
                 StoredMessage.state == DONE, StoredMessage.batch.is_not(None), Delivery.step == inp.step]  # type: ignore[union-attr]
        if inp.occurrence is not None:
            where.append(Delivery.occurrence == inp.occurrence)
        with Session(self._engine) as s:
            return s.scalar(select(func.count()).select_from(StoredMessage)
                            .join(Delivery, Delivery.id == StoredMessage.delivery_id).where(*where)) or 0

    def batches(self, campaign_id: int) -> list[dict[str, Any]]:
        """The campaign's batches, oldest first: name, state (handed_over / unfinished), letters, and what its
        manifest says (file, pages, created_at) when the file is there."""
        with Session(self._engine) as s:
            keys = s.execute(select(Program.key, Campaign.key).join(Program, Program.id == Campaign.program_id)
                             .where(Campaign.id == campaign_id)).first()
            if keys is None:
                raise CampaignNotFound(f"campaign {campaign_id} not found")
            rows = s.execute(select(StoredMessage.batch, StoredMessage.state, func.count(), func.min(StoredMessage.id))
                             .where(StoredMessage.campaign_id == campaign_id,
                                    StoredMessage.batch.is_not(None))  # type: ignore[union-attr]
                             .group_by(StoredMessage.batch, StoredMessage.state)).all()
        folder = self.out_dir / _safe(keys[0]) / _safe(keys[1])
        found: dict[str, dict[str, Any]] = {}
        for name, state, n, first in rows:
            b = found.setdefault(name, {"batch": name, "letters": 0, "unfinished": 0, "first": first})
            b["letters"] += n
            b["first"] = min(b["first"], first)
            if state != DONE:
                b["unfinished"] += n
        out = []
        for b in sorted(found.values(), key=lambda b: b["first"]):
            manifest = read_manifest(folder / f"{b['batch']}.json") or {}
            path = folder / f"{b['batch']}.pdf"
            out.append({"batch": b["batch"], "state": "unfinished" if b["unfinished"] else "handed_over",
                        "letters": b["letters"], "pages": manifest.get("pages"),
                        "created_at": manifest.get("created_at"), "path": str(path) if path.exists() else None})
        return out


def hand_over_all(acts: DirectMailActivities, inp: HandOver,
                  progress: Callable[[HandOverResult], None] | None = None) -> list[HandOverResult]:
    """Hand over every queued letter of ``inp``'s scope, one batch after another (the CLI's loop)."""
    results = []
    while True:
        result = acts.hand_over(inp)
        if result.letters:
            results.append(result)
            if progress:
                progress(result)
        if not result.more:
            return results
