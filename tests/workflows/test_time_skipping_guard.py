"""The guard of the shared time-skipping server (``tests.conftest.skips_time``): it must tell a server that skips
time from one that a task on an unpolled queue has stopped, or a stopped server would make every later test of the
session wait real time for its timers (a CI run lost a test that way: 300 s in ``handle.result()``)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.conftest import skips_time

pytestmark = pytest.mark.asyncio(loop_scope="session")


async def test_the_guard_tells_a_server_that_skips_time_from_one_a_task_on_an_unpolled_queue_stopped(
        private_time_skipping_env: Any) -> None:
    env = private_time_skipping_env
    before = await env.get_current_time()
    assert await skips_time(env)
    assert (await env.get_current_time() - before).total_seconds() >= 10

    handle = await env.client.start_workflow("NobodyRunsThis", id=f"unpolled-{uuid.uuid4().hex}",
                                             task_queue=f"tq-nobody-polls-{uuid.uuid4().hex}")
    try:
        assert not await skips_time(env, within=1.0)
    finally:
        await handle.terminate()
    assert not await skips_time(env, within=1.0)      # terminated, its first task still holds the clock
