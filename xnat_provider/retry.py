"""A ready retry policy for XNAT tasks: retry what a retry can fix, fail fast on what it cannot.

    XnatImportOperator(..., retries=4, retry_policy=xnat_retry_policy())

Server errors (5xx, gateways, XNAT restarting) and transfer errors (a short or corrupted download) are worth
another try; authentication, permission, not-found, conflict and bad-input errors fail at once, so a wrong
password does not lock the account and a bad label does not burn an hour of retries. A mistake in the
connection (no host, a bad extra, a connection id that does not exist) is an ``XnatBadInputError`` too.

Sensors raise these same classes in every mode (poke, reschedule, deferred: the trigger's event names the class
and ``execute_complete`` raises it again), so one policy serves operators and sensors alike; a sensor's
fail-fast errors are subclasses that are also ``AirflowFailException`` (never retried even without this policy),
and an outage longer than the sensor's ``outage_tolerance`` is an ``XnatServerError``, retried here.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.sdk import ExceptionRetryPolicy, RetryAction, RetryRule

FAIL_FAST = [
    "xnat_provider.client.errors.XnatAuthError",
    "xnat_provider.client.errors.XnatPermissionError",
    "xnat_provider.client.errors.XnatNotFoundError",
    "xnat_provider.client.errors.XnatConflictError",
    "xnat_provider.client.errors.XnatBadInputError",
]
RETRY = ["xnat_provider.client.errors.XnatServerError", "xnat_provider.client.errors.XnatTransferError"]


def xnat_retry_policy(server_retry_delay: timedelta | None = None) -> ExceptionRetryPolicy:
    return ExceptionRetryPolicy(rules=[
        RetryRule(exception=FAIL_FAST, action=RetryAction.FAIL,
                  reason="XNAT refused the request for a reason a retry cannot fix"),
        RetryRule(exception=RETRY, action=RetryAction.RETRY, retry_delay=server_retry_delay,
                  reason="XNAT or the transfer failed; a retry resumes safely"),
    ])
