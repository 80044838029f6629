"""Failures whose details must stay in the trainer's log: a client reads a plain message and an error id.

Absolute server paths, download URLs and library error text (urllib, kagglehub, OS errors) say nothing a
client can act on and tell an attacker about the server; they are logged once with a short random id, and
the message a client (or ``job.error``) gets names that id, so an operator can find the details.
"""

from __future__ import annotations

import errno
import logging
import secrets

DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(exc: BaseException) -> bool:
    """An OS error saying the disk (or the quota) is full, or one caused by it."""
    while exc is not None:
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return True
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return False


def new_error_id() -> str:
    """8 hex characters: short enough to read out, random enough not to repeat in a log."""
    return secrets.token_hex(4)


def logged(
    log: logging.Logger, message: str, exc: BaseException, *, where: str = "", traceback: bool = False
) -> str:
    """Log ``exc`` in full (``where``: e.g. the job) under a new error id; return ``message`` naming that id,
    for the client."""
    error_id = new_error_id()
    log.error(
        "error %s%s: %s: %s: %s",
        error_id,
        f" ({where})" if where else "",
        message,
        type(exc).__name__,
        exc,
        exc_info=exc if traceback else None,
    )
    return f"{message} (error id {error_id}; the trainer's log has the details)"
