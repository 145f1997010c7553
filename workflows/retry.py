"""Named retry policies and timeouts: one place, not literals scattered through calls."""

from datetime import timedelta

from temporalio.common import RetryPolicy

# reads and bookkeeping: retry briskly, forever (until the schedule-to-close timeout)
DB_QUICK = RetryPolicy(initial_interval=timedelta(milliseconds=200), backoff_coefficient=2.0,
                       maximum_interval=timedelta(seconds=10))
DB_QUICK_TIMEOUT = timedelta(seconds=60)

# a page of deliveries: a retry re-runs the page; rows already sent are skipped, rows left
# `sending` become `in_doubt` (never sent twice)
DELIVERY = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                       maximum_interval=timedelta(seconds=60), maximum_attempts=20,
                       non_retryable_error_types=["CampaignNotFound", "InvalidCampaign"])
DELIVERY_START_TO_CLOSE = timedelta(minutes=10)
DELIVERY_HEARTBEAT = timedelta(seconds=30)

# a direct-mail hand-over: one batch PDF of at most 1,000 letters (~15 s of rendering, more on a busy
# worker); a retry takes up the same batch with the same letters (activities.direct_mail)
HAND_OVER = RetryPolicy(initial_interval=timedelta(seconds=1), backoff_coefficient=2.0,
                        maximum_interval=timedelta(seconds=60), maximum_attempts=20,
                        non_retryable_error_types=["CampaignNotFound", "UnprintableBatch"])
HAND_OVER_START_TO_CLOSE = timedelta(minutes=10)
HAND_OVER_HEARTBEAT = timedelta(seconds=60)
