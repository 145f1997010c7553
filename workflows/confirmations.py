"""ConfirmationSender: sends the double opt-in confirmations members asked for, a batch per round.

One workflow for the deployment (id ``confirmations``), started by every worker at boot and woken by a
``wake`` signal when a request is stored (the API and the preference center signal it; a request stored
while Temporal was away is found by the next poll). Each round is one ``send_confirmations`` activity: idle
it costs one query every ``poll_seconds``. It continues as new every ``rounds_per_run`` rounds, so its
history stays small.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow

with workflow.unsafe.imports_passed_through():
    from workflows import retry
    from workflows.contracts import ConfirmationSenderInput, ConfirmationsSent, SendConfirmations

CONFIRMATIONS_WORKFLOW_ID = "confirmations"


@workflow.defn
class ConfirmationSender:
    def __init__(self) -> None:
        self._wakes = 0
        self._sent = 0

    @workflow.signal
    def wake(self) -> None:
        self._wakes += 1

    @workflow.query
    def sent(self) -> int:
        return self._sent

    @workflow.run
    async def run(self, inp: ConfirmationSenderInput) -> None:
        for _ in range(inp.rounds_per_run):
            seen = self._wakes
            result = await workflow.execute_activity(
                "send_confirmations", SendConfirmations(), result_type=ConfirmationsSent,
                start_to_close_timeout=retry.DELIVERY_START_TO_CLOSE, heartbeat_timeout=retry.DELIVERY_HEARTBEAT,
                retry_policy=retry.DELIVERY)
            self._sent += result.sent
            if result.more:
                continue
            try:
                await workflow.wait_condition(lambda: self._wakes != seen,
                                              timeout=timedelta(seconds=inp.poll_seconds))
            except TimeoutError:
                pass
            if workflow.info().is_continue_as_new_suggested():
                break
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)
