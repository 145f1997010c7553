"""Sandbox transport for the requests-based client libraries (twilio, pyfcm).

A :class:`RecordingAdapter` mounted on the library's ``requests.Session`` receives the request the library
prepared, byte for byte, hands it to a :class:`~channels.base.SandboxRecorder` (credentials redacted) and
answers the way the provider answers a success, so the adapter's own code runs unchanged. Nothing leaves
the machine. (python-telegram-bot does not use requests: ``channels.telegram`` has its own request class.)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from typing import Any

import requests
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from channels.base import RecordedRequest, SandboxRecorder, redacted

#: (the recorded request's id, the prepared request) → (HTTP status, JSON body) of the provider's answer
Answer = Callable[[str, requests.PreparedRequest], tuple[int, Mapping[str, Any]]]


def body_text(body: bytes | str | None) -> str:
    if body is None:
        return ""
    if isinstance(body, bytes):
        return body.decode("utf-8", errors="replace")
    return body


class RecordingAdapter(BaseAdapter):
    def __init__(self, recorder: SandboxRecorder, *, channel: str, provider: str, answer: Answer) -> None:
        super().__init__()
        self._recorder = recorder
        self._channel = channel
        self._provider = provider
        self._answer = answer

    def send(self, request: requests.PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: Any = True, cert: Any = None, proxies: Any = None) -> requests.Response:
        recorded_id = self._recorder.record(RecordedRequest(
            channel=self._channel, provider=self._provider, method=request.method or "POST",
            url=request.url or "", headers=redacted(dict(request.headers)), body=body_text(request.body)))
        status, payload = self._answer(recorded_id, request)
        response = requests.Response()
        response.status_code = status
        response._content = json.dumps(payload).encode()
        response.headers = CaseInsensitiveDict({"Content-Type": "application/json", "X-Clarion-Sandbox": "1"})
        response.encoding = "utf-8"
        response.url = request.url or ""
        response.request = request
        response.reason = "OK" if status < 400 else "Error"
        return response

    def close(self) -> None:
        pass


def mount(session: requests.Session, adapter: RecordingAdapter) -> None:
    """Route every request of ``session`` to ``adapter`` (both schemes)."""
    session.mount("https://", adapter)
    session.mount("http://", adapter)
