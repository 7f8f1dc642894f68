"""Reading input files: ``.env`` files for ``encrypt-env`` and app-id lists for
``pubkeys --from-file``. Strict, and never echoing what a file holds.

Every problem is an :class:`InputFileError` (exit code 2, ``error:`` and ``hint:``
lines) naming the file and the line numbers, not the lines: a line that does not
parse may be a pasted secret.
Variable names are quoted only where they are certainly names (``A is set on lines 1
and 2``), made :func:`~phala_kms.cli._output.inert` like everything else printed.
"""

from __future__ import annotations

import codecs
import sys
from collections.abc import Iterable
from typing import BinaryIO

from ._exit import ExitCode, Failure
from ._output import inert

__all__ = ["InputFileError", "decode_input", "read_app_ids", "read_env_file", "read_input"]


class InputFileError(Failure):
    """An input file cannot be used: exit code 2, with what to do about it."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message, hint, ExitCode.USAGE, kind="InputFileError")


STDIN = "-"
"""The path that means standard input."""


def _display(path: str) -> str:
    return "<stdin>" if path == STDIN else inert(path)


_MAX_LINES_SHOWN = 10


def _lines(numbers: Iterable[int]) -> str:
    """``line 3``, ``lines 1 and 2``, ``lines 1, 4 and 7`` (at most ten numbers)."""
    items = [str(number) for number in numbers]
    if len(items) == 1:
        return f"line {items[0]}"
    if len(items) > _MAX_LINES_SHOWN:
        more = len(items) - _MAX_LINES_SHOWN
        return f"lines {', '.join(items[:_MAX_LINES_SHOWN])} and {more} more"
    return f"lines {', '.join(items[:-1])} and {items[-1]}"


def read_input(path: str, stdin: BinaryIO | None = None) -> bytes:
    """The bytes of ``path`` (``-``: stdin).

    Raises:
        InputFileError: The file cannot be read (missing, a directory, no permission).
    """
    if path == STDIN:
        if stdin is not None:
            return stdin.read()
        buffer = getattr(sys.stdin, "buffer", None)
        if buffer is not None:
            data: bytes = buffer.read()
            return data
        return sys.stdin.read().encode("utf-8")  # a text-only stdin (embedding): as given
    try:
        with open(path, "rb") as file:
            return file.read()
    except OSError as err:
        raise InputFileError(
            f"cannot read {_display(path)}: {inert(err.strerror or err)}",
            "check the path and that you may read the file",
        ) from None


def decode_input(data: bytes, path: str, consequence: str) -> str:
    """``data`` decoded as UTF-8 (a leading byte-order mark dropped).

    Args:
        data: The file's bytes.
        path: The file, for the message (``-``: stdin).
        consequence: What did not happen, for the message (``nothing was encrypted``).

    Raises:
        InputFileError: Not UTF-8; the message names the file and the line.
    """
    name = _display(path)
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise InputFileError(
            f"{name} is UTF-16 text (it starts with a UTF-16 byte-order mark), not UTF-8"
            f" ({consequence})",
            "save it as UTF-8, e.g. iconv -f UTF-16 -t UTF-8",
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputFileError(
            f"{name}, line {line}: not UTF-8 text ({consequence})", "save the file as UTF-8"
        ) from None


def read_env_file(
    path: str, *, interpolate: bool = False, allow_empty: bool = False
) -> dict[str, str]:
    """Read a ``.env`` file with python-dotenv (comments, quotes, ``export`` handled).

    Args:
        path: The file, or ``-`` for stdin.
        interpolate: Expand ``${VAR}`` references (from the file and the environment).
        allow_empty: Accept a file that sets no variable (empty, or only comments).

    Returns:
        The variables, in file order.

    Raises:
        InputFileError: The file cannot be read or is not UTF-8; a line cannot be
            parsed; a name is given without ``=``; a name is set twice; or (without
            ``allow_empty``) it sets nothing. The message names the file and the
            line numbers, never a line's text or a value.
    """
    import io

    from dotenv import dotenv_values
    from dotenv.parser import parse_stream

    done = "nothing was encrypted"
    name = _display(path)
    text = decode_input(read_input(path), path, done)

    unparsed: list[int] = []
    bare: list[int] = []
    seen: dict[str, list[int]] = {}
    for binding in parse_stream(io.StringIO(text)):
        original = binding.original.string
        # the parser counts leading blank lines into a binding: report where it starts
        line = binding.original.line + original[: len(original) - len(original.lstrip())].count(
            "\n"
        )
        if binding.error:
            unparsed.append(line)
        elif binding.key is not None and binding.value is None:
            bare.append(line)
        elif binding.key is not None:
            seen.setdefault(binding.key, []).append(line)
    if unparsed:
        raise InputFileError(
            f"{name}, {_lines(unparsed)}: cannot be parsed ({done}; not shown: a line may"
            " hold a secret)",
            "fix the line(s): NAME=value, one a line; quote a value with spaces, # or quotes",
        )
    if bare:
        raise InputFileError(
            f"{name}, {_lines(bare)}: a name without '=' ({done}; not shown: it may be a secret)",
            "write NAME=value, or NAME= for an empty value",
        )
    repeated = [(key, lines) for key, lines in seen.items() if len(lines) > 1]
    if repeated:
        key, lines = repeated[0]
        more = f" (and {len(repeated) - 1} more name(s) twice)" if len(repeated) > 1 else ""
        raise InputFileError(
            f"{name}: {inert(key)} is set on {_lines(lines)}{more} ({done})",
            "keep one line per name: which one was meant is not guessed",
        )
    if not seen and not allow_empty:
        raise InputFileError(
            f"{name} sets no variables: it is empty or only comments ({done})",
            "add NAME=value lines, or pass --allow-empty to encrypt an empty set knowingly",
        )
    values = dotenv_values(stream=io.StringIO(text), interpolate=interpolate)
    return {key: value for key, value in values.items() if value is not None}


def read_app_ids(stream: BinaryIO, path: str) -> list[str]:
    """The app ids of an ``--from-file`` list: one a line, ``#`` comments, blanks skipped.

    Args:
        stream: The file, opened in binary mode.
        path: Its name, for messages (``-``: stdin).

    Returns:
        The ids as written (stripped), in file order.

    Raises:
        InputFileError: Not UTF-8; a line that is not an app id (40 hex digits,
            ``0x`` optional; the message gives its number, not its text); no ids.
    """
    from .._hex import canonical_hex

    done = "nothing was fetched"
    name = _display(path)
    text = decode_input(stream.read(), path, done)
    ids: list[str] = []
    bad: list[int] = []
    for number, line in enumerate(text.splitlines(), 1):
        app_id = line.split("#", 1)[0].strip()
        if not app_id:
            continue
        if canonical_hex(app_id, 20) is None:
            bad.append(number)
        else:
            ids.append(app_id)
    hint = "write one app id a line: 40 hex digits, 0x optional; '#' starts a comment"
    if bad:
        raise InputFileError(
            f"{name}, {_lines(bad)}: not an app id ({done}; not shown: a line may hold a secret)",
            hint,
        )
    if not ids:
        raise InputFileError(f"{name} holds no app ids ({done})", hint)
    return ids
