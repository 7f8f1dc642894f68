"""One step of ``phala-kms demo``: its record, the checks that fail or skip it, and how
its error reads and exits.

:mod:`phala_kms.cli._demo_steps` and :mod:`phala_kms.cli._demo_chain` write the steps
with these; :mod:`phala_kms.cli._demo` sums them up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..errors import PhalaKMSError
from ._present import describe_error, exit_code_for, hint_for

if TYPE_CHECKING:
    from ..testing import FakeKMSServer

__all__ = [
    "Skip",
    "Step",
    "StepFailed",
    "check",
    "duration",
    "error_text",
    "failure_hint",
    "require",
    "require_fake",
]


class StepFailed(Exception):
    """A step's result did not pass its check."""


class Skip(Exception):
    """A step cannot run here (it needs the embedded fake, or an earlier step failed)."""


def error_text(err: BaseException) -> str:
    """A step's error in one line (not yet :func:`~phala_kms.cli._output.inert`)."""
    if isinstance(err, PhalaKMSError):
        return describe_error(err)
    if isinstance(err, (StepFailed, Skip)):
        return str(err)
    return f"{type(err).__name__}: {err}"


def failure_hint(err: BaseException) -> tuple[int, str]:
    """The exit code and hint for a step's error: the error table's for an SDK error
    (as every other command gives), else for a failed check or a bug."""
    if isinstance(err, PhalaKMSError):
        return int(exit_code_for(err)), hint_for(err)
    if isinstance(err, StepFailed):
        return 1, (
            "the API answered, but not as the step expects (see the FAIL step above);"
            " check --base-url / --api-version, or report it with the --json output"
        )
    return 1, "this is a bug in phala-kms (see the FAIL step above); please report it"


def duration(seconds: float) -> str:
    """``seconds`` for people: milliseconds under one second."""
    if seconds < 1:
        return f"{seconds * 1000:.1f} ms"
    return f"{seconds:.2f} s"


class Step:
    """One step: its title, and once run its status, time, details and error."""

    def __init__(self, number: int, title: str) -> None:
        self.number = number
        self.title = title
        self.status = "pending"
        self.seconds = 0.0
        self.details: list[str] = []
        self.error: BaseException | None = None

    def as_json(self) -> dict[str, Any]:
        """The step as it appears in the ``--json`` report."""
        return {
            "number": self.number,
            "title": self.title,
            "status": self.status,
            "seconds": round(self.seconds, 4),
            "details": self.details,
            "error": None if self.error is None else error_text(self.error),
        }


def check(condition: bool, message: str) -> None:
    """Fail the step with ``message`` unless ``condition`` holds."""
    if not condition:
        raise StepFailed(message)


def require(value: Any, what: str) -> None:
    """Skip the step unless an earlier step produced ``value``."""
    if not value:
        raise Skip(f"skipped: needs {what} from an earlier step")


def require_fake(server: FakeKMSServer | None) -> FakeKMSServer:
    """The embedded fake; skips the step against a real API (``server`` is ``None``)."""
    if server is None:
        raise Skip("skipped: needs the embedded fake (run without --base-url/--api-key)")
    return server
