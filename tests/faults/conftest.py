"""Fixtures of the fault tests.

``workers`` is the campaign harness of tests/workflows (real BroadcastCampaign and activities on the
time-skipping server, a real database), here with an SMTP server that can be told to misbehave in place of
the well-behaved one: ``smtp_server`` is a tests.faults.fake_smtp.FaultySmtp. ``stack`` is the real
processes (tests.faults.harness): a Temporal dev server and a `clarion worker`, stopped afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.fake_smtp import FaultySmtp, faulty_smtp
from tests.faults.harness import Stack, new_stack
from tests.workflows import conftest as workflows_conftest
from tests.workflows import test_channels

workers = workflows_conftest.workers     # the fixture, for the tests of this package
# the fake providers and the FCM service-account key of the channel workflow tests
twilio, fcm, service_account_key = test_channels.twilio, test_channels.fcm, test_channels.service_account_key


@pytest.fixture
def smtp_server() -> Iterator[FaultySmtp]:
    with faulty_smtp() as box:
        yield box


@pytest.fixture
def stack(tmp_path: Path) -> Iterator[Stack]:
    s = new_stack(tmp_path)
    try:
        yield s
    finally:
        s.worker.stop()
        s.server.stop()
