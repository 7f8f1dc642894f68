"""Reading ``.env`` files for ``encrypt-env``: strict, and never echoing a value."""

from __future__ import annotations

import logging
import sys

import click

__all__ = ["read_env_file"]


class _Collect(logging.Handler):
    """Keeps the messages of the log records it is handed."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def read_env_file(path: str, *, interpolate: bool = False) -> dict[str, str]:
    """Read a ``.env`` file with python-dotenv (comments, quotes, ``export`` handled).

    Args:
        path: The file, or ``-`` for stdin.
        interpolate: Expand ``${VAR}`` references (from the file and the environment).

    Returns:
        The variables, in file order.

    Raises:
        click.UsageError: A line cannot be parsed, or a name is given without ``=``; the
            message names the line or the name, never a value.
    """
    import io

    from dotenv import dotenv_values

    # python-dotenv only logs a line it cannot parse and carries on: a secret silently
    # missing from a deployment is worse than an error, so such a warning is fatal here.
    dotenv_logger = logging.getLogger("dotenv.main")
    unparsed = _Collect()
    dotenv_logger.addHandler(unparsed)
    try:
        if path == "-":
            values = dotenv_values(stream=io.StringIO(sys.stdin.read()), interpolate=interpolate)
        else:
            values = dotenv_values(path, interpolate=interpolate, encoding="utf-8")
    finally:
        dotenv_logger.removeHandler(unparsed)
    if unparsed.messages:
        raise click.UsageError(
            f"{path}: {unparsed.messages[0]}; fix the file (nothing was encrypted)"
        )
    env: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            raise click.UsageError(
                f"{path}: {name!r} has no value (write {name}= for an empty value)"
            )
        env[name] = value
    return env
