"""The errors Data Out raises on purpose, each knowing whether a retry can help and what a person should do.

Operators route by type, never by message: a ``RetryableError`` is raised again so that Airflow's
retries run; a ``TerminalError`` fails the task at once; anything else is a bug, left to the task's
retry policy. The failure email's "Next step" is the error's ``next_step``.
"""

from __future__ import annotations

#: what the failure email says when the error carries no advice of its own (a bug, an unknown error)
GENERIC_NEXT_STEP = "See the task log for the traceback; the run record (do_run/do_sync) has the counts so far."

STATE_DATABASE_NEXT_STEP = (
    "The state database was unreachable or refused writes and the task's retries ran out. Once it is "
    "back (connection, disk space, read-only mode), clear the failed task: nothing uncommitted was "
    "marked as synced, and unfinished batches resume with their original idempotency keys."
)
GUARD_NEXT_STEP = (
    "If the shrink is deliberate, trigger the DAG with conf "
    '{"guard_override_reason": "<why>"}; otherwise fix the source first.'
)
SIZE_MISMATCH_NEXT_STEP = (
    "The destination holds far fewer members than were acknowledged. Run a full resync of it: trigger "
    'data_out_operations with conf {"audiences": ["<audience>"], "destinations": ["<destination>"], '
    '"mode": "full_resync"}. If its reported size only lags behind uploads, lower drift.min_reported_share.'
)
QUERY_FAILED_NEXT_STEP = "Fix the audience's SQL named in the reason, then clear the stage task."
QUERY_SHAPE_NEXT_STEP = (
    "Fix the audience's SQL or its column mapping (member_key, identifiers) as the reason says, "
    "then clear the stage task."
)
MISSING_CONNECTION_NEXT_STEP = "Add the connection named in the reason (or fix the conn_id), then clear the task."
CONFIG_NEXT_STEP = "Fix the audience file named in the reason (see the import error), then clear the task."
SETTING_NEXT_STEP = "Fix the setting or connection the reason names, then clear the task."
REQUEST_NEXT_STEP = "Fix the trigger's conf as the reason says, then trigger the DAG again."
LEASE_NEXT_STEP = "Another run holds this audience: wait for it to finish, or clear that run first."
VENDOR_REFUSED_NEXT_STEP = (
    "The vendor refused the request: fix the connection or the audience setting the reason names, "
    "then clear the failed task. Nothing was marked as synced."
)
VENDOR_UNAVAILABLE_NEXT_STEP = (
    "The vendor was unavailable; unfinished batches are resumed by the next run "
    "with their original idempotency keys. Clear the task to retry now."
)
VENDOR_NO_RESPONSE_NEXT_STEP = "The vendor was unavailable; unfinished batches are resumed by the next run."
CUSTOMERIO_NEXT_STEP = (
    "Customer.io answered something the source cannot read (see the reason); nothing already synced "
    "changed. Check the connection (host, API key) and the segment id, then clear the stage task."
)


class DataOutError(Exception):
    """An error Data Out raises on purpose. The message says what happened; ``next_step`` what to do.

    ``retryable`` and ``next_step`` default to the class's; a raise site may set either for one instance.
    """

    retryable: bool = False
    next_step: str = GENERIC_NEXT_STEP

    def __init__(self, message: str = "", *, retryable: bool | None = None, next_step: str | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable
        if next_step is not None:
            self.next_step = next_step


class TerminalError(DataOutError):
    """Running the task again cannot help: a person must change something first."""

    retryable = False


class RetryableError(DataOutError):
    """Running the task again later can help (an outage): Airflow's retries run."""

    retryable = True


class ConfigurationError(TerminalError):
    """Bad input from a person (an audience file, a setting, a connection): the message names it and the fix."""

    next_step = SETTING_NEXT_STEP


def next_step_of(exc: BaseException | None) -> str:
    """The next step the failure email gives for ``exc``: its own, or that of the typed error it carries."""
    for candidate in (exc, getattr(exc, "error", None), getattr(exc, "__cause__", None)):
        if isinstance(candidate, DataOutError):
            return candidate.next_step
    return GENERIC_NEXT_STEP


class SettingError(ConfigurationError, ValueError):
    """An environment setting (``DATA_OUT_...``) with a value Data Out cannot use; the message names it."""
