"""The root ``phala-kms`` group: global options, ``--verbose``, ``--version``, and the one
place where a failure becomes a message and an exit code (:meth:`_Group.main`).

Whatever ends a run, it ends with ``error:`` (and usually ``hint:``) on stderr and a
documented exit code (:data:`~phala_kms.cli.EXIT_CODES`), never a traceback for
something a user can cause:

* phala-kms's own errors: the exit code and hint of :data:`~._present.ERROR_TABLE`;
* a command's :class:`~._exit.Failure`: its own message, hint and code;
* click's usage errors: click's message, exit code 2;
* Ctrl-C (``KeyboardInterrupt``) anywhere: ``error: interrupted``, exit code 130;
* stdout closed by the reader (``| head``: ``BrokenPipeError``): nothing more is
  written and the exit code is 0, the reader having taken what it wanted;
* anything else is a bug: a traceback (redacted) and exit code 1.

With ``--json`` a failure also writes ``{"error": {...}}`` (:func:`~._present.error_json`)
to stdout, unless the command already wrote its JSON document there.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sys
import traceback
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import click

from .._version import __version__
from ..errors import PhalaKMSError
from ._exit import EXIT_CODES, ExitCode, Failure
from ._logging import enable_sdk_logging
from ._output import emit_json, inert
from ._present import describe_error, error_json, exit_code_for, hint_for, report
from ._settings import Settings, global_options

__all__ = ["cli"]

_EPILOG = (
    "\b\nExit codes:\n"
    + "\n".join(f"  {int(code):<3}  {text}" for code, text in EXIT_CODES.items())
    + "\n\n\b\nExamples:\n"
    "  phala-kms demo            # the whole SDK against an embedded fake\n"
    "  phala-kms --json list --all | jq '.items[].id'\n"
    "  phala-kms onchain base    # the Base KMS contract and its k256_pubkey\n"
    "  phala-kms pubkey base <app id> --trusted-signer 0x02...\n"
    "  phala-kms pubkey base <app id> --anchor chain --anchor api --rpc-url https://mainnet.base.org\n"
    "  phala-kms encrypt-env base <app id> --env-file .env --trusted-signer 0x02..."
)

_INTERRUPTED_HINT = "nothing more was done; run the command again to finish it"


class _Interrupted(Exception):
    """Ctrl-C inside a command, carried past click (which would turn it into exit 1)."""


class _BrokenPipe(Exception):
    """A closed stdout, carried past click (which would exit 1 on it)."""


@contextlib.contextmanager
def _past_click() -> Iterator[None]:
    """Carry Ctrl-C and a closed pipe past click's own handling, to :meth:`_Group.main`."""
    try:
        yield
    except KeyboardInterrupt:
        raise _Interrupted from None
    except OSError as err:
        if not _is_broken_pipe(err):
            raise
        raise _BrokenPipe from None


def _is_broken_pipe(err: BaseException) -> bool:
    """stdout (or stderr) was closed by the reader: ``| head``, ``| grep -m1``."""
    return isinstance(err, (BrokenPipeError, _BrokenPipe)) or (
        isinstance(err, OSError) and err.errno == errno.EPIPE
    )


def _silence_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's final flush of what
    is still buffered for a closed pipe cannot fail (and print) on the way out."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # not a real file (tests): nothing to do
        pass


def _wants_json(settings: Settings, args: Sequence[str]) -> bool:
    """``--json`` was given, even if parsing stopped before it was read."""
    if settings.json_output:
        return True
    words = list(args)
    words = words[: words.index("--")] if "--" in words else words
    return "--json" in words


class _Group(click.Group):
    """The root group: runs a command and turns every way it can end into an exit code."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        with _past_click():  # --help, --version and their output
            return super().make_context(info_name, args, parent, **extra)

    def invoke(self, ctx: click.Context) -> Any:
        with _past_click():
            return super().invoke(ctx)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        """Run ``phala-kms`` and exit with its code (see the module docstring).

        With ``standalone_mode=False`` this is click's own ``main``: exceptions reach
        the caller.
        """
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, False, **extra)
        argv = list(sys.argv[1:] if args is None else args)
        settings = extra.setdefault("obj", Settings())
        if not isinstance(settings, Settings):  # pragma: no cover - a caller's own obj
            settings = Settings()
        code = int(ExitCode.OK)
        try:
            try:
                result = super().main(args, prog_name, complete_var, False, **extra)
                code = result if type(result) is int else int(ExitCode.OK)
                sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
            except Exception as err:
                if _is_broken_pipe(err):
                    raise
                code, show = _outcome(err, settings, _wants_json(settings, argv))
                show()
            except KeyboardInterrupt as err:
                code, show = _outcome(err, settings, _wants_json(settings, argv))
                show()
        except KeyboardInterrupt:  # a second Ctrl-C while reporting
            code = int(ExitCode.INTERRUPTED)
        except Exception as err:
            if not _is_broken_pipe(err):
                raise
            # The reader has what it wanted: stop quietly, keeping the code of a
            # failure already being reported.
            _silence_stdout()
        sys.exit(code)


def _failure(
    settings: Settings,
    json_output: bool,
    kind: str,
    message: str,
    hint: str | None,
    code: int,
    cause: BaseException | None = None,
    json_message: str | None = None,
) -> tuple[int, Callable[[], None]]:
    """A failure's exit code, and how to show it: ``error:`` / ``hint:`` on stderr,
    and with ``--json`` the error object on stdout (unless a document is there), whose
    ``message`` is ``json_message`` when given."""

    def show() -> None:
        report(message, hint, settings)
        if json_output and not settings.json_written:
            text = message if json_message is None else json_message
            emit_json(error_json(kind, text, code, hint, cause, settings))

    return int(code), show


def _outcome(
    err: BaseException, settings: Settings, json_output: bool
) -> tuple[int, Callable[[], None]]:
    """Whatever ended the run, as its exit code and how to show it."""
    if isinstance(err, (_Interrupted, KeyboardInterrupt, click.Abort, EOFError)):

        def interrupted() -> None:
            if sys.stderr.isatty() and not isinstance(err, click.Abort):
                click.echo(err=True)  # end the terminal's "^C" line (click did for Abort)
            show()

        code, show = _failure(
            settings, json_output, "Interrupted", "interrupted (Ctrl-C)", _INTERRUPTED_HINT,
            ExitCode.INTERRUPTED,
        )  # fmt: skip
        return code, interrupted
    if isinstance(err, click.ClickException):
        click_err = err

        def show_click() -> None:
            click_err.show()
            if json_output and not settings.json_written:
                hint = "see --help" if isinstance(click_err, click.UsageError) else None
                message = click_err.format_message()
                emit_json(error_json(type(click_err).__name__, message, click_err.exit_code, hint))

        return err.exit_code, show_click
    if isinstance(err, Failure):
        return _failure(settings, json_output, err.kind, err.message, err.hint, err.code, err.cause)
    if isinstance(err, PhalaKMSError):
        return _failure(
            settings, json_output, type(err).__name__, describe_error(err), hint_for(err),
            exit_code_for(err), err, json_message=err.message,
        )  # fmt: skip
    # anything else is a bug: a traceback, with secrets redacted and control characters inert
    code, report_bug = _failure(
        settings, json_output, "InternalError", f"unexpected internal error: {type(err).__name__}",
        "this is a bug in phala-kms (traceback above); please report it", ExitCode.API_ERROR,
    )  # fmt: skip

    def show_bug() -> None:
        text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
        for line in settings.redact(text).rstrip().splitlines():
            click.echo(inert(line), err=True)
        report_bug()

    return code, show_bug


@click.group(cls=_Group, epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@global_options
@click.option("-v", "--verbose", is_flag=True, help="Log retries and other SDK events to stderr.")
@click.version_option(__version__, "--version", message="phala-kms %(version)s")
@click.pass_context
def cli(ctx: click.Context, /, verbose: bool, **options: Any) -> None:
    """Query the Phala Cloud KMS API, verify app keys and encrypt env vars.

    Without PHALA_CLOUD_API_KEY, try `phala-kms demo`: it runs the whole SDK against
    an embedded fake of the API.
    """
    ctx.ensure_object(Settings).update(**options)
    if verbose:
        enable_sdk_logging(ctx)


def _add_commands() -> None:
    from ._commands import COMMANDS as READ_COMMANDS
    from ._demo import demo_command
    from ._encrypt import COMMANDS as ENCRYPT_COMMANDS
    from ._keys import COMMANDS as KEY_COMMANDS

    for command in (*READ_COMMANDS, *KEY_COMMANDS, *ENCRYPT_COMMANDS, demo_command):
        cli.add_command(command)


_add_commands()
