"""A preview hands out no working member link: the preference-center and unsubscribe links in it carry the
word PREVIEW instead of a sealed token (a forwarded preview must not open the member's preferences for 400
days, nor unsubscribe them), and the email HTML opened in the browser is sandboxed."""

from __future__ import annotations

import re

import pytest
from sqlalchemy.engine import Engine

from activities.messages import MessageBuilder
from app.previews import preview
from app.settings import Settings
from app.worker import signer
from consent.tokens import CONFIRM_EMAIL, PREFERENCES, UNSUBSCRIBE, BadToken
from templates.render import Renderer
from tests.api.test_templates_api import api  # noqa: F401 - the fixture

LINK = re.compile(r"/(?:p|u|c)/([A-Za-z0-9_\-]+)")


def tokens(text: str) -> set[str]:
    return set(LINK.findall(text))


def assert_inert(text: str, real: object) -> None:
    found = tokens(text)
    assert found == {"PREVIEW"}, found
    for purpose in (PREFERENCES, UNSUBSCRIBE, CONFIRM_EMAIL):
        with pytest.raises(BadToken):
            real.verify(purpose, "PREVIEW")  # type: ignore[attr-defined]


@pytest.mark.parametrize("template", ["double_points", "weekend_offer"])
def test_an_email_preview_has_only_inert_member_links(api, template):  # noqa: F811
    client, key = api
    r = client.get(f"/api/v1/templates/{template}/preview", headers=key,
                   params={"program": "shop", "member": "R1", "channel": "email"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert "/p/PREVIEW" in body["text"] and "/u/PREVIEW" in body["text"]
    assert "/p/PREVIEW" in body["html"] and "/u/PREVIEW" in body["html"]
    assert_inert(body["text"] + body["html"], client.app.state.signer)


def test_the_html_preview_is_sandboxed_and_not_sniffed(api):  # noqa: F811
    client, key = api
    r = client.get("/api/v1/templates/double_points/preview", headers=key,
                   params={"program": "shop", "member": "R1", "format": "html"})
    assert r.status_code == 200
    csp = {d.strip().split(" ")[0]: d.strip() for d in r.headers["content-security-policy"].split(";")}
    assert csp["sandbox"] == "sandbox"
    assert csp["form-action"] == "form-action 'none'"
    assert csp["base-uri"] == "base-uri 'none'"
    assert csp["frame-ancestors"] == "frame-ancestors 'none'"
    assert csp["default-src"] == "default-src 'none'"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["cache-control"] == "no-store"
    assert_inert(r.text, client.app.state.signer)


def test_a_preview_made_with_a_real_signer_still_has_inert_links(api, engine: Engine):  # noqa: F811
    """The CLI hands preview() a builder with the deployment's signer: the links stay inert all the same."""
    settings = Settings()
    real = signer(settings)
    builder = MessageBuilder(renderer=Renderer(), signer=real, base_url="https://clarion.example",
                             unsubscribe_mailto="unsubscribe@clarion.example")
    p = preview(engine=engine, renderer=Renderer(), builder=builder, program="shop", template="weekend_offer",
                channel="email", member="R1")
    assert "https://clarion.example/p/PREVIEW" in p.text and "https://clarion.example/u/PREVIEW" in p.text
    assert_inert(p.text + (p.html or ""), real)
    # the builder handed in is left as it was: a send with it still signs real links
    url = builder.preferences_url(7)
    assert real.verify(PREFERENCES, url.rsplit("/", 1)[1])["m"] == 7
