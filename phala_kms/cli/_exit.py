"""What ``phala-kms`` exits with, and the one failure a command raises to say so.

This module imports nothing beyond the standard library: the console script's
entry point (:func:`phala_kms.cli.main`) uses it before it knows whether click and
rich are installed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

__all__ = ["EXIT_CODES", "ExitCode", "Failure"]


class ExitCode(enum.IntEnum):
    """What ``phala-kms`` exits with."""

    OK = 0
    API_ERROR = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    NETWORK = 5
    VERIFICATION = 6
    INTERRUPTED = 130


EXIT_CODES: Mapping[int, str] = {
    ExitCode.OK: "success; also when stdout is closed early (`| head`): output stops quietly",
    ExitCode.API_ERROR: "any other API error (400, 409, 422, 429, redirect, unexpected body)",
    ExitCode.USAGE: "usage: bad command line, argument, setting or input file; an --rpc-url"
    " of the wrong chain; a missing extra",
    ExitCode.AUTH: "authentication: no API key, 401 or 403",
    ExitCode.NOT_FOUND: "not found: 404",
    ExitCode.NETWORK: "network: no usable response, or 5xx after retries",
    ExitCode.VERIFICATION: "verification: a signature did not verify against the trusted signer,"
    " the trust anchors disagree or cannot vouch, or the app is not registered on chain",
    ExitCode.INTERRUPTED: "interrupted: Ctrl-C (SIGINT); `fake-server` exits 0 on SIGINT/SIGTERM",
}
"""Every exit code of ``phala-kms`` and what it means."""


class Failure(Exception):
    """A command stops with its own message, hint and exit code.

    The root group (:mod:`phala_kms.cli._group`) prints it to stderr, redacted and
    made inert, and exits with ``code``; with ``--json`` it also writes it to stdout
    as ``{"error": {...}}``. SDK errors take the same path through
    :mod:`phala_kms.cli._present` instead.

    Args:
        message: What went wrong (printed after ``error:``).
        hint: What to do about it (printed after ``hint:``), or ``None``.
        code: The exit code.
        kind: The ``type`` of the ``--json`` error object (default: the class name
            of ``cause`` when there is one, else ``"CommandError"``).
        cause: The SDK error behind this failure, whose ``status``, ``error_code``
            and ``request_id`` the ``--json`` error object carries.
    """

    def __init__(
        self,
        message: str,
        hint: str | None,
        code: ExitCode,
        *,
        kind: str | None = None,
        cause: BaseException | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint
        self.code = code
        self.cause = cause
        self.kind = kind or (type(cause).__name__ if cause is not None else "CommandError")
