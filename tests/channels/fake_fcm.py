"""A fake of FCM's HTTP v1 API (and of Google's OAuth token endpoint) on 127.0.0.1: a real HTTP server on a
free port that records every request and answers like FCM, or with a scripted FCM-shaped error, or not at all.

``POST /v1/projects/{project}/messages:send`` wants ``Authorization: Bearer <a token this fake issued>``;
any other gets 401 UNAUTHENTICATED, as Google answers a token it does not know.
``POST /token`` is a service account's OAuth token endpoint (JWT bearer grant), so real google-auth
service-account credentials can get their token here. :class:`FakeCredentials` gets one without any HTTP.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler
from typing import Any
from urllib.parse import parse_qs

from google.auth.credentials import Credentials

from tests.channels.fake_http import QuietHandler, serving

FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"
SEND_PATH = re.compile(r"/v1/projects/([^/]+)/messages:send")

#: FCM's ErrorCode → (HTTP status, google.rpc status, message), the way FCM answers each
FCM_ERRORS: dict[str, tuple[int, str, str]] = {
    "UNREGISTERED": (404, "NOT_FOUND", "Requested entity was not found."),
    "INVALID_ARGUMENT": (400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token"),
    "SENDER_ID_MISMATCH": (403, "PERMISSION_DENIED", "SenderId mismatch"),
    "QUOTA_EXCEEDED": (429, "RESOURCE_EXHAUSTED", "Quota exceeded for the message target."),
    "UNAVAILABLE": (503, "UNAVAILABLE", "The service is currently unavailable."),
    "INTERNAL": (500, "INTERNAL", "Internal error encountered."),
    "THIRD_PARTY_AUTH_ERROR": (401, "UNAUTHENTICATED", "Auth error from APNS or Web Push Service"),
}


def google_error(http_status: int, status: str, message: str, *details: dict[str, Any]) -> dict[str, Any]:
    """A Google API error body: ``{"error": {"code", "message", "status", "details"}}``."""
    error: dict[str, Any] = {"code": http_status, "message": message, "status": status}
    if details:
        error["details"] = list(details)
    return {"error": error}


def fcm_error(error_code: str) -> tuple[int, dict[str, Any]]:
    """FCM's answer for one of its ErrorCodes: the HTTP status and the body with an FcmError detail."""
    http_status, status, message = FCM_ERRORS[error_code]
    return http_status, google_error(http_status, status, message,
                                     {"@type": FCM_ERROR_TYPE, "errorCode": error_code})


def auth_error(reason: str | None = None) -> dict[str, Any]:
    """Google's 401 for a bad OAuth token (with an ErrorInfo reason such as ACCESS_TOKEN_EXPIRED)."""
    details = [{"@type": ERROR_INFO_TYPE, "reason": reason, "domain": "googleapis.com"}] if reason else []
    return google_error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.", *details)


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]      # lower-case names
    json: Any

    @property
    def bearer(self) -> str:
        scheme, _, token = self.headers.get("authorization", "").partition(" ")
        assert scheme == "Bearer", scheme
        return token


@dataclass
class Scripted:
    """The answer to the next message request: an FCM error, any status and body, a hang-up, a slow answer."""

    error: str | None = None            # an FCM ErrorCode (UNREGISTERED, QUOTA_EXCEEDED ...) in FCM's shape
    status: int | None = None           # or this HTTP status ...
    body: Any = None                    # ... with this JSON body (None: the normal success body)
    headers: dict[str, str] = field(default_factory=dict)
    hang_up: bool = False               # read the request, then close the connection without answering
    delay: float = 0.0                  # sleep before answering


@dataclass
class FakeFcm:
    port: int = 0
    requests: list[Recorded] = field(default_factory=list)         # message sends, every one
    token_requests: list[dict[str, Any]] = field(default_factory=list)  # claims of each JWT grant at /token
    issued: list[str] = field(default_factory=list)
    names: list[str] = field(default_factory=list)                 # the message names answered
    script: list[Scripted] = field(default_factory=list)
    script_for: dict[str, list[Scripted]] = field(default_factory=dict)   # per device token
    lock: threading.Lock = field(default_factory=threading.Lock)
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1))

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def then(self, **kwargs: Any) -> None:
        """Script the answer to the next message request that has none scripted yet."""
        with self.lock:
            self.script.append(Scripted(**kwargs))

    def then_for(self, token: str, **kwargs: Any) -> None:
        """Script the answer to the next message to this device token (whatever order concurrent sends
        arrive in)."""
        with self.lock:
            self.script_for.setdefault(token, []).append(Scripted(**kwargs))

    def issue_token(self) -> str:
        """What Google's OAuth server does: a new access token this fake will accept."""
        with self.lock:
            token = f"ya29.fake-{len(self.issued) + 1}"
            self.issued.append(token)
            return token

    def _next(self, token: str | None = None) -> Scripted:
        with self.lock:
            mine = self.script_for.get(token or "")
            if mine:
                return mine.pop(0)
            return self.script.pop(0) if self.script else Scripted()

    def _name(self, project: str) -> str:
        with self.lock:
            name = f"projects/{project}/messages/0:{1700000000000000 + next(self._ids)}"
            self.names.append(name)
            return name


def _claims(assertion: str) -> dict[str, Any]:
    payload = assertion.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _handler(fake: FakeFcm) -> type[BaseHTTPRequestHandler]:
    class Handler(QuietHandler):
        def do_POST(self) -> None:  # noqa: N802
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            if self.path == "/token":
                self._token(raw)
                return
            try:
                payload: Any = json.loads(raw)
            except ValueError:
                payload = None
            with fake.lock:
                fake.requests.append(Recorded("POST", self.path, {k.lower(): v for k, v in self.headers.items()},
                                              payload))
            match = SEND_PATH.fullmatch(self.path)
            if match is None:
                self._json(404, google_error(404, "NOT_FOUND", "Requested entity was not found."))
                return
            scheme, _, token = self.headers.get("Authorization", "").partition(" ")
            if scheme != "Bearer" or token not in fake.issued:
                self._json(401, auth_error())
                return
            if payload is None:
                self._json(400, google_error(400, "INVALID_ARGUMENT", "Invalid JSON payload received."))
                return
            message = payload.get("message") if isinstance(payload, dict) else None
            answer = fake._next(message.get("token") if isinstance(message, dict) else None)
            if answer.delay:
                time.sleep(answer.delay)
            if answer.hang_up:
                self.close_connection = True
                return
            if answer.error:
                status, body = fcm_error(answer.error)
                self._json(status, body, answer.headers)
                return
            body = answer.body if answer.body is not None else {"name": fake._name(match.group(1))}
            self._json(answer.status or 200, body, answer.headers)

        def _token(self, raw: bytes) -> None:
            form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
            with fake.lock:
                fake.token_requests.append(_claims(form.get("assertion", "..")))
            self._json(200, {"access_token": fake.issue_token(), "expires_in": 3599, "token_type": "Bearer"})

        def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None) -> None:
            self.send_json(status, payload, headers, content_type="application/json; charset=UTF-8")

    return Handler


class FakeCredentials(Credentials):
    """google-auth credentials whose ``refresh()`` takes a token from ``fake`` (standing in for Google's
    OAuth server) without any HTTP, or raises ``fail`` the way google-auth does. Counts its refreshes."""

    def __init__(self, fake: FakeFcm | None = None, *, fail: Exception | None = None,
                 project_id: str | None = None) -> None:
        super().__init__()
        self._fake = fake
        self.fail = fail
        self.project_id = project_id      # what a service account's credentials carry
        self.refreshes = 0
        self._lock = threading.Lock()

    def refresh(self, request: Any) -> None:
        with self._lock:
            self.refreshes += 1
            n = self.refreshes
        if self.fail is not None:
            raise self.fail
        self.token = self._fake.issue_token() if self._fake is not None else f"ya29.offline-{n}"
        self.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)  # google-auth: naive UTC


@contextmanager
def running_fake_fcm() -> Iterator[FakeFcm]:
    fake = FakeFcm()
    with serving(_handler(fake)) as fake.port:
        yield fake
