"""Mobile push through Firebase Cloud Messaging's HTTP v1 API, with the ``pyfcm`` library.

Sending: check the device token, the data (string values only) and the 4096-byte payload limit
(:func:`payload_size`) → pyfcm builds the v1 message and posts it, in a worker thread → a ``SendReceipt``
with the message name FCM gives (``projects/<project>/messages/0:...``). The message pyfcm builds::

    {"message": {"token": msg.to,
                 "notification": {"title": msg.title, "body": msg.text, "image": msg.image_url},
                 "data": {**msg.data, "link": msg.link}},
     "validate_only": false}

(fields that are None or empty are left out; ``msg.link`` wins over a ``"link"`` in ``msg.data``).

Why a thread: pyfcm's only async path (``async_notify_multiple_devices``) starts its own event loop with
``run_until_complete`` and fails inside a running one; the sync client runs under ``asyncio.to_thread``.
A send holds one pool thread for its duration (bounded by ``timeout``).

What pyfcm 2.1.1 does on its own, and what :class:`_Fcm` (a subclass) changes:

- It resends without telling us. Its requests adapter carries ``urllib3.Retry(status_forcelist=[502, 503])``
  with POST allowed, so a POST goes again (up to 10 times, with backoff) after a 502/503, after a 413/429/503
  that carries Retry-After, *and* after a dropped connection or a read timeout, when FCM may already have
  the message; and ``send_request`` sleeps for any ``Retry-After`` and posts again, with no bound. We give
  it a plain ``HTTPAdapter`` (no retries) and a ``send_request`` that posts once. The one resend kept is
  after a 401 ``ACCESS_TOKEN_EXPIRED`` (refused before anything was done), once, with a fresh token.
- It hides the answer. Its exceptions follow from the HTTP status alone (a 429 becomes ``FCMServerError``,
  every 403 ``FCMSenderIdMismatchError``, every 404 ``FCMNotRegisteredError``) and drop ``Retry-After``.
  Our ``send_request`` keeps the last response per thread, and :func:`map_fcm_error` reads FCM's own
  ``errorCode``: revoking a token on any 403 would delete every member's token when the project's FCM API
  is merely switched off.
- The endpoint. ``FCM_END_POINT_BASE`` is a class attribute (setting it would move every client in the
  process) and ``fcm_end_point`` prefers the service account's project over the one it is given. Ours is
  per instance: ``{base_url}/v1/projects/{config.project_id}/messages:send``.
- Sessions and tokens are per thread: each worker thread gets its own ``requests.Session`` and asks Google
  for its own OAuth token on first use and every 30 minutes. The adapter we pass is mounted on each session.

Errors, mapped once here (https://firebase.google.com/docs/reference/fcm/rest/v1/ErrorCode)::

    FCMError after an answer: the recorded response decides (FcmError errorCode, else error.status, else HTTP)
    ├── UNREGISTERED (404: the token is dead)     → PermanentChannelError(revoke_address=True)
    ├── SENDER_ID_MISMATCH (403)                  → PermanentChannelError(revoke_address=True)
    ├── INVALID_ARGUMENT, any 400                 → PermanentChannelError  (bad message; the token stays)
    ├── THIRD_PARTY_AUTH_ERROR (401)              → ProviderAccountError   configuration: APNs certificate
    │                                                                      or web push key
    ├── other 401 (UNAUTHENTICATED)               → ProviderAccountError   configuration: our service account
    │   (ACCESS_TOKEN_EXPIRED: first sent once more with a fresh token)
    ├── other 403 (PERMISSION_DENIED)             → ProviderAccountError   configuration (API off, IAM role)
    ├── other 404 (NOT_FOUND)                     → ProviderAccountError   configuration (project, URL)
    ├── other 4xx                                 → PermanentChannelError(code=error.status or "HTTP_<n>")
    ├── QUOTA_EXCEEDED, any 429                   → RateLimited(retry_after=Retry-After seconds or None)
    ├── UNAVAILABLE (503), INTERNAL (500)         → RateLimited(retry_after) when Retry-After is given,
    │                                               else TransientChannelError (FCM: not accepted, retry)
    └── other 5xx (a proxy in front of FCM), 2xx without a message name → InDoubtChannelError
    FCMError before any answer: no OAuth token (pyfcm wraps google-auth's error in InvalidDataError)
    ├── google-auth TransportError, or an error it marks retryable   → TransientChannelError("oauth_unavailable")
    └── anything else (key refused, account deleted)                 → ProviderAccountError("oauth_refused")
    requests.RequestException (no answer): channels.http.map_transport_error
    ├── refused, unreachable, ConnectTimeout (nothing sent)          → TransientChannelError
    └── ReadTimeout, connection dropped after sending, broken answer → InDoubtChannelError
    before any request: no token → PermanentChannelError("no_token"); a non-string data key or value →
                        ("bad_payload"); over 4096 bytes → ("payload_too_large")

The 4096-byte limit: FCM refuses ("message too big", INVALID_ARGUMENT) a message whose payload is over
4096 bytes, "both the keys and the values" (FCM's ErrorCode reference). :func:`payload_size` counts the
UTF-8 bytes of each key and value of the notification (``title``, ``body``, ``image``, those sent) and of
the data (``link`` included); not the token, the JSON punctuation or platform blocks (we send none). FCM
does not publish its exact sum: counting what it documents may let through a message FCM finds too big,
which FCM then refuses with INVALID_ARGUMENT (permanent: the same outcome), whereas counting more (say, the
JSON text) would refuse messages FCM accepts.

Sandbox: with a ``SandboxRecorder``, ``channels.sandbox.RecordingAdapter`` is the adapter pyfcm mounts on
each of its per-thread sessions (``sandbox.mount`` on one session would miss the others): the exact
v1 request is recorded (Authorization redacted) and answered ``{"name": "projects/<p>/messages/sandbox-<id>"}``.
The token then comes from a local credentials object: no call to Google, no service account needed.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, ClassVar

import requests
from google.auth.credentials import Credentials
from google.auth.exceptions import GoogleAuthError, TransportError
from google.oauth2 import service_account
from pyfcm import FCMNotification
from pyfcm.errors import FCMError
from requests.adapters import BaseAdapter, HTTPAdapter

from channels import sandbox
from channels.base import (
    ChannelError,
    InDoubtChannelError,
    OutboundMessage,
    PermanentChannelError,
    ProviderAccountError,
    RateLimited,
    SandboxRecorder,
    SendReceipt,
    TransientChannelError,
    current_delivery,
)
from channels.http import map_transport_error, retry_after_seconds
from storage.tables import ChannelName

FCM_URL = "https://fcm.googleapis.com"
SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
MAX_PAYLOAD = 4096
FCM_ERROR_TYPE = "type.googleapis.com/google.firebase.fcm.v1.FcmError"
ERROR_INFO_TYPE = "type.googleapis.com/google.rpc.ErrorInfo"


@dataclass(frozen=True)
class FcmConfig:
    project_id: str
    service_account_file: str | None = None     # production: one of these two
    service_account_info: dict | None = None
    credentials: object | None = None           # tests: google-auth credentials whose refresh() sets a token
    base_url: str | None = None                 # tests: the fake's URL; production None (https://fcm.googleapis.com)
    timeout: float = 10.0


def payload_size(title: str | None, body: str | None, image: str | None, data: Mapping[str, str]) -> int:
    """Bytes FCM counts against its 4096-byte limit: UTF-8 keys and values of the notification fields
    that are sent (non-empty) and of the data."""
    fields = {"title": title, "body": body, "image": image}
    pairs = [(k, v) for k, v in fields.items() if v] + list(data.items())
    return sum(len(k.encode()) + len(v.encode()) for k, v in pairs)


# --- FCM's answers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FcmErrorBody:
    """What an FCM error answer says: ``{"error": {"code", "status", "message", "details": [...]}}``."""

    error_code: str | None = None          # details[@type=FcmError].errorCode: UNREGISTERED, QUOTA_EXCEEDED ...
    status: str | None = None              # google.rpc status: NOT_FOUND, PERMISSION_DENIED ...
    reasons: frozenset[str] = frozenset()  # details[@type=ErrorInfo].reason: ACCESS_TOKEN_EXPIRED ...

    @classmethod
    def parse(cls, body: object) -> FcmErrorBody:
        error = body.get("error") if isinstance(body, dict) else None
        if not isinstance(error, dict):
            return cls()
        details = [d for d in error.get("details") or () if isinstance(d, dict)]
        codes = [d.get("errorCode") for d in details if d.get("@type") == FCM_ERROR_TYPE]
        reasons = frozenset(str(d.get("reason")) for d in details if d.get("@type") == ERROR_INFO_TYPE)
        status = error.get("status")
        return cls(error_code=codes[0] if codes and isinstance(codes[0], str) else None,
                   status=status if isinstance(status, str) else None, reasons=reasons)


def _json(response: requests.Response) -> object:
    try:
        return response.json()
    except ValueError:
        return None


def map_fcm_error(http_status: int, body: object, retry_after: str | None) -> ChannelError:
    """FCM's error answer (HTTP status, JSON body, Retry-After header) → our error. See the module's tree."""
    err = FcmErrorBody.parse(body)
    code = err.error_code or err.status or f"HTTP_{http_status}"
    if err.error_code == "UNREGISTERED":
        return PermanentChannelError("push: the device token is no longer registered", code=code,
                                     revoke_address=True)
    if err.error_code == "SENDER_ID_MISMATCH":
        return PermanentChannelError("push: the token belongs to another sender (Firebase project)", code=code,
                                     revoke_address=True)
    if err.error_code == "THIRD_PARTY_AUTH_ERROR":
        return ProviderAccountError("push: APNs or web push refused our credentials: a configuration problem "
                                     "(APNs certificate / auth key, VAPID key in the Firebase project)", code=code)
    if err.error_code == "QUOTA_EXCEEDED" or http_status == 429:
        return RateLimited(f"push: FCM quota exceeded ({code})", retry_after=retry_after_seconds(retry_after), code=code)
    if err.error_code in ("UNAVAILABLE", "INTERNAL") or http_status in (500, 503):
        wait = retry_after_seconds(retry_after)
        if wait is not None:
            return RateLimited(f"push: FCM unavailable ({code}), retry after {wait:g} s", retry_after=wait,
                               code=code)
        return TransientChannelError(f"push: FCM did not accept the message ({code}); retry with backoff",
                                     code=code)
    if err.error_code == "INVALID_ARGUMENT" or http_status == 400:
        return PermanentChannelError(f"push: FCM refused the message as invalid ({code})",
                                     code="INVALID_ARGUMENT")
    if http_status == 401:
        return ProviderAccountError(f"push: FCM refused our OAuth token ({code}): a configuration problem "
                                     "(service account key, project)", code=code)
    if http_status == 403:
        return ProviderAccountError(f"push: FCM denied the request ({code}): a configuration problem (FCM API "
                                     "disabled, or the service account lacks the role); the token stays", code=code)
    if http_status == 404:
        return ProviderAccountError(f"push: FCM answered 404 without UNREGISTERED ({code}): a configuration "
                                     "problem (project id, URL); the token stays", code=code)
    if 400 <= http_status < 500:
        return PermanentChannelError(f"push: FCM refused the message ({http_status}, {code})", code=code)
    return InDoubtChannelError(f"push: unexpected answer from FCM ({http_status}, {code}); it may have "
                               "accepted the message", code=code)


def map_token_error(exc: BaseException) -> ChannelError:
    """pyfcm could not get an OAuth token (its InvalidDataError wraps google-auth's error): nothing was sent."""
    cause: BaseException | None = exc
    while cause is not None and not isinstance(cause, GoogleAuthError):
        cause = cause.__cause__ or cause.__context__
    if isinstance(cause, TransportError) or (cause is not None and cause.retryable):
        return TransientChannelError(f"push: cannot get an OAuth token from Google ({cause}); nothing was sent",
                                     code="oauth_unavailable")
    return ProviderAccountError(f"push: Google refused to give an OAuth token ({cause or exc}): a configuration "
                                 "problem (service account key); nothing was sent", code="oauth_refused")


# --- pyfcm, tamed -----------------------------------------------------------------------------------


class _SandboxCredentials(Credentials):
    """A token that needs no network: the sandbox never asks Google for one."""

    def refresh(self, request: Any) -> None:
        self.token = "sandbox"


class _Fcm(FCMNotification):
    """pyfcm's client with our endpoint, one POST per send, and the last response kept per thread."""

    def __init__(self, *, endpoint: str, credentials: Any, adapter: BaseAdapter) -> None:
        super().__init__(credentials=credentials, adapter=adapter)
        self._endpoint = endpoint
        self._answers = threading.local()

    @property
    def fcm_end_point(self) -> str:
        return self._endpoint

    def send_request(self, payload: bytes | None = None, timeout: float | None = None) -> requests.Response:
        self._answers.response = None
        response = self._post(payload, timeout)
        if response.status_code == 401 and "ACCESS_TOKEN_EXPIRED" in FcmErrorBody.parse(_json(response)).reasons:
            self._answers.response = None              # a failed refresh is a token error, not this 401
            self.requests_session.headers.update(self.request_headers())
            response = self._post(payload, timeout)
        return response

    def _post(self, payload: bytes | None, timeout: float | None) -> requests.Response:
        response = self.requests_session.post(self.fcm_end_point, data=payload, timeout=timeout)
        self._answers.response = response
        return response

    def last_response(self) -> requests.Response | None:
        """The answer the calling thread got in its last send, or None if no request was answered."""
        return getattr(self._answers, "response", None)


def _credentials(config: FcmConfig) -> Any:
    if config.credentials is not None:
        return config.credentials
    if config.service_account_info is not None:
        return service_account.Credentials.from_service_account_info(config.service_account_info, scopes=[SCOPE])
    if config.service_account_file:
        return service_account.Credentials.from_service_account_file(config.service_account_file, scopes=[SCOPE])
    raise ValueError("push: FcmConfig needs service_account_file, service_account_info or credentials")


def _sandbox_answer(project_id: str, recorded_id: str, request: requests.PreparedRequest) -> tuple[int, dict]:
    return 200, {"name": f"projects/{project_id}/messages/sandbox-{recorded_id}"}


class FcmPushChannel:
    name: ClassVar[ChannelName] = ChannelName.push

    def __init__(self, config: FcmConfig, *, sandbox_recorder: SandboxRecorder | None = None) -> None:
        self._config = config
        self.sandboxed = sandbox_recorder is not None
        base = (config.base_url or FCM_URL).rstrip("/")
        endpoint = f"{base}/v1/projects/{config.project_id}/messages:send"
        self._adapter: BaseAdapter
        if sandbox_recorder is not None:
            self._adapter = sandbox.RecordingAdapter(sandbox_recorder, channel=str(self.name), provider="fcm",
                                                     answer=partial(_sandbox_answer, config.project_id))
            credentials: Any = _SandboxCredentials()
        else:
            self._adapter = HTTPAdapter()              # max_retries=0: nothing is ever resent by urllib3
            credentials = _credentials(config)
        self._client = _Fcm(endpoint=endpoint, credentials=credentials, adapter=self._adapter)

    async def send(self, msg: OutboundMessage) -> SendReceipt:
        if not msg.to.strip():
            raise PermanentChannelError("push: no device token", code="no_token")
        bad = [k for k, v in msg.data.items() if not isinstance(k, str) or not isinstance(v, str)]
        if bad:
            raise PermanentChannelError(f"push: FCM data values must be strings; not so for {bad!r}",
                                        code="bad_payload")
        data = {**msg.data, "link": msg.link} if msg.link else dict(msg.data)
        size = payload_size(msg.title, msg.text, msg.image_url, data)
        if size > MAX_PAYLOAD:
            raise PermanentChannelError(f"push: payload of {size} bytes is over FCM's limit of {MAX_PAYLOAD}",
                                        code="payload_too_large")
        name = await asyncio.to_thread(
            self._send, msg.delivery_id, fcm_token=msg.to, notification_title=msg.title,
            notification_body=msg.text, notification_image=msg.image_url, data_payload=data or None)
        return SendReceipt(provider_message_id=name)

    def _send(self, delivery_id: int, **fields: Any) -> str:
        """Blocking: runs in a worker thread. Returns the message name FCM gave."""
        token = current_delivery.set(delivery_id)
        try:
            answer = self._client.notify(**fields, timeout=self._config.timeout)
        except FCMError as exc:
            response = self._client.last_response()
            if response is None:
                raise map_token_error(exc) from exc
            raise map_fcm_error(response.status_code, _json(response), response.headers.get("Retry-After")) from exc
        except requests.RequestException as exc:
            raise map_transport_error(exc, label="push", provider="FCM") from exc
        finally:
            current_delivery.reset(token)
        name = answer.get("name") if isinstance(answer, dict) else None
        if not isinstance(name, str) or not name:
            raise InDoubtChannelError("push: FCM answered 200 without a message name; it may have accepted it")
        return name

    async def aclose(self) -> None:
        self._adapter.close()
