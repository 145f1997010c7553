"""End to end: `clarion up` (real Temporal dev server, worker, API, local mail server) in a subprocess,
driven over HTTP like the loyalty core and a marketer would, checked on what the mail server stored."""

from __future__ import annotations

import mailbox
import os
import signal
import subprocess
import sys
import time
from email import message_from_bytes, policy
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select
from sqlmodel import Session

from storage.db import make_engine
from storage.tables import ConsentRecord, ConsentState, Delivery, Member
from tests.conftest import free_port

pytestmark = pytest.mark.e2e
CLARION = str(Path(sys.executable).with_name("clarion"))


@pytest.fixture(scope="module")
def stack(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    """`clarion up` with its worker in CLARION_UP_WORKERS child processes: the module's UP_WORKERS (default 1)."""
    var = tmp_path_factory.mktemp("var")
    env = {**os.environ, "CLARION_VAR_DIR": str(var), "CLARION_TEMPORAL_DEV_PORT": str(free_port()),
           "CLARION_TEMPORAL_UI_PORT": str(free_port()), "CLARION_API_PORT": str(free_port()),
           "CLARION_SMTP_PORT": str(free_port()), "CLARION_SIGNING_SECRET": "e2e-secret",
           "CLARION_PAGE_SIZE": "25", "CLARION_UP_WORKERS": str(getattr(request.module, "UP_WORKERS", 1))}
    env.pop("CLARION_TEMPORAL_ADDRESS", None)
    env.pop("CLARION_DATABASE_URL", None)
    log = (var / "up.log").open("w")
    proc = subprocess.Popen([CLARION, "up"], env=env, stdout=log, stderr=subprocess.STDOUT, cwd=var)
    base = f"http://127.0.0.1:{env['CLARION_API_PORT']}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if proc.poll() is not None:
            raise AssertionError("clarion up exited:\n" + (var / "up.log").read_text())
        time.sleep(0.2)
    else:
        proc.kill()
        raise AssertionError("clarion up did not answer:\n" + (var / "up.log").read_text())

    def cli(*args: str) -> str:
        return subprocess.run([CLARION, *args], env=env, cwd=var, check=True, capture_output=True,
                              text=True).stdout

    key = cli("keys", "create", "--role", "admin").strip()
    cli("programs", "create", "shop", "--name", "Shop & Co", "--locale", "en")
    yield {"base": base, "var": var, "key": key, "cli": cli, "env": env}
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()
    assert "Clarion is up" in (var / "up.log").read_text()


def _maildir(var: Path) -> list:
    box = mailbox.Maildir(var / "mail", create=False)
    return [message_from_bytes(box.get_bytes(k), policy=policy.default) for k in box.iterkeys()]


def test_broadcast_reaches_each_consenting_member_once_in_their_language(stack):
    h = {"Authorization": f"Bearer {stack['key']}"}
    base = stack["base"]
    members = []
    for i in range(1, 61):
        members.append({
            "external_id": f"E{i:03d}", "first_name": "Анна" if i % 2 else "Alice",
            "locale": "ru" if i % 2 else "en", "email": f"user{i}@e2e.example",
            "time_zone": "Europe/Moscow",
            "consents": [{"channel": "email", "topic": "promotions"}] if i % 4 else [],
        })
    members.append({"external_id": "BAD", "email": "no-at-sign"})
    r = httpx.post(f"{base}/api/v1/members/bulk", params={"program": "shop"}, json={"members": members},
                   headers=h)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["created"] == 60
    assert [(e["index"], e["field"]) for e in body["errors"]] == [(60, "email")]

    spec = {"key": "e2e-week", "name": "E2E week", "program": "shop", "topic": "promotions",
            "channels": ["email"], "audience": {"all": True}, "template": "double_points"}
    r = httpx.post(f"{base}/api/v1/campaigns", json=spec, headers=h)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        status = httpx.get(f"{base}/api/v1/campaigns/e2e-week", params={"program": "shop"}, headers=h).json()
        if status["status"] == "completed":
            break
        time.sleep(0.3)
    assert status["status"] == "completed", status
    assert status["live"] is True and status["total"] == 60
    assert status["counts"]["sent"] == 45 and status["counts"]["suppressed"] == 15, str(status)

    # launching the same spec again is the same (finished) run: nothing is sent twice
    again = httpx.post(f"{base}/api/v1/campaigns", json=spec, headers=h)
    assert again.status_code == 409 and "already ran" in again.json()["message"]

    mails = _maildir(stack["var"])
    to = sorted(str(m["To"]) for m in mails)
    expected = sorted(f"user{i}@e2e.example" for i in range(1, 61) if i % 4)
    assert to == expected  # each consenting member exactly once, nobody else
    by_to = {str(m["To"]): m for m in mails}
    ru, en = by_to["user1@e2e.example"], by_to["user2@e2e.example"]
    assert str(ru["Subject"]) == "Анна, двойные баллы всю неделю в Shop & Co"
    assert str(en["Subject"]) == "Alice, double points all week at Shop & Co"
    assert "двойные баллы" in ru.get_body(("plain",)).get_content()
    assert "Shop &amp; Co" in en.get_body(("html",)).get_content()
    assert en["Message-ID"] and en["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    https_url, mailto = [p.strip(" <>") for p in str(en["List-Unsubscribe"]).split(",")]
    assert https_url.startswith(base + "/u/") and mailto.startswith("mailto:unsubscribe@")

    # GET shows a page and changes nothing; POST (RFC 8058 one-click) revokes the topic
    engine = make_engine(f"sqlite:///{stack['var'] / 'clarion.db'}")
    with Session(engine) as s:
        member_id = s.scalar(select(Member.id).where(Member.external_id == "E002"))
        before = len(list(s.scalars(select(ConsentRecord).where(ConsentRecord.member_id == member_id))))
    page = httpx.get(https_url)
    assert page.status_code == 200 and "<form" in page.text and 'method="post"' in page.text
    with Session(engine) as s:
        assert s.get(ConsentState, (member_id, "email", "promotions")).status == "granted"
    r = httpx.post(https_url, data={"List-Unsubscribe": "One-Click"},
                   headers={"User-Agent": "MailClient/1.0"}, follow_redirects=False)
    assert r.status_code == 200
    with Session(engine) as s:
        state = s.get(ConsentState, (member_id, "email", "promotions"))
        records = list(s.scalars(select(ConsentRecord).where(ConsentRecord.member_id == member_id)))
        deliveries = list(s.scalars(select(Delivery).where(Delivery.member_id == member_id)))
    assert state.status == "revoked"
    assert len(records) == before + 1
    assert (records[-1].action, records[-1].source, records[-1].user_agent) == ("revoked", "unsubscribe",
                                                                                  "MailClient/1.0")
    assert records[-1].campaign_id == deliveries[0].campaign_id
    # tampered token → the same 404 page as any unknown token, nothing recorded
    assert httpx.post(https_url[:-3] + "AAA", data={"List-Unsubscribe": "One-Click"}).status_code == 404

    report = stack["cli"]("report", "e2e-week", "--program", "shop", "--format", "csv")
    import csv
    import io

    rows = {(r["dimension"], r["key"]): r for r in csv.DictReader(io.StringIO(report[report.index("campaign,"):]))}
    total = rows[("total", "all")]
    assert (total["audience"], total["sent"], total["suppressed"], total["failed"], total["in_doubt"],
            total["pending"], total["unsubscribed"]) == ("60", "45", "15", "0", "0", "0", "1")
    assert rows[("channel", "email")]["sent"] == "45"
    engine.dispose()
