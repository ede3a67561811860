"""Exceptions of the describe step.

Every failure a user can meet (server down, wrong URL, bad key, model missing, timeout, ...)
surfaces as :class:`VLMError` with a one-line message meant to be shown as is.
"""

from __future__ import annotations


class VLMError(RuntimeError):
    """A describe or model-listing failure, with a one-line message for the user.

    Attributes
    ----------
    status : int or None
        HTTP status of the server's answer, when there was one.
    retryable : bool
        True for failures worth retrying (connection failures, timeouts, 429/502/503/504).
    report : Report or None
        Set by :func:`VoteMILib.vlm.describe` once the request was prepared: the (partial, possibly
        empty) report flagged incomplete, with this error as its ``incomplete_reason``.
    """

    def __init__(self, message: str, status: int | None = None, retryable: bool = False,
                 retry_after_s: float | None = None):
        super().__init__(" ".join(str(message).split()))
        self.status = status
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.report = None


class VLMCancelled(VLMError):
    """Raised when the caller's ``cancel`` callable returned True.

    Attributes
    ----------
    partial_text : str
        Text received before the cancellation (already passed to ``on_text``).
    report : Report or None
        The partial report, when :func:`VoteMILib.vlm.describe` was cancelled.
    """

    def __init__(self, partial_text: str = "", report=None):
        super().__init__("cancelled by the user")
        self.partial_text = partial_text
        self.report = report
