"""The SDK's log lines (retries and the like) on the command line: ``-v`` and the demo."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator

import click

__all__ = ["enable_sdk_logging", "sdk_log_handler"]


@contextlib.contextmanager
def sdk_log_handler(handler: logging.Handler) -> Iterator[None]:
    """Send the SDK's INFO lines (logger ``phala_kms``) to ``handler`` inside the block.

    The logger's level and handlers are restored on the way out.
    """
    logger = logging.getLogger("phala_kms")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class _StderrHandler(logging.Handler):
    """Writes log lines to whatever ``sys.stderr`` is at the time (click's, in tests),
    redacted and :func:`~phala_kms.cli._output.inert` (they quote the API's text)."""

    def __init__(self, level: int, redact: Callable[[str], str]) -> None:
        super().__init__(level)
        self.redact = redact

    def emit(self, record: logging.LogRecord) -> None:
        from ._output import inert

        try:
            click.echo(inert(self.redact(self.format(record))), err=True)
        except Exception:  # pragma: no cover - logging must never break a command
            self.handleError(record)


def enable_sdk_logging(ctx: click.Context) -> None:
    """Show the SDK's INFO lines (e.g. retries) on stderr until ``ctx`` closes (``-v``)."""
    from ._settings import Settings

    settings = ctx.ensure_object(Settings)
    handler = _StderrHandler(logging.INFO, settings.redact)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    ctx.with_resource(sdk_log_handler(handler))
