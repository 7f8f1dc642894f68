"""How ``phala-kms`` presents things: errors (exit code, message, hint) and results.

Errors: :data:`ERROR_TABLE` maps each error class of :mod:`phala_kms.errors` to the
rules for it, each an exit code and a hint. :func:`rule_for` walks the error's MRO and
takes the first rule of the first class in the table whose condition holds, so a
subclass without an entry gets its nearest ancestor's rule, and both the exit code
(:func:`exit_code_for`) and the hint (:func:`hint_for`) come from that one rule.
:func:`report` prints ``error:`` / ``hint:`` lines; :func:`error_json` is the same
failure as the ``{"error": {...}}`` object ``--json`` writes to stdout.

Untrusted text: everything the API (or an input file) supplies is printed for people
through :func:`inert`, which shows control characters and escape sequences as
``\\x1b``-style escapes instead of letting the terminal act on them. JSON output is
strict (:func:`to_jsonable`, :func:`dumps`): no ``NaN``, depth-capped, and with the
same characters written as ``\\u`` escapes.

Results: :func:`to_jsonable` and :func:`emit_json` for ``--json``; rich consoles,
tables and ``name  value`` fields for people. rich is imported only when used.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import click

from .. import errors
from .._constants import ENV_API_KEY, ENV_BASE_URL
from ._exit import ExitCode
from ._settings import Settings

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from .._fanout import ProgressCallback

__all__ = [
    "ERROR_TABLE",
    "JSON_MAX_DEPTH",
    "Rule",
    "add_row",
    "describe_error",
    "dumps",
    "emit_json",
    "error_json",
    "exit_code_for",
    "hint_for",
    "inert",
    "new_table",
    "print_extra",
    "print_fields",
    "print_model",
    "progress_bar",
    "report",
    "rule_for",
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


# --------------------------------------------------------------------------- errors


class Rule(NamedTuple):
    """What the command line does with an error: its exit code and its hint.

    Attributes:
        code: The exit code.
        hint: The hint, or a function of the error giving it.
        when: A condition on the error; ``None`` always holds.
    """

    code: ExitCode
    hint: str | Callable[[Any], str]
    when: Callable[[Any], bool] | None = None


def _bad_signer_input(err: errors.SignatureVerificationError) -> bool:
    """The caller's input, not the key, is at fault."""
    return err.reason in ("invalid_trusted_signer", "invalid_argument")


def _kms_not_found(err: errors.NotFoundError) -> bool:
    """A 404 of the KMS route, or one without the API's structured body (a wrong prefix)."""
    return (err.url or "").rstrip("/").endswith("/kms") or not err.error_code


def _tries(err: errors.TransportError) -> str:
    plural = "s" if err.attempts != 1 else ""
    return f"check --base-url / {ENV_BASE_URL} and your network (tried {err.attempts} time{plural})"


def _rate_limited(err: errors.RateLimitError) -> str:
    wait = f" {err.retry_after:g} s" if err.retry_after is not None else " a while"
    return f"rate limited: wait{wait} and try again"


def _reason(*reasons: str) -> Callable[[errors.SignatureVerificationError], bool]:
    """A rule's condition: the verification error has one of these ``reason`` s."""
    return lambda err: err.reason in reasons


# The SDK's argument names -> the options of the key commands that set them.
_OPTION_OF = {
    "pinned": "--trusted-signer",
    "sources": "--anchor",
    "rpc_url": "--rpc-url",
    "node_url": "--node-url",
    "node_urls": "--node-url",
    "from_node": "--from-node",
    "ssl_context": "--ca-file",
    "cvm_id": "--cvm",
    "allowed_envs": "--allowed-envs / --app-compose / --docker-compose",
    "app_compose": "--app-compose",
    "docker_compose": "--docker-compose",
    "env_vars": "--env-file against the TEE's limits, --allowed-envs / --app-compose /"
    " --docker-compose, and --allow-empty",
}


def _check_argument(err: errors.InvalidArgumentError) -> str:
    option = _OPTION_OF.get(err.argument or "")
    return f"check {option}; see --help" if option else "check the arguments; see --help"


_PREFIX_HINT = f"check --base-url / {ENV_BASE_URL}: it must be the API prefix ending in /api/v1"
_SIGNER_HINT = (
    "--trusted-signer must be the KMS root key (k256_pubkey: 33 or 65 bytes"
    " as hex) or its 20-byte Ethereum address; see `phala-kms info` / `onchain`"
)

ERROR_TABLE: Mapping[type[BaseException], tuple[Rule, ...]] = {
    errors.AuthenticationError: (
        Rule(ExitCode.AUTH, f"check {ENV_API_KEY} (or --api-key): the API did not accept the key"),
    ),
    errors.PermissionDeniedError: (
        Rule(
            ExitCode.AUTH,
            f"check {ENV_API_KEY} (or --api-key): the key was refused or lacks access;"
            " create a new one in the Phala Cloud dashboard",
        ),
    ),
    errors.ConfigurationError: (
        Rule(
            ExitCode.AUTH,
            f"set {ENV_API_KEY} or pass --api-key (printable ASCII, e.g. phak_...)",
            when=lambda err: err.setting == "api_key",
        ),
        Rule(
            ExitCode.USAGE,
            "eth-abi, which the [cli] extra brings, is missing: reinstall with"
            " pip install 'phala-kms[cli]' (from a checkout: pip install -e '.[cli]';"
            " the SDK alone: 'phala-kms[chain]'), or drop --anchor chain / --check-registered",
            when=lambda err: err.setting == "chain",
        ),
        Rule(ExitCode.USAGE, f"check --base-url / {ENV_BASE_URL} and the other global options"),
    ),
    errors.InvalidArgumentError: (Rule(ExitCode.USAGE, _check_argument),),
    errors.NotFoundError: (
        Rule(
            ExitCode.NOT_FOUND,
            "check the id or slug (`phala-kms list --all` shows every KMS), and that"
            f" --base-url / {ENV_BASE_URL} is the API prefix ending in /api/v1",
            when=_kms_not_found,
        ),
        Rule(ExitCode.NOT_FOUND, "check the id or slug; `phala-kms list --all` shows every KMS"),
    ),
    errors.SignatureVerificationError: (
        Rule(ExitCode.USAGE, _SIGNER_HINT, when=_bad_signer_input),
        # --rpc-url serves another chain than the KMS contract's: the caller's setting is
        # wrong (nothing was read from that chain), so usage, like a malformed signer
        Rule(
            ExitCode.USAGE,
            "--rpc-url must be a JSON-RPC endpoint of the chain the KMS contract is on"
            " (its chain_id: see `phala-kms contracts`); nothing was read from the other chain",
            when=_reason("wrong_chain"),
        ),
        Rule(
            ExitCode.VERIFICATION,
            "do not encrypt to this key: the KMS sent only the legacy signature (no"
            " timestamp, replayable) and --require-timestamped refuses it; drop that option"
            " only if you accept a key that an old signature vouches for",
            when=_reason("legacy_signature"),
        ),
        Rule(
            ExitCode.VERIFICATION,
            "do not encrypt to this key: its timestamp and signature_v1 do not come"
            " together (one was stripped or added on the way); try again, and report it"
            " if it persists",
            when=_reason("incomplete_signature_v1"),
        ),
        Rule(
            ExitCode.VERIFICATION,
            "do not encrypt: the trust anchors disagree on the KMS root key (each source and"
            " its key are listed above); find out which is wrong: a stale --trusted-signer"
            " after a key rotation, an --rpc-url or --node-url of another KMS, or the API",
            when=_reason("anchor_mismatch"),
        ),
        Rule(
            ExitCode.VERIFICATION,
            "that trust anchor cannot vouch for the root key (no contract or kmsInfo at the"
            " address, an off-chain KMS for --anchor chain, a node without a key, or an RPC"
            " error); check --rpc-url / --node-url, or drop that --anchor",
            when=_reason("anchor_unavailable"),
        ),
        Rule(
            ExitCode.VERIFICATION,
            "that trust anchor answered something that is not a root key (malformed ABI"
            " data, or not a secp256k1 key); check --rpc-url / --node-url point at the"
            " KMS's own chain and nodes",
            when=_reason("malformed_anchor"),
        ),
        Rule(
            ExitCode.VERIFICATION,
            "nothing was encrypted: the KMS contract does not list this app id"
            " (registeredApps is false), so its CVM could not get keys from this KMS;"
            " check the app id and the KMS",
            when=_reason("app_not_registered"),
        ),
        Rule(
            ExitCode.VERIFICATION,
            "do not encrypt to this key: it is not proven to come from the trusted KMS;"
            " check --trusted-signer (the KMS's k256_pubkey) and the KMS/app id",
        ),
    ),
    errors.APITimeoutError: (
        Rule(
            ExitCode.NETWORK, "the API did not answer in time; raise --timeout or try again later"
        ),
    ),
    errors.TransportError: (Rule(ExitCode.NETWORK, _tries),),
    errors.ServerError: (
        Rule(
            ExitCode.NETWORK,
            lambda err: f"the API failed after {err.attempts} attempt(s); try again later",
        ),
    ),
    errors.RateLimitError: (Rule(ExitCode.API_ERROR, _rate_limited),),
    errors.RedirectError: (Rule(ExitCode.API_ERROR, _PREFIX_HINT),),
    errors.ResponseValidationError: (
        Rule(
            ExitCode.API_ERROR,
            "the API answered with an unexpected shape; check --base-url and --api-version,"
            " or upgrade phala-kms",
        ),
    ),
    errors.UnprocessableEntityError: (
        Rule(
            ExitCode.API_ERROR, "the API rejected a parameter; see --help for the accepted values"
        ),
    ),
    errors.ClientStateError: (
        Rule(ExitCode.API_ERROR, "this is a bug in phala-kms; please report it"),
    ),
    errors.PhalaKMSError: (Rule(ExitCode.API_ERROR, "see --help"),),
}
"""Error class -> its rules, tried in order; the first class in the error's MRO wins."""

_FALLBACK = Rule(ExitCode.API_ERROR, "see --help")


def rule_for(err: BaseException) -> Rule:
    """The rule for ``err``: the first matching rule of the nearest class in the table."""
    for cls in type(err).__mro__:
        for rule in ERROR_TABLE.get(cls, ()):
            if rule.when is None or rule.when(err):
                return rule
    return _FALLBACK


def exit_code_for(err: BaseException) -> ExitCode:
    """The exit code for an exception raised by phala-kms (1 for anything unknown)."""
    return rule_for(err).code


def hint_for(err: BaseException) -> str:
    """What to do about ``err``, in one line."""
    hint = rule_for(err).hint
    return hint if isinstance(hint, str) else hint(err)


def describe_error(err: errors.PhalaKMSError) -> str:
    """One line: the error's type and message, plus the request id if it is missing.

    The SDK's messages already carry the status, error code, request id and URL.
    """
    text = f"{type(err).__name__}: {err.message}"
    request_id = getattr(err, "request_id", None)
    if request_id and request_id not in text:
        text += f" (request id {request_id})"
    return text


def _settings(settings: Settings | None) -> Settings | None:
    if settings is not None:
        return settings
    ctx = click.get_current_context(silent=True)
    return ctx.find_object(Settings) if ctx is not None else None


def report(message: str, hint: str | None, settings: Settings | None = None) -> None:
    """Print ``error: message`` and ``hint: hint`` to stderr, redacted and inert.

    Args:
        message: What went wrong.
        hint: What to do about it, or ``None``.
        settings: Whose secrets to redact (default: the current command's).
    """
    settings = _settings(settings)
    lines = [f"error: {message}"] + ([f"hint: {hint}"] if hint else [])
    for line in lines:
        click.echo(inert(settings.redact(line) if settings is not None else line), err=True)


def error_json(
    kind: str,
    message: str,
    code: int,
    hint: str | None,
    cause: BaseException | None = None,
    settings: Settings | None = None,
) -> dict[str, Any]:
    """A failure as the ``--json`` error object: ``{"error": {...}}``.

    Its keys are always ``type``, ``message``, ``status``, ``error_code``,
    ``request_id``, ``exit_code`` and ``hint``; the three in the middle come from
    the API's answer (``cause``) and are ``null`` when there was none.

    Args:
        kind: The ``type``: the SDK error's class name, or ``UsageError``,
            ``Interrupted``, ``InternalError``, ...
        message: What went wrong (redacted here).
        code: The exit code.
        hint: What to do about it (redacted here), or ``None``.
        cause: The SDK error behind it, or ``None``.
        settings: Whose secrets to redact (default: the current command's).
    """
    settings = _settings(settings)

    def clean(value: str | None) -> str | None:
        return settings.redact(value) if settings is not None and value is not None else value

    status = getattr(cause, "status", None)
    return {
        "error": {
            "type": kind,
            "message": clean(message),
            "status": status if isinstance(status, int) and status > 0 else None,
            "error_code": getattr(cause, "error_code", None) or None,
            "request_id": getattr(cause, "request_id", None) or None,
            "exit_code": int(code),
            "hint": clean(hint),
        }
    }


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
    settings = _settings(None)
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
