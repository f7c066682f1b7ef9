"""What a failed API call looks like, as opposed to a defect of ours.

Writers on a path that must keep going (a scheduler verb, the repartitioner's per-node step) pass over
the first, counted and retried later, and let the second surface with its trace. Kept apart from the
client module so that ``serve --snapshot``, which never talks to an API server, need not import the
Kubernetes client to ask.
"""

from __future__ import annotations

import logging

from urllib3.exceptions import HTTPError


def api_failure(exc: BaseException) -> bool:
    """Did a call fail for want of the API: it answered an error status (the client's ApiException carries
    ``status``), could not be reached or cut the connection (urllib3's errors), or timed out (OSError)?"""
    return isinstance(exc, (OSError, HTTPError)) or isinstance(getattr(exc, "status", None), int)


def log_retried(logger: logging.Logger, exc: BaseException, what: str) -> None:
    """Log that ``what`` failed and is tried again on the next pass: for want of the API, one warning line (an
    API server restart is expected and a trace says no more); a defect of ours, an error with its trace."""
    if api_failure(exc):
        logger.warning("%s failed (the API: %s); retrying next pass", what, exc)
    else:
        logger.exception("%s failed; retrying next pass", what)
