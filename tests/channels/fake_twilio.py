"""A fake of Twilio's REST API (the Messages resource) on 127.0.0.1: a real HTTP server on a free port
that records every request and answers like Twilio, or with a scripted error, or not at all."""

from __future__ import annotations

import base64
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from urllib.parse import parse_qs

from tests.channels.fake_http import QuietHandler, serving


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    form: dict[str, str]

    @property
    def basic_auth(self) -> tuple[str, str]:
        scheme, _, value = self.headers.get("authorization", "").partition(" ")
        assert scheme == "Basic", scheme
        user, _, password = base64.b64decode(value).decode().partition(":")
        return user, password


@dataclass
class Scripted:
    """The answer to the next request: an HTTP error in Twilio's shape, a hang-up, or a slow answer."""

    status: int = 201
    code: int | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_up: bool = False       # read the request, then close the connection without answering
    delay: float = 0.0          # sleep before answering


@dataclass
class FakeTwilio:
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    times: list[float] = field(default_factory=list)      # time.time() of each request, in order
    script: list[Scripted] = field(default_factory=list)
    script_to: dict[str, list[Scripted]] = field(default_factory=dict)   # per recipient (the form's To)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def then(self, **kwargs: object) -> None:
        """Script the answer to the next request that has none scripted yet."""
        with self.lock:
            self.script.append(Scripted(**kwargs))  # type: ignore[arg-type]

    def then_to(self, to: str, **kwargs: object) -> None:
        """Script the answer to the next request to this number (whatever order concurrent sends arrive in)."""
        with self.lock:
            self.script_to.setdefault(to, []).append(Scripted(**kwargs))  # type: ignore[arg-type]

    def _next(self, to: str | None = None) -> Scripted:
        with self.lock:
            mine = self.script_to.get(to or "")
            if mine:
                return mine.pop(0)
            return self.script.pop(0) if self.script else Scripted()


def _handler(fake: FakeTwilio) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length).decode()
            form = {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}
            with fake.lock:
                fake.times.append(time.time())
                fake.requests.append(Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                              form))
            answer = fake._next(form.get("To"))
            if answer.delay:
                time.sleep(answer.delay)
            if answer.hang_up:
                self.close_connection = True
                return
            parts = self.path.strip("/").split("/")
            if len(parts) != 4 or parts[0] != "2010-04-01" or parts[1] != "Accounts" or parts[3] != "Messages.json":
                self._json(404, _error(404, 20404, "The requested resource was not found"), {})
                return
            if answer.status >= 400:
                self._json(answer.status, _error(answer.status, answer.code or answer.status, "scripted error"),
                           answer.headers)
                return
            sender = {"from": form.get("From"), "messaging_service_sid": form.get("MessagingServiceSid")}
            self._json(answer.status, {
                "sid": "SM" + uuid.uuid4().hex, "account_sid": parts[2], "to": form.get("To"),
                "body": form.get("Body"), "status": "queued", "num_segments": "1", **sender,
            }, answer.headers)

        def _json(self, status: int, payload: dict, headers: dict[str, str]) -> None:
            self.send_json(status, payload, headers)

    return Handler


def _error(status: int, code: int, message: str) -> dict:
    return {"code": code, "message": message, "more_info": f"https://www.twilio.com/docs/errors/{code}",
            "status": status}


@contextmanager
def running_fake_twilio() -> Iterator[FakeTwilio]:
    fake = FakeTwilio()
    with serving(_handler(fake)) as fake.port:
        yield fake
