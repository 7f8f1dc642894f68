"""How ``phala-kms`` writes results: untrusted text made inert, strict JSON, and rich
consoles, tables and ``name  value`` fields for people.

Untrusted text: everything the API (or an input file) supplies is printed for people
through :func:`inert`, which shows control characters and escape sequences as
``\\x1b``-style escapes instead of letting the terminal act on them. JSON output is
strict (:func:`to_jsonable`, :func:`dumps`): no ``NaN``, depth-capped, and with the
same characters written as ``\\u`` escapes. :func:`emit_json` writes ``--json``
results. rich is imported only when used.

Errors (exit code, message, hint) are presented by :mod:`phala_kms.cli._present`.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import click

from ._settings import find_settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .._fanout import ProgressCallback

__all__ = [
    "JSON_MAX_DEPTH",
    "add_row",
    "dumps",
    "emit_json",
    "inert",
    "new_table",
    "print_extra",
    "print_fields",
    "print_model",
    "progress_bar",
    "short",
    "stderr",
    "stdout",
    "text",
    "to_jsonable",
]

_PIPE_WIDTH = 200

# --------------------------------------------------------------------------- untrusted text

_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# C0 controls, DEL and C1 controls (U+0080..U+009F: 8-bit CSI, OSC, ... that some
# terminals obey even in UTF-8) are shown as \xNN, so no escape sequence (ESC [ 2 J,
# OSC 52 clipboard writes, ...) reaches the terminal.
_INERT = {
    code: _SHORT_ESCAPES.get(chr(code), f"\\x{code:02x}")
    for code in (*range(0x20), *range(0x7F, 0xA0))
}
# Invisible characters that reorder or hide text (bidi overrides, "Trojan Source";
# zero-width characters; line and paragraph separators) are shown as \uNNNN.
_INVISIBLE = (
    0x061C, 0x180E, *range(0x200B, 0x2010), *range(0x2028, 0x202F),
    *range(0x2060, 0x2065), *range(0x2066, 0x206A), 0xFEFF,
)  # fmt: skip
_INERT.update({code: f"\\u{code:04x}" for code in _INVISIBLE})
_INERT_TABLE = str.maketrans(_INERT)
# In JSON text (where json.dumps already escaped C0), what is left to escape.
_JSON_TABLE = str.maketrans({code: f"\\u{code:04x}" for code in (*range(0x7F, 0xA0), *_INVISIBLE)})


def inert(value: object) -> str:
    """``value`` as text a terminal shows but never acts on.

    Every control character (C0 including newline and tab, DEL, C1) is replaced by
    its escape (``\\x1b``, ``\\n``, ``\\x9b``), and invisible characters that
    reorder or hide text (bidi overrides, zero-width spaces) by ``\\uNNNN``. This is
    the one function through which phala-kms prints text it did not write itself:
    API fields, error messages and bodies, hints quoting them, log lines, names read
    from files. Printable text, including non-ASCII letters, is unchanged.
    """
    return str(value).translate(_INERT_TABLE)


# --------------------------------------------------------------------------- JSON


JSON_MAX_DEPTH = 64
"""How deep :func:`to_jsonable` follows nested values; deeper ones become a marker."""

_TOO_DEEP = f"<nested deeper than {JSON_MAX_DEPTH} levels: not shown>"


def to_jsonable(value: Any, *, _depth: int = 0) -> Any:
    """Turn models (attrs classes), tuples and mappings into strict JSON-ready data.

    An attrs object becomes a dict of its fields in declaration order (``extra``
    included, always a dict), so keys are stable across runs and versions.

    Two kinds of values the API may send in a field this version does not know are
    made safe: a float that is not finite (``NaN``, ``Infinity``, which JSON does
    not have) becomes ``null``, as in JavaScript's ``JSON.stringify``; and anything
    nested more than :data:`JSON_MAX_DEPTH` levels deep is replaced by the string
    ``"<nested deeper than 64 levels: not shown>"``.
    """
    import attrs

    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int)):
        return value
    if _depth >= JSON_MAX_DEPTH:
        return _TOO_DEEP
    depth = _depth + 1
    if attrs.has(type(value)):
        return {
            field.name: to_jsonable(getattr(value, field.name), _depth=depth)
            for field in attrs.fields(type(value))
        }
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item, _depth=depth) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item, _depth=depth) for item in value]
    return value


def dumps(data: Any, *, indent: int | None = 2) -> str:
    """``data`` as strict JSON text, safe on a terminal.

    :func:`to_jsonable` first (no ``NaN``, depth-capped), ``allow_nan=False`` as a
    guard, and the C1 controls and invisible characters that ``json.dumps`` leaves
    raw written as ``\\u`` escapes (still the same JSON string).
    """
    import json

    separators = None if indent is not None else (", ", ": ")
    text = json.dumps(
        to_jsonable(data), indent=indent, ensure_ascii=False, allow_nan=False, separators=separators
    )
    return text.translate(_JSON_TABLE)


def emit_json(data: Any) -> None:
    """Write ``data`` to stdout as one indented, strict JSON document."""
    text = dumps(data)
    settings = find_settings()
    if settings is not None:
        settings.json_written = True
    click.echo(text)


# --------------------------------------------------------------------------- people


@functools.cache
def _console_class() -> type[Console]:
    from rich.console import Console

    class PipeConsole(Console):
        """A console that leaves a closed pipe to the root group (quiet exit 0), where
        rich's own would exit 1."""

        def on_broken_pipe(self) -> None:
            self.quiet = True
            raise BrokenPipeError(errno.EPIPE, "the reader closed the pipe")

    return PipeConsole


def stdout() -> Console:
    """A console on stdout; piped, it is wide enough to keep hex and URLs whole."""
    import os

    console = _console_class()(highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH
    return console


def stderr() -> Console:
    """A console on stderr."""
    return _console_class()(stderr=True, highlight=False)


def short(value: str | None, keep: int = 10) -> str:
    """``value`` cut to its first ``keep`` and last 6 characters (``-`` for ``None``)."""
    if value is None:
        return "-"
    if len(value) <= 2 * keep + 1:
        return value
    return f"{value[:keep]}…{value[-6:]}"


def text(value: Any) -> str:
    """A value as a table shows it: ``-`` for ``None``, ``yes``/``no`` for a bool, a
    mapping or list as compact JSON (depth-capped); not yet :func:`inert`."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (Mapping, list, tuple)):
        return dumps(value, indent=None)
    return str(value)


def print_fields(console: Console, rows: Iterable[tuple[str, Any]]) -> None:
    """Print ``name  value`` lines without wrapping values (hex stays copyable); names
    and values are shown :func:`inert`."""
    from rich.markup import escape

    rows = list(rows)
    width = max((len(inert(name)) for name, _ in rows), default=0)
    for name, value in rows:
        console.print(
            f"[bold]{escape(inert(name).ljust(width))}[/bold]  {escape(inert(text(value)))}",
            soft_wrap=True,
        )


def print_extra(console: Console, extra: Mapping[str, Any]) -> None:
    """Print a model's unknown fields as ``name (extra)  value`` lines."""
    if extra:
        print_fields(console, [(f"{key} (extra)", value) for key, value in extra.items()])


def print_model(console: Console, model: Any, names: Sequence[str], **shown: Any) -> None:
    """Print a model's fields ``names`` as ``name  value`` lines, then its ``extra``.

    Args:
        console: Where to print.
        model: A model with those attributes and ``extra``.
        names: The fields to print, in order.
        **shown: Values to print instead of a field's own, by name.
    """
    print_fields(console, [(name, shown.get(name, getattr(model, name))) for name in names])
    print_extra(console, model.extra)


def new_table(columns: Sequence[str], *, fold: Iterable[str] = (), **options: Any) -> Table:
    """A table with these columns: ``fold`` ones wrap, the others never do.

    Args:
        columns: The column headers.
        fold: The columns whose values may wrap (long URLs, error messages).
        **options: Passed to ``rich.table.Table`` (``caption``, ``title``, ...).
    """
    from rich.table import Table

    folded = set(fold)
    table = Table(**options)
    for column in columns:
        if column in folded:
            table.add_column(column, overflow="fold")
        else:
            table.add_column(column, no_wrap=True)
    return table


def add_row(table: Table, *values: str | Text) -> None:
    """Add a row; plain ``str`` values (API data) are shown :func:`inert` and never read
    as rich markup. A ``Text`` is added as is: build it from :func:`inert` text."""
    from rich.text import Text

    table.add_row(*(Text(inert(value)) if isinstance(value, str) else value for value in values))


@contextlib.contextmanager
def progress_bar(label: str, total: int, *, transient: bool = False) -> Iterator[ProgressCallback]:
    """A progress bar on stderr (shown only on a terminal) for a key fan-out.

    Yields:
        An ``on_progress(done, total)`` callback that moves the bar.
    """
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    console = stderr()
    with Progress(
        TextColumn(label),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=transient,
        disable=not console.is_terminal,
    ) as progress:
        task = progress.add_task(label, total=total)

        def on_progress(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        yield on_progress
