"""The ``phala-kms`` command: the Phala Cloud KMS API from a shell.

It needs the ``[cli]`` extra (click, rich, python-dotenv): ``pip install -e '.[cli]'``
from a checkout (phala-kms is not on PyPI yet; once it is, ``pip install
'phala-kms[cli]'``). Without it the command says so and exits 2.

Tables (rich) for people, ``--json`` for machines: with ``--json`` every command
writes one JSON document to stdout whose keys are the models' field names (plus
``extra`` for fields this version does not know); the JSON is strict (no ``NaN``:
a non-finite number in an unknown field becomes ``null``; values nested deeper than
64 levels become a ``"<nested deeper than 64 levels: not shown>"`` marker).

Failures: ``error:`` and ``hint:`` lines on stderr, never a traceback for anything a
user can cause (bad arguments, bad files or bytes in them, Ctrl-C, a closed pipe),
and never with the API key or an env-var value in them. With ``--json`` a failure
also writes one JSON object to stdout::

    {"error": {"type": "NotFoundError", "message": "...", "status": 404,
               "error_code": "ERR-02-011", "request_id": "req_...",
               "exit_code": 4, "hint": "..."}}

(``status``, ``error_code`` and ``request_id`` are ``null`` when the API gave none;
a command that already wrote its JSON document, such as ``pubkeys`` with some failed
ids or ``demo``, reports the failure in that document and on stderr instead.)

Text the API supplies (fields, error messages, log lines) is printed for people with
its control characters and escape sequences shown escaped (``\\x1b``), never acted
on by the terminal (:func:`~phala_kms.cli._output.inert`).

Exit codes (also :data:`EXIT_CODES` and ``phala-kms --help``):

====  ==========================================================================
0     success; also when the reader closes stdout early (``| head``): the
      output stops quietly, without an error
1     any other API error (400, 409, 422, 429, a redirect, an unexpected body), a
      failed ``demo`` check, or a bug in phala-kms (with a traceback)
2     usage: bad command line, argument or setting (click's own code), an input
      file that cannot be read (not UTF-8, a line that does not parse, duplicate
      names, no variables), env vars the TEE would refuse or drop, an
      ``--rpc-url`` of another chain than the KMS contract's, or the ``[cli]``
      extra (or, for ``--anchor chain``, its eth-abi) not installed
3     authentication: no API key, 401 or 403
4     not found: 404
5     network: no usable response (refused, DNS, TLS, timeout), or 5xx after retries
6     verification: a public key's signature did not verify against the trusted
      signer (or is legacy-only under ``--require-timestamped``); the trust anchors
      disagree or one cannot vouch; the app is not registered on chain
130   interrupted: Ctrl-C (SIGINT) stopped the command
====  ==========================================================================

``phala-kms fake-server`` is the exception to 130: it runs until stopped, so SIGINT
(Ctrl-C) and SIGTERM both stop it cleanly (the server closed) with exit code 0, even
when its parent ignored SIGINT. Any other command killed by a signal gets what the
shell reports for it (128 + the signal number, e.g. 143 for SIGTERM).

One module per concern, imports pointing one way (commands -> presentation ->
settings -> exit codes):

* :mod:`._exit`: :class:`ExitCode`, :data:`EXIT_CODES` and ``Failure`` (standard
  library only);
* :mod:`._settings`: the global options, ``Settings`` and shared options;
* :mod:`._present`: errors to exit code and hint (one table), ``error:`` lines and
  the ``--json`` error object;
* :mod:`._output`: untrusted text made inert, strict JSON, consoles and tables;
* :mod:`._logging`: the SDK's log lines on stderr (``-v``, the demo);
* :mod:`._group`: the root group, where every failure becomes an exit code;
* :mod:`._commands`: ``list``, ``contracts``, ``info``, ``onchain``,
  ``next-app-ids``, ``fake-server``;
* :mod:`._trust`: the trust options (``--anchor`` ...), mapped onto the SDK's
  ``get_trusted_signer``, and how what was verified is shown;
* :mod:`._keys`: ``pubkey``, ``pubkeys``;
* :mod:`._encrypt`: ``encrypt-env``;
* :mod:`._envfile`: reading ``.env`` and app-id files;
* :mod:`._demo`, :mod:`._demo_steps`, :mod:`._demo_chain` and :mod:`._step`: ``demo``
  (the run and summary; steps 1 to 10; the chain of trust, 11 to 14; one step's record).

Importing this package imports neither click nor rich: :func:`main` checks for the
``[cli]`` extra first, and the other names load on first use. Heavy imports (rich,
aiohttp, the crypto stack) happen inside the commands, so ``phala-kms --help`` stays
fast.
"""

from __future__ import annotations

import importlib.util
import sys
from typing import TYPE_CHECKING

from .._lazy import lazy_attributes
from ._exit import EXIT_CODES, ExitCode

if TYPE_CHECKING:
    from ._envfile import read_env_file
    from ._group import cli
    from ._output import to_jsonable
    from ._present import describe_error, exit_code_for

__all__ = [
    "CLI_REQUIREMENTS",
    "EXIT_CODES",
    "ExitCode",
    "INSTALL_HINT",
    "cli",
    "describe_error",
    "exit_code_for",
    "main",
    "read_env_file",
    "to_jsonable",
]

CLI_REQUIREMENTS: dict[str, str] = {
    "click": "click",
    "rich": "rich",
    "dotenv": "python-dotenv",
}
"""The modules the command line needs (the ``[cli]`` extra) -> their distributions."""

INSTALL_HINT = (
    "install the [cli] extra: pip install 'phala-kms[cli]'"
    " (from a checkout: pip install -e '.[cli]')"
)
"""What to do when the ``[cli]`` extra is missing."""


def _missing_requirements() -> list[str]:
    """The distributions of :data:`CLI_REQUIREMENTS` that cannot be imported."""
    missing = []
    for module, distribution in CLI_REQUIREMENTS.items():
        try:
            found = importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            missing.append(distribution)
    return missing


def _requirements_failure(missing: list[str]) -> int:
    """Say which of the ``[cli]`` extra is missing and what to install; exit code 2."""
    import json

    names = ", ".join(missing[:-1]) + " and " + missing[-1] if len(missing) > 1 else missing[0]
    verb = "are" if len(missing) > 1 else "is"
    message = f"the phala-kms command needs {names}, which {verb} not installed"
    print(f"error: {message}", file=sys.stderr)
    print(f"hint: {INSTALL_HINT}", file=sys.stderr)
    if "--json" in sys.argv[1:]:
        error = {
            "type": "MissingDependency",
            "message": message,
            "status": None,
            "error_code": None,
            "request_id": None,
            "exit_code": int(ExitCode.USAGE),
            "hint": INSTALL_HINT,
        }
        print(json.dumps({"error": error}, indent=2))
    return int(ExitCode.USAGE)


def main() -> None:
    """The ``phala-kms`` console script.

    Checks that the ``[cli]`` extra is installed before importing click: without it
    the command prints what to install and exits 2 instead of dying on an
    ``ImportError``.
    """
    missing = _missing_requirements()
    if not missing:
        try:
            from ._group import cli
        except ImportError as err:  # installed but broken, or blocked by an import hook
            name = (err.name or "").split(".")[0]
            if name not in CLI_REQUIREMENTS:
                raise
            missing = [CLI_REQUIREMENTS[name]]
        else:
            cli(prog_name="phala-kms")
            return
    sys.exit(_requirements_failure(missing))


_LAZY = {
    "cli": "_group",
    "describe_error": "_present",
    "exit_code_for": "_present",
    "read_env_file": "_envfile",
    "to_jsonable": "_output",
}

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY, __all__)
