"""No member's email address, phone number or name reaches the logs, at DEBUG, in the JSON format an
operator ships: a small campaign over SMS (the real twilio library to a fake Twilio on 127.0.0.1) and
email (aiosmtplib to a fake SMTP server) on the time-skipping server, launched as the API and CLI launch
it, with a fallback, a refused address and a member without consent; nor in what Temporal keeps of it:
the id, memo, search attributes and history of every workflow execution the campaign started."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine
from sqlmodel import Session
from temporalio.api.common.v1 import Payload
from temporalio.api.workflow.v1 import WorkflowExecutionInfo
from temporalio.api.workflowservice.v1 import (
    ListClosedWorkflowExecutionsRequest,
    ListOpenWorkflowExecutionsRequest,
)
from temporalio.client import Client
from temporalio.common import (
    SearchAttributeKey,
    SearchAttributePair,
    TypedSearchAttributes,
)

from app.campaigns import launch
from app.observability import QUIET, JsonFormatter, configure_logging
from app.settings import Settings
from app.worker import stored_renderer
from campaigns.spec import parse_spec
from members.profile import ConsentGrant, MemberIn
from members.service import ensure_program, upsert_members
from storage.tables import Campaign
from tests.channels.fake_twilio import FakeTwilio, running_fake_twilio
from tests.factories import campaign_spec
from tests.workflows.conftest import by_member, deliveries, set_program_settings
from tests.workflows.test_channels import NO_QUIET, use_twilio

pytestmark = pytest.mark.asyncio(loop_scope="session")

MEMBERS = {   # external id → what must never be logged
    "P1": ("Zebulon", "Quillfeather", "zebulon.quillfeather@privacy.example", "+14155550181"),
    "P2": ("Ottilie", "Marchbanks", "ottilie.marchbanks@privacy.example", "+14155550182"),  # SMS refused
    "P3": ("Perpetua", "Vandersloot", "perpetua.vandersloot@privacy.example", None),        # email refused
    "P4": ("Florizel", "Abernethy", "florizel.abernethy@privacy.example", "+14155550184"),  # no consent
}


def campaign_id(engine: Engine, key: str) -> int:
    with Session(engine) as s:
        return s.scalar(select(Campaign.id).where(Campaign.key == key)) or 0


def needles() -> list[str]:
    out = []
    for first, last, email, phone in MEMBERS.values():
        out += [first, last, email, email.split("@")[0]]
        if phone:
            out += [phone, phone[2:], phone[-7:]]     # E.164, national, subscriber number
    return [n.lower() for n in out]


class _Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def app_logs(tmp_path: Path) -> Iterator[list[logging.LogRecord]]:
    """The process's logging as `clarion worker` sets it with CLARION_LOG_FORMAT=json, CLARION_LOG_LEVEL=DEBUG,
    and every record that reaches its handlers; put back afterwards."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level, {n: logging.getLogger(n).level for n in QUIET})
    configure_logging(Settings(var_dir=tmp_path, log_format="json", log_level="DEBUG"))
    ours = list(root.handlers)
    keep = _Keep()
    root.addHandler(keep)
    yield keep.records
    for h in [*ours, keep]:
        root.removeHandler(h)
    for h in saved[0]:
        if not type(h).__module__.startswith("_pytest") and h not in root.handlers:
            root.addHandler(h)
    root.setLevel(saved[1])
    for name, level in saved[2].items():
        logging.getLogger(name).setLevel(level)


async def executions(client: Client) -> dict[tuple[str, str], WorkflowExecutionInfo]:
    """Every workflow execution of the namespace, open or closed (the time-skipping server answers these two
    lists, not ListWorkflowExecutions, and leaves their task queue empty)."""
    out = {}
    for request, call in ((ListOpenWorkflowExecutionsRequest, client.workflow_service.list_open_workflow_executions),
                          (ListClosedWorkflowExecutionsRequest, client.workflow_service.list_closed_workflow_executions)):
        token = b""
        while True:
            page = await call(request(namespace=client.namespace, maximum_page_size=1000, next_page_token=token))
            out.update({(e.execution.workflow_id, e.execution.run_id): e for e in page.executions})
            token = page.next_page_token
            if not token:
                break
    return out


def _payloads_text(payloads: Any) -> str:
    return " ".join(p.data.decode("utf-8", "replace") for p in payloads.values() if isinstance(p, Payload))


async def personal_data_in(client: Client, workflow_id: str, run_id: str) -> list[tuple[str, str]]:
    """(where, what) for each seeded name, address or number in the execution's id, memo, search
    attributes or history (every payload: inputs, results, signals, failures, as stored)."""
    handle = client.get_workflow_handle(workflow_id, run_id=run_id)
    info = (await handle.describe()).raw_description.workflow_execution_info
    history = await handle.fetch_history()
    places = {
        "workflow id": workflow_id,
        "memo": _payloads_text(info.memo.fields),
        "search attributes": _payloads_text(info.search_attributes.indexed_fields),
        "history": b"".join(e.SerializeToString() for e in history.events).decode("utf-8", "replace"),
    }
    return [(where, n) for where, text in places.items() for n in needles() if n in text.lower()]


@pytest.fixture
def twilio() -> Iterator[FakeTwilio]:
    with running_fake_twilio() as fake:
        yield fake


def seed(engine: Engine) -> int:
    program = ensure_program(engine=engine, key="shop", name="Shop & Co", default_locale="en")
    items = []
    for ext, (first, last, email, phone) in MEMBERS.items():
        consents = [] if ext == "P4" else [ConsentGrant(channel=c, topic="promotions") for c in ("sms", "email")]
        items.append((None, ext, MemberIn(first_name=first, last_name=last, email=email, phone=phone,
                                          locale="en", consents=consents)))
    upsert_members(engine=engine, program_id=program.id or 0, items=items)
    return program.id or 0


async def test_a_campaign_logs_no_address_phone_or_name_at_debug_and_its_workflow_ids_carry_none(
        app_logs: list[logging.LogRecord], workers, engine: Engine, twilio: FakeTwilio, smtp_server: Any,
        tmp_path: Path) -> None:
    program = seed(engine)
    set_program_settings(engine, program, NO_QUIET)
    use_twilio(engine, twilio)
    twilio.then(status=400, code=21211)                    # the first SMS: an invalid number → email instead
    smtp_server.refuse["perpetua.vandersloot@privacy.example"] = 550
    spec = parse_spec(campaign_spec(key="privacy-check", channels=["sms", "email"], template="weekend_offer"))
    async with workers(engine=engine) as rig:
        before = set(await executions(rig.client))
        settings = Settings(var_dir=tmp_path, temporal_task_queue=rig.task_queue, database_url=str(engine.url))
        view = await launch(engine=engine, client=rig.client, settings=settings, spec=spec,
                            renderer=stored_renderer(engine, settings))
        await rig.finish(rig.client.get_workflow_handle(view.workflow_id))
        started = [key for key in await executions(rig.client) if key not in before]
        in_temporal = {key: await personal_data_in(rig.client, *key) for key in started}

    rows = deliveries(engine, campaign_id(engine, "privacy-check"))
    statuses = sorted((r.channel, r.status) for r in by_member(rows).values())
    assert statuses == [("email", "failed"), ("email", "sent"), ("sms", "sent"), ("sms", "suppressed")], statuses
    assert len(twilio.requests) == 2 and len(smtp_server.recipients()) == 1

    assert app_logs, "nothing was logged: the capture is not wired"
    fmt = JsonFormatter()
    leaks = []
    workflow_ids = {view.workflow_id}
    for record in app_logs:
        line = fmt.format(record)
        json.loads(line)
        text = f"{line} {record.args!r}".lower()
        leaks += [(record.name, n, line[:300]) for n in needles() if n in text]
        for key in ("temporal_workflow", "temporal_activity"):
            info = getattr(record, key, None)
            if isinstance(info, dict) and info.get("workflow_id"):
                workflow_ids.add(info["workflow_id"])
    assert not leaks, leaks[:5]
    assert not [w for w in workflow_ids if any(n in w.lower() for n in needles())], workflow_ids
    assert view.workflow_id in {wid for wid, _ in started}, started
    assert not {key: found for key, found in in_temporal.items() if found}, in_temporal


async def test_the_check_finds_personal_data_in_a_workflow_id_memo_search_attribute_and_history(
        spent_time_skipping_env: Any) -> None:
    """The scan above is not blind: an execution that does carry a member's data is caught in each place."""
    client = spent_time_skipping_env.client
    first, _, email, phone = MEMBERS["P1"]
    handle = await client.start_workflow("NoSuchWorkflow", {"to": phone}, id=f"leak/{email}",
                                         task_queue="tq-nobody-polls", memo={"name": first},
                                         search_attributes=TypedSearchAttributes([SearchAttributePair(
                                             SearchAttributeKey.for_keyword("CustomKeywordField"), email)]))
    try:
        found = set(await personal_data_in(client, handle.id, handle.result_run_id or ""))
    finally:
        await handle.terminate()
    assert {("workflow id", email.lower()), ("memo", first.lower()), ("search attributes", email.lower()),
            ("history", phone)} <= found, found
