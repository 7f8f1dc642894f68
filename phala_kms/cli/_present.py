"""How ``phala-kms`` presents errors: exit code, message and hint.

:data:`ERROR_TABLE` maps each error class of :mod:`phala_kms.errors` to the rules for
it, each an exit code and a hint. :func:`rule_for` walks the error's MRO and takes the
first rule of the first class in the table whose condition holds, so a subclass
without an entry gets its nearest ancestor's rule, and both the exit code
(:func:`exit_code_for`) and the hint (:func:`hint_for`) come from that one rule.
:func:`report` prints ``error:`` / ``hint:`` lines (redacted and
:func:`~phala_kms.cli._output.inert`); :func:`error_json` is the same failure as the
``{"error": {...}}`` object ``--json`` writes to stdout. Results are written by
:mod:`phala_kms.cli._output`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import click

from .. import errors
from .._constants import ENV_API_KEY, ENV_BASE_URL
from ._exit import ExitCode
from ._output import inert
from ._settings import Settings, find_settings

__all__ = [
    "ERROR_TABLE",
    "Rule",
    "describe_error",
    "error_json",
    "exit_code_for",
    "hint_for",
    "report",
    "rule_for",
]


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


def report(message: str, hint: str | None, settings: Settings | None = None) -> None:
    """Print ``error: message`` and ``hint: hint`` to stderr, redacted and inert.

    Args:
        message: What went wrong.
        hint: What to do about it, or ``None``.
        settings: Whose secrets to redact (default: the current command's).
    """
    settings = find_settings(settings)
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
    settings = find_settings(settings)

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
