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
