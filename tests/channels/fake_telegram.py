"""A fake of the Telegram Bot API on 127.0.0.1: a real HTTP server on a free port that answers
``/bot<token>/sendMessage``, ``getMe`` and ``setWebhook`` like Telegram, records every request (API method,
token, parameters whether they came as a form, JSON or a query string), and can be scripted per request:
an error answer in Telegram's shape, a raw (non-JSON) answer, a hang-up after reading the request, or a
delay longer than the client's timeout."""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.channels.fake_http import QuietHandler, serving
from tests.conftest import free_port

BOT_USER = {"id": 777000111, "is_bot": True, "first_name": "Clarion", "username": "clarion_test_bot",
            "can_join_groups": True, "can_read_all_group_messages": False, "supports_inline_queries": False}


@dataclass
class Recorded:
    api_method: str             # sendMessage, getMe, setWebhook...
    token: str
    http_method: str
    content_type: str
    params: dict[str, Any]      # as sent: form and query values are strings (objects JSON-encoded)
    headers: dict[str, str]

    def json_param(self, name: str) -> Any:
        """A parameter that Telegram reads as JSON (reply_markup, link_preview_options, allowed_updates)."""
        value = self.params[name]
        return json.loads(value) if isinstance(value, str) else value


@dataclass
class Scripted:
    """The answer to the next request."""

    status: int = 200
    description: str | None = None                # Telegram's description of an error
    parameters: dict[str, Any] | None = None      # ResponseParameters: retry_after, migrate_to_chat_id
    raw: bytes | None = None                      # a body that is not Telegram's JSON (a proxy's 502 page)
    result: Any = None                            # a 200 whose body is {"ok": true, "result": result}
    body: dict[str, Any] | None = None            # a 200 with exactly this JSON body
    hang_up: bool = False                         # read the request, then close without answering
    delay: float = 0.0                            # sleep before answering


@dataclass
class FakeTelegram:
    token: str | None = None                      # when set, other tokens get 401 Unauthorized
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)
    script: list[Scripted] = field(default_factory=list)
    script_for: dict[str, list[Scripted]] = field(default_factory=dict)   # per chat_id
    lock: threading.Lock = field(default_factory=threading.Lock)
    message_ids: Iterator[int] = field(default_factory=lambda: itertools.count(101))
    webhook: dict[str, Any] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def base_url(self) -> str:
        """PTB's base_url: the token is appended to it."""
        return f"{self.url}/bot"

    def then(self, **kwargs: Any) -> None:
        """Script the answer to the next request that has none scripted yet."""
        with self.lock:
            self.script.append(Scripted(**kwargs))

    def then_for(self, chat_id: str, **kwargs: Any) -> None:
        """Script the answer to the next request to this chat (whatever order concurrent sends arrive in)."""
        with self.lock:
            self.script_for.setdefault(str(chat_id), []).append(Scripted(**kwargs))

    def fail(self, status: int, description: str, **parameters: Any) -> None:
        """Script an error answer in Telegram's shape."""
        self.then(status=status, description=description, parameters=parameters or None)

    def calls(self, api_method: str) -> list[Recorded]:
        with self.lock:
            return [r for r in self.requests if r.api_method == api_method]

    def _next(self, chat_id: Any = None) -> Scripted:
        with self.lock:
            mine = self.script_for.get(str(chat_id))
            if mine:
                return mine.pop(0)
            return self.script.pop(0) if self.script else Scripted()


def refusing_base_url() -> str:
    """A base_url on a port where nothing listens: every connection is refused."""
    return f"http://127.0.0.1:{free_port()}/bot"


def _params(content_type: str, raw: bytes, query: str) -> dict[str, Any]:
    params: dict[str, Any] = {k: v[0] for k, v in parse_qs(query, keep_blank_values=True).items()}
    if content_type.startswith("application/json") and raw:
        params.update(json.loads(raw))
    elif content_type.startswith("application/x-www-form-urlencoded"):
        params.update({k: v[0] for k, v in parse_qs(raw.decode(), keep_blank_values=True).items()})
    return params


def _handler(fake: FakeTelegram) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_GET(self) -> None:  # noqa: N802
            self._handle()

        def do_POST(self) -> None:  # noqa: N802
            self._handle()

        def _handle(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            url = urlsplit(self.path)
            first, _, api_method = url.path.strip("/").partition("/")
            token = first.removeprefix("bot") if first.startswith("bot") else ""
            content_type = self.headers.get("Content-Type", "")
            params = _params(content_type, raw, url.query)
            with fake.lock:
                fake.requests.append(Recorded(api_method, token, self.command, content_type, params,
                                              {k.lower(): v for k, v in self.headers.items()}))
            answer = fake._next(params.get("chat_id"))
            if answer.delay:
                time.sleep(answer.delay)
            if answer.hang_up:
                self.close_connection = True
                return
            if answer.raw is not None:
                self._send(answer.status, answer.raw, "text/html")
                return
            if answer.status >= 400:
                self._error(answer.status, answer.description, answer.parameters)
                return
            if answer.body is not None:
                self._json(answer.status, answer.body)
                return
            if not first.startswith("bot") or (fake.token is not None and token != fake.token):
                self._error(401, "Unauthorized")
                return
            if answer.result is not None:
                self._json(200, {"ok": True, "result": answer.result})
                return
            if api_method == "getMe":
                self._json(200, {"ok": True, "result": BOT_USER})
            elif api_method == "setWebhook":
                fake.webhook = dict(params)
                self._json(200, {"ok": True, "result": True, "description": "Webhook was set"})
            elif api_method == "sendMessage":
                self._send_message(params)
            else:
                self._error(404, "Not Found")

        def _send_message(self, params: dict[str, Any]) -> None:
            if not params.get("chat_id"):
                self._error(400, "Bad Request: chat_id is empty")
                return
            if not params.get("text"):
                self._error(400, "Bad Request: message text is empty")
                return
            chat_id = int(params["chat_id"])
            chat = ({"id": chat_id, "type": "private", "first_name": "Member"} if chat_id > 0
                    else {"id": chat_id, "type": "supergroup", "title": "A group"})
            message: dict[str, Any] = {"message_id": next(fake.message_ids), "from": BOT_USER, "chat": chat,
                                       "date": int(time.time()), "text": params["text"]}
            if params.get("reply_markup"):
                message["reply_markup"] = json.loads(params["reply_markup"])
            self._json(200, {"ok": True, "result": message})

        def _error(self, status: int, description: str | None, parameters: dict[str, Any] | None = None) -> None:
            payload: dict[str, Any] = {"ok": False, "error_code": status,
                                       "description": description or HTTPStatus(status).phrase}
            if parameters:
                payload["parameters"] = parameters
            self._json(status, payload)

        def _json(self, status: int, payload: dict[str, Any]) -> None:
            self.send_json(status, payload)

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_body(status, body, content_type)

    return Handler


@contextmanager
def running_fake_telegram(token: str | None = None) -> Iterator[FakeTelegram]:
    fake = FakeTelegram(token=token)
    with serving(_handler(fake)) as fake.port:
        yield fake
