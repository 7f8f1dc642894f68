"""The ``phala-kms`` command: the Phala Cloud KMS API from a shell.

Tables (rich) for people, ``--json`` for machines: with ``--json`` every command
writes one JSON document to stdout whose keys are the models' field names (plus
``extra`` for fields this version does not know). Errors go to stderr as one
message and a hint, never with a traceback for phala-kms's own errors, and never
with the API key or an env-var value in them.

Exit codes (also :data:`EXIT_CODES` and ``phala-kms --help``):

====  ==========================================================================
0     success
1     any other API error (400, 409, 422, 429, a redirect, an unexpected body)
2     usage: bad command line, argument or setting (click's own code)
3     authentication: no API key, 401 or 403
4     not found: 404
5     network: no usable response (refused, DNS, TLS, timeout), or 5xx after retries
6     verification: a public key's signature did not verify against the trusted signer
====  ==========================================================================

One module per concern, imports pointing one way (commands -> presentation ->
settings -> exit codes):

* :mod:`._exit`: :class:`ExitCode`, :data:`EXIT_CODES` and ``Failure``;
* :mod:`._settings`: the global options, ``Settings`` and shared options;
* :mod:`._present`: errors to exit code and hint (one table), JSON and tables;
* :mod:`._logging`: the SDK's log lines on stderr (``-v``, the demo);
* :mod:`._group`: the root group, where every failure becomes an exit code;
* :mod:`._commands`: ``list``, ``contracts``, ``info``, ``onchain``,
  ``next-app-ids``, ``fake-server``;
* :mod:`._keys`: ``pubkey``, ``pubkeys``, ``encrypt-env`` and the trusted signer;
* :mod:`._envfile`: ``.env`` reading;
* :mod:`._demo` and :mod:`._demo_steps`: ``demo``.

Heavy imports (rich, aiohttp, the crypto stack) happen inside the commands, so
``phala-kms --help`` stays fast.
"""

from __future__ import annotations

from ._commands import COMMANDS as _READ_COMMANDS
from ._demo import demo_command
from ._envfile import read_env_file
from ._exit import EXIT_CODES, ExitCode
from ._group import cli
from ._keys import COMMANDS as _KEY_COMMANDS
from ._present import describe_error, exit_code_for, to_jsonable

__all__ = [
    "EXIT_CODES",
    "ExitCode",
    "cli",
    "describe_error",
    "exit_code_for",
    "main",
    "read_env_file",
    "to_jsonable",
]

for _command in (*_READ_COMMANDS, *_KEY_COMMANDS, demo_command):
    cli.add_command(_command)


def main() -> None:
    """The ``phala-kms`` console script."""
    cli(prog_name="phala-kms")
