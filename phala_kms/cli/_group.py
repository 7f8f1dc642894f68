"""The root ``phala-kms`` group: global options, ``--verbose``, ``--version``, and the one
place where a command's failure becomes a message and an exit code."""

from __future__ import annotations

import traceback
from typing import Any

import click

from .._version import __version__
from ..errors import PhalaKMSError
from ._exit import EXIT_CODES, ExitCode, Failure
from ._logging import enable_sdk_logging
from ._present import describe_error, exit_code_for, hint_for, report
from ._settings import Settings, global_options

__all__ = ["cli"]

_EPILOG = (
    "\b\nExit codes:\n"
    + "\n".join(f"  {int(code)}  {text}" for code, text in EXIT_CODES.items())
    + "\n\n\b\nExamples:\n"
    "  phala-kms demo            # the whole SDK against an embedded fake\n"
    "  phala-kms --json list --all | jq '.items[].id'\n"
    "  phala-kms onchain base    # the Base KMS contract and its k256_pubkey\n"
    "  phala-kms pubkey base <app id> --trusted-signer 0x02...\n"
    "  phala-kms encrypt-env base <app id> --env-file .env --trusted-signer 0x02..."
)


class _Group(click.Group):
    """A group that turns failures into one message, a hint and an exit code.

    :class:`~phala_kms.cli._exit.Failure` and phala-kms's own errors print no
    traceback; any other exception is a bug and prints one, with secrets redacted.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except Failure as failure:
            report(failure.message, failure.hint)
            ctx.exit(int(failure.code))
        except PhalaKMSError as err:
            report(describe_error(err), hint_for(err))
            ctx.exit(int(exit_code_for(err)))
        except Exception as err:  # an unexpected bug: a traceback, with secrets redacted
            settings = ctx.find_object(Settings)
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            if settings is not None:
                text = settings.redact(text)
            click.echo(text.rstrip(), err=True)
            click.echo("error: unexpected internal error (see above); please report it", err=True)
            ctx.exit(int(ExitCode.API_ERROR))


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
    ctx.obj = Settings(**options)
    if verbose:
        enable_sdk_logging(ctx)
