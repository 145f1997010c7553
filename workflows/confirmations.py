"""ConfirmationSender: sends the double opt-in confirmations members asked for, a batch per round.

One workflow for the deployment (id ``confirmations``), started by every worker at boot and woken by a
``wake`` signal when a request is stored (the API and the preference center signal it; a request stored
while Temporal was away is found by the next poll). Each round is one ``send_confirmations`` activity: idle
it costs one query every ``poll_seconds``.

- One round per burst. A wake only says "look now"; the round claims every pending request (up to a
  batch; a full batch goes again at once), so signals that arrive while a round runs are answered by one
  more round after it, however many there were, and never by a round each.
- Nothing stops it for good. The activity keeps one bad request to itself (failed or in doubt, the rest of
  the batch sent), and a round that fails anyway (its retries spent, or a non-retryable error) is logged
  and tried again after ``poll_seconds``, wakes or not, instead of failing the deployment's only sender.
- Small history. It continues as new every ``rounds_per_run`` rounds (about 12 events each, some 6,000 a
  run, far below the server's 50,000; each wake adds one), or sooner when the server suggests it. A wake that arrives while it continues as new may
  be dropped with the old run; that loses nothing, as wakes are only hints: the new run's first act is a
  round, and the poll would find any request anyway.
"""

from __future__ import annotations

from datetime import timedelta

from temporalio import workflow
from temporalio.exceptions import ActivityError

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
            seen = self._wakes      # wakes from now on (during the round, too) ask for one more round
            try:
                result = await workflow.execute_activity(
                    "send_confirmations", SendConfirmations(), result_type=ConfirmationsSent,
                    start_to_close_timeout=retry.DELIVERY_START_TO_CLOSE, heartbeat_timeout=retry.DELIVERY_HEARTBEAT,
                    retry_policy=retry.DELIVERY)
            except ActivityError as exc:
                # requests it left `sending` are `in_doubt` to the next round, never sent twice. The error's
                # type only: a database error's message may quote an address
                workflow.logger.warning("confirmation round failed (%s), next one in %ss",
                                        getattr(exc.cause, "type", None) or type(exc.cause or exc).__name__,
                                        inp.poll_seconds)
                await workflow.sleep(timedelta(seconds=inp.poll_seconds))
                continue
            self._sent += result.sent
            if result.more:
                continue
            try:
                await workflow.wait_condition(lambda seen=seen: self._wakes != seen,
                                              timeout=timedelta(seconds=inp.poll_seconds))
            except TimeoutError:
                pass
            if workflow.info().is_continue_as_new_suggested():
                break
        await workflow.wait_condition(workflow.all_handlers_finished)
        workflow.continue_as_new(inp)
