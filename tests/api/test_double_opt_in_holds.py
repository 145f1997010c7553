"""Double opt-in holds what the member decided: the loyalty core re-sending a profile does not undo a
confirmation; a confirmation link never lifts a block or a suppression recorded after it was asked for; an
unsubscribe from everything withdraws what was waiting for confirmation; a request whose link can no longer
be used is not shown as waiting and is asked again when ticked; a suppression survives unsubscribing and
ticking again; the confirmation sender fails one request whose message cannot be made, not the batch."""

from __future__ import annotations

import hashlib
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update
from sqlmodel import Session

from activities.confirmations import ConfirmationActivities
from app.api.main import create_app
from app.keys import create_key
from app.settings import Settings
from app.worker import channel_registry, signer
from consent import ledger
from members.service import set_program_settings
from storage.db import session_scope
from storage.tables import (
    Confirmation,
    ConsentRecord,
    ConsentState,
    Member,
    Role,
    utcnow,
)
from templates.render import Renderer
from templates.store import LIBRARY
from tests.api.test_double_opt_in import (
    BASE,
    ask,
    link_path,
    run_sender,
    sender,
    states,
)
from tests.api.test_preferences import form_data, parse
from tests.conftest import free_port
from tests.factories import seed_members


@pytest.fixture
def api(engine, tmp_path, smtp_server):
    """As in test_double_opt_in: one member without consent, the app, the loyalty core's key."""
    seed_members(engine, 1, consent_every=10**9)
    settings = Settings(var_dir=tmp_path, temporal_dev_port=free_port(), public_base_url=BASE,
                        smtp_host=smtp_server.host, smtp_port=smtp_server.port, database_url=str(engine.url))
    core = {"Authorization": f"Bearer {create_key(engine=engine, role=Role.core)}"}
    with TestClient(create_app(settings, engine=engine)) as client:
        yield client, core, settings


def member_id(engine) -> int:
    with Session(engine) as s:
        return s.scalar(select(Member.id).where(Member.external_id == "M000001")) or 0


def requests(engine) -> list[tuple[str, list[str]]]:
    with Session(engine) as s:
        return [(c.status, list(c.topics)) for c in s.scalars(select(Confirmation).order_by(Confirmation.id))]


def ledger_rows(engine, action: str) -> int:
    with Session(engine) as s:
        return s.scalar(select(func.count()).select_from(ConsentRecord).where(ConsentRecord.action == action)) or 0


def record(engine, channel: str, topic: str, action: str, source: str = "bounce") -> None:
    with session_scope(engine) as s:
        ledger.record(session=s, program_id=1, acts=[ledger.ConsentAct(
            member_id=member_id(engine), channel=channel, topic=topic, action=action, source=source)])


def preferences_url(client) -> str:
    from consent.tokens import PREFERENCES, PREFERENCES_TTL_S

    engine = client.app.state.engine
    return "/p/" + client.app.state.signer.sign(PREFERENCES, {"m": member_id(engine)}, ttl_s=PREFERENCES_TTL_S)


# --- 3: the loyalty core asking again -----------------------------------------------------------


def test_the_core_sending_the_same_profile_again_keeps_a_confirmed_member_confirmed(api, engine, smtp_server):
    client, core, settings = api
    ask(client, core)
    run_sender(sender(engine, settings))
    assert client.post(link_path(smtp_server)).status_code == 200
    assert states(engine) == {"*": "confirmed", "promotions": "confirmed"}

    ask(client, core)                                   # the nightly sync sends the profile as it was

    assert states(engine) == {"*": "confirmed", "promotions": "confirmed"}
    assert requests(engine) == [("confirmed", ["promotions"])]       # no new confirmation queued
    assert ledger_rows(engine, "requested") == 1


def test_asking_again_while_a_request_waits_queues_nothing_more_and_a_new_topic_only_itself(api, engine,
                                                                                          smtp_server):
    client, core, settings = api
    ask(client, core)
    run_sender(sender(engine, settings))
    ask(client, core)                                   # the link is out, the member has not used it yet
    assert requests(engine) == [("sent", ["promotions"])] and ledger_rows(engine, "requested") == 1
    client.post(link_path(smtp_server))
    ask(client, core, topics=("promotions", "news"))    # a topic the member had not asked for before
    assert requests(engine) == [("confirmed", ["promotions"]), ("pending", ["news"])]
    assert states(engine) == {"*": "confirmed", "promotions": "confirmed", "news": "requested"}


# --- 5: a confirmation never lifts a block recorded after the request ---------------------------


@pytest.mark.parametrize("action, source", [("suppressed", "bounce"), ("revoked", "sms_keyword")])
def test_a_link_used_after_the_channel_was_blocked_confirms_nothing(api, engine, smtp_server, action, source):
    client, core, settings = api
    ask(client, core)
    run_sender(sender(engine, settings))
    record(engine, "email", "*", action, source)       # the address bounced / the member opted out since

    assert client.post(link_path(smtp_server)).status_code == 404

    assert states(engine) == {"*": action, "promotions": "requested"}


# --- 5: a suppression survives unsubscribing and ticking again ----------------------------------


def test_unsubscribing_from_everything_keeps_a_suppression_and_ticking_cannot_lift_it(api, engine):
    client, core, _ = api
    ask(client, core, topics=())
    record(engine, "email", "*", "suppressed")
    url = preferences_url(client)

    page = client.post(url, data=form_data(client.get(url).text, "unsubscribe_all"))
    assert page.status_code == 200
    with Session(engine) as s:
        assert s.get(ConsentState, (member_id(engine), "email", "*")).status == "suppressed"
    before = ledger_rows(engine, "granted")
    html = client.get(url).text
    client.post(url, data={**form_data(html), "c.email.promotions": "1"})     # a tick the page does not offer

    assert states(engine)["*"] == "suppressed" and ledger_rows(engine, "granted") == before


def test_a_channel_revoked_over_a_suppression_stays_read_only(api, engine):
    """Data written before the fix (or an opt-out keyword over a bounce): revoked after suppressed."""
    client, core, _ = api
    ask(client, core, topics=())
    record(engine, "email", "*", "suppressed")
    record(engine, "email", "*", "revoked", "web")
    url = preferences_url(client)
    html = client.get(url).text
    assert "Сообщения на этот адрес не доставляются" in html and "<fieldset disabled>" in html
    client.post(url, data={**form_data(html), "c.email.promotions": "1"})
    assert states(engine) == {"*": "revoked"} and requests(engine) == []


# --- 6: unsubscribing from everything withdraws what waits for confirmation ---------------------


def test_a_link_sent_before_unsubscribing_from_everything_cannot_subscribe_again(api, engine, smtp_server):
    client, core, settings = api
    ask(client, core, topics=("promotions", "news"))
    run_sender(sender(engine, settings))
    url = preferences_url(client)
    client.post(url, data=form_data(client.get(url).text, "unsubscribe_all"))

    assert client.post(link_path(smtp_server)).status_code == 404
    assert states(engine) == {"*": "revoked", "promotions": "revoked", "news": "revoked"}
    with Session(engine) as s:
        assert s.scalar(select(Confirmation.status)) == "expired"


# --- 12a: a request that can no longer be confirmed -----------------------------------------------


def test_an_expired_request_is_not_shown_waiting_and_ticking_asks_again(api, engine):
    client, core, _ = api
    ask(client, core, topics=("news",))
    with session_scope(engine) as s:
        s.execute(update(Confirmation).values(requested_at=utcnow() - timedelta(days=8)))
    url = preferences_url(client)
    html = client.get(url).text
    assert "waiting for confirmation" not in html and "ждёт подтверждения" not in html
    assert parse(html).boxes["c.email.news"] is False

    r = client.post(url, data=form_data(html, tick=("c.email.news",)))

    assert "confirm=email" in str(r.url) and "ждёт подтверждения" in r.text
    assert requests(engine) == [("expired", ["news"]), ("pending", ["news"])]
    assert states(engine) == {"news": "requested"}


# --- 4: the sender fails a request whose message cannot be made -----------------------------------


def test_a_confirmation_that_cannot_be_rendered_fails_alone_and_is_never_left_sending(api, engine, smtp_server,
                                                                                    tmp_path: Path):
    client, core, settings = api
    ask(client, core)                                           # Анна
    r = client.put("/api/v1/members/M000002", params={"program": "shop"}, headers=core, json={
        "locale": "ru", "email": "noname@example.com",          # no first name: the template divides by its length
        "consents": [{"channel": "email", "topic": "promotions", "action": "requested"}]})
    assert r.status_code == 200, r.text
    library = tmp_path / "library"
    shutil.copytree(LIBRARY / "confirm_subscription", library / "confirm_subscription")
    body = library / "confirm_subscription" / "email.ru.txt"
    body.write_text("{{ 12 // (member.first_name or '') | length }}\n" + body.read_text("utf-8"), "utf-8")
    acts = ConfirmationActivities(engine=engine, registry=channel_registry(settings, engine),
                                  renderer=Renderer(library), signer=signer(settings), base_url=BASE,
                                  message_id_domain="clarion.example")

    result = run_sender(acts)

    assert (result.sent, result.failed, result.in_doubt) == (1, 1, 0)
    assert smtp_server.recipients() == ["anna@example.com"]
    with Session(engine) as s:
        by_address = dict(s.execute(select(Confirmation.address, Confirmation.status)).all())
    assert by_address == {"anna@example.com": "sent", "noname@example.com": "failed"}
    again = run_sender(acts)                                    # nothing left sending, nothing turns in_doubt
    assert (again.sent, again.in_doubt) == (0, 0)


# --- 12b: the confirmation page fills the wording in as the preference center does ----------------


def test_braces_in_the_wording_are_text_and_hash_as_on_the_preference_center(api, engine, smtp_server):
    client, core, settings = api
    wording = "Я согласна на письма {program} {каждый день} и {0}"
    set_program_settings(engine=engine, key="shop", data={"consent_wording": {"version": "w9", "text": {
        "ru": wording, "en": wording}}})
    ask(client, core)
    run_sender(sender(engine, settings))
    path = link_path(smtp_server)

    page = client.get(path)
    assert page.status_code == 200 and "Я согласна на письма Shop &amp; Co {каждый день} и {0}" in page.text
    assert client.post(path).status_code == 200

    shown = wording.replace("{program}", "Shop & Co")
    with Session(engine) as s:
        proof = s.scalars(select(ConsentRecord.text_hash).where(ConsentRecord.action == "confirmed")).all()
    assert set(proof) == {hashlib.sha256(shown.encode()).hexdigest()}
    pref = client.get(preferences_url(client)).text
    assert 'name="text_hash" value="' + hashlib.sha256(shown.encode()).hexdigest() in pref
