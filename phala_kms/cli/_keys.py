"""The key commands: ``pubkey``, ``pubkeys`` and ``encrypt-env``, and how they choose the
trusted signer (``--trusted-signer`` pinned, or ``--trust-api`` from the SDK's
:meth:`~phala_kms.AsyncKMSClient.get_trusted_signer`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

import click

from ._envfile import read_app_ids, read_env_file
from ._exit import Failure
from ._present import (
    add_row,
    describe_error,
    emit_json,
    error_json,
    exit_code_for,
    hint_for,
    inert,
    new_table,
    print_extra,
    print_fields,
    progress_bar,
    short,
    stderr,
    stdout,
    to_jsonable,
)
from ._settings import Settings, concurrency_option, current_settings, json_option

if TYPE_CHECKING:
    from ..errors import PhalaKMSError
    from ..models import AppEnvEncryptPubKey, TrustedSigner, VerifiedAppEnvEncryptPubKey
    from ..sync import KMSClient

    _Key: TypeAlias = AppEnvEncryptPubKey | VerifiedAppEnvEncryptPubKey
    """A key as served, or as verified."""
    _Result: TypeAlias = _Key | PhalaKMSError
    """One id's outcome in the fan-out: its key or its error."""

__all__ = ["COMMANDS", "encrypt_env_command", "pubkey_command", "pubkeys_command"]

PINNED_SOURCE = "--trusted-signer"
"""The source of a signer given on the command line."""

# --------------------------------------------------------------------------- trusted signer

_trusted_signer_option = click.option(
    "--trusted-signer",
    metavar="HEX",
    help="The KMS root key (k256_pubkey, compressed or uncompressed hex) or its Ethereum"
    " address that must have signed the key. Pin it from a source you trust.",
)
_trust_api_option = click.option(
    "--trust-api",
    is_flag=True,
    help="Take the trusted signer from the API itself (k256_pubkey of GET /kms/KMS as a"
    " contract, else as a node). This trusts the Phala Cloud API, the party serving the key:"
    " it catches corruption and KMS mis-routing, not a dishonest API. A warning is printed.",
)


def _pinned_signer(trusted_signer: str | None, trust_api: bool) -> TrustedSigner | None:
    """The ``--trusted-signer`` value, or ``None``; refuses it together with ``--trust-api``."""
    from ..models import TrustedSigner

    if trusted_signer is None:
        return None
    if trust_api:
        raise click.UsageError("pass either --trusted-signer or --trust-api, not both")
    return TrustedSigner(k256_pubkey=trusted_signer.strip(), sources=(PINNED_SOURCE,))


def _warn_trust_api(signer: TrustedSigner) -> TrustedSigner:
    """Say on stderr what ``--trust-api`` trusts, and return ``signer``."""
    from rich.markup import escape

    sources = "; ".join(source.removeprefix("api: ") for source in signer.sources)
    stderr().print(
        "[yellow]warning:[/yellow] --trust-api: trusting signer"
        f" {escape(inert(signer.k256_pubkey))} from {escape(inert(sources))}. This trusts"
        " the Phala Cloud API, which also serves the key:"
        " it guards against corruption in transit and KMS mis-routing, not against the API"
        " itself. Pin the key with --trusted-signer for stronger assurance.",
        soft_wrap=True,
    )
    return signer


def _resolve_signer(
    client: KMSClient, kms: str, trusted_signer: str | None, trust_api: bool
) -> TrustedSigner | None:
    """The signer to verify against: pinned, from the API (with a warning), or ``None``."""
    if trust_api and trusted_signer is None:
        return _warn_trust_api(client.get_trusted_signer(kms))
    return _pinned_signer(trusted_signer, trust_api)


def _fetch_key(client: KMSClient, kms: str, app_id: str, signer: TrustedSigner | None) -> _Key:
    """The app's key: verified against ``signer``, or as served when it is ``None``."""
    if signer is None:
        return client.get_app_env_encrypt_pubkey(kms, app_id)
    return client.get_verified_app_env_encrypt_pubkey(kms, app_id, trusted_signer=signer)


def _signer_json(signer: TrustedSigner | None) -> dict[str, Any]:
    """The ``verified`` / ``trusted_signer`` / ``trusted_signer_source`` keys of the JSON."""
    return {
        "verified": signer is not None,
        "trusted_signer": signer.k256_pubkey if signer else None,
        "trusted_signer_source": "; ".join(signer.sources) if signer else None,
    }


# --------------------------------------------------------------------------- pubkey


@click.command("pubkey")
@json_option
@click.argument("kms")
@click.argument("app_id")
@click.option(
    "--verify",
    is_flag=True,
    help="Verify the key's signature; needs --trusted-signer or --trust-api (either implies it).",
)
@_trusted_signer_option
@_trust_api_option
def pubkey_command(
    kms: str, app_id: str, verify: bool, trusted_signer: str | None, trust_api: bool
) -> None:
    """Fetch the env-encryption public key of APP_ID on KMS (an id, slug, or phala/base/ethereum).

    Without --verify (or --trusted-signer/--trust-api) the key is shown unverified.
    """
    from .._params import app_id_hex

    settings = current_settings()
    if verify and trusted_signer is None and not trust_api:
        raise click.UsageError(
            "--verify needs a signer to compare with: --trusted-signer HEX (pinned, e.g. the"
            " KMS's k256_pubkey from `phala-kms onchain base`) or --trust-api (the API's own"
            " report; weaker)"
        )
    normalized = app_id_hex(app_id)
    with settings.sync_client() as client:
        signer = _resolve_signer(client, kms, trusted_signer, trust_api)
        key = _fetch_key(client, kms, normalized, signer)
    data = to_jsonable(key)
    if settings.json_output:
        emit_json({"kms": kms, "app_id": normalized, **data, **_signer_json(signer)})
        return
    extra = data.pop("extra", {})
    data.pop("app_id", None)
    rows: list[tuple[str, Any]] = [("kms", kms), ("app_id", normalized)]
    rows += [(name, value) for name, value in data.items() if value is not None]
    if signer is not None:
        sources = "; ".join(signer.sources)
        rows.append(("verified", f"yes: signed by {signer.k256_pubkey} ({sources})"))
    else:
        rows.append(("verified", "NO (pass --trusted-signer HEX, or --trust-api)"))
    console = stdout()
    print_fields(console, rows)
    print_extra(console, extra)


# --------------------------------------------------------------------------- pubkeys


def _read_app_ids(app_ids: Sequence[str], from_file: BinaryIO | None) -> list[str]:
    """The app ids from the arguments or from ``--from-file`` (one a line, ``#`` comments).

    A bad id given as an argument becomes that id's error row; a line of the file that
    is not an app id stops the command before any request, by its line number
    (:func:`~phala_kms.cli._envfile.read_app_ids`).
    """
    if app_ids and from_file is not None:
        raise click.UsageError("pass app ids as arguments or with --from-file, not both")
    if from_file is None:
        if not app_ids:
            raise click.UsageError("give at least one APP_ID, or --from-file FILE")
        return list(app_ids)
    name = getattr(from_file, "name", "-")
    return read_app_ids(from_file, "-" if name in ("-", "<stdin>") else str(name))


async def _fetch_keys(
    settings: Settings,
    kms: str,
    ids: list[str],
    pinned: TrustedSigner | None,
    trust_api: bool,
    concurrency: int,
) -> tuple[TrustedSigner | None, Sequence[_Result]]:
    """The signer and every id's key (or error), with a progress bar on stderr."""
    async with settings.async_client() as client:
        signer = _warn_trust_api(await client.get_trusted_signer(kms)) if trust_api else pinned
        results: Sequence[_Result]
        with progress_bar("fetching keys", len(set(ids))) as on_progress:
            if signer is None:
                results = await client.get_app_env_encrypt_pubkeys(
                    kms, ids, concurrency=concurrency, return_exceptions=True,
                    on_progress=on_progress,
                )  # fmt: skip
            else:
                results = await client.get_verified_app_env_encrypt_pubkeys(
                    kms, ids, trusted_signer=signer, concurrency=concurrency,
                    return_exceptions=True, on_progress=on_progress,
                )  # fmt: skip
    return signer, results


def _print_results(
    ids: list[str],
    results: Sequence[_Result],
    signer: TrustedSigner | None,
    failed: int,
) -> None:
    """The fan-out as a table: one row an id, its key or its error."""
    from rich.text import Text

    from ..errors import PhalaKMSError

    verified = f", verified against {short(signer.k256_pubkey)}" if signer else ", NOT verified"
    table = new_table(
        ("app_id", "public_key / error"),
        fold=("public_key / error",),
        caption=f"{len(ids) - failed} of {len(ids)} keys{verified}",
    )
    for app_id, result in zip(ids, results, strict=True):
        if isinstance(result, PhalaKMSError):
            message = inert(current_settings().redact(result.message))
            add_row(table, app_id, Text.assemble((type(result).__name__, "red"), ": ", message))
        else:
            add_row(table, app_id, result.public_key)
    stdout().print(table)


def _result_json(settings: Settings, app_id: str, result: _Result) -> dict[str, Any]:
    """One id's row of the ``--json`` output."""
    from ..errors import PhalaKMSError

    if not isinstance(result, PhalaKMSError):
        return {"app_id": app_id, "ok": True, "key": result, "error": None}
    error = error_json(
        type(result).__name__,
        result.message,
        exit_code_for(result),
        hint_for(result),
        result,
        settings,
    )["error"]
    return {"app_id": app_id, "ok": False, "key": None, "error": error}


@click.command("pubkeys")
@json_option
@click.argument("kms")
@click.argument("app_ids", nargs=-1)
@click.option(
    "--from-file",
    type=click.File("rb"),
    metavar="FILE",
    help="Read app ids from FILE ('-' for stdin), UTF-8: one per line, '#' comments allowed."
    " A line that is not an app id stops the command before any request.",
)
@concurrency_option("Requests in flight at once.")
@_trusted_signer_option
@_trust_api_option
def pubkeys_command(
    kms: str,
    app_ids: tuple[str, ...],
    from_file: BinaryIO | None,
    concurrency: int,
    trusted_signer: str | None,
    trust_api: bool,
) -> None:
    """Fetch the env-encryption public keys of many apps at once (KMS APP_ID... | --from-file).

    A progress bar goes to stderr. Every id gets a row; a failed id shows its error,
    and the command then exits with that error's code.
    """
    import asyncio

    from ..errors import PhalaKMSError

    settings = current_settings()
    ids = _read_app_ids(app_ids, from_file)
    pinned = _pinned_signer(trusted_signer, trust_api)
    signer, results = asyncio.run(_fetch_keys(settings, kms, ids, pinned, trust_api, concurrency))
    failures = [result for result in results if isinstance(result, PhalaKMSError)]
    if settings.json_output:
        emit_json(
            {
                "kms": kms,
                **_signer_json(signer),
                "total": len(ids),
                "failed": len(failures),
                "results": [
                    _result_json(settings, app_id, result)
                    for app_id, result in zip(ids, results, strict=True)
                ],
            }
        )
    else:
        _print_results(ids, results, signer, len(failures))
    if failures:
        first = failures[0]
        raise Failure(
            f"{len(failures)} of {len(ids)} app ids failed; first: {describe_error(first)}",
            hint_for(first),
            exit_code_for(first),
            cause=first,
        )


# --------------------------------------------------------------------------- encrypt-env


@click.command("encrypt-env")
@json_option
@click.argument("kms")
@click.argument("app_id")
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    required=True,
    help="The .env file to encrypt ('-' for stdin), UTF-8. Comments, quotes and 'export' are"
    " handled; a line that does not parse, a name without '=', or a name set twice is an error.",
)
@_trusted_signer_option
@_trust_api_option
@click.option(
    "--no-verify",
    is_flag=True,
    help="Encrypt to the key without verifying its signature (a warning is printed).",
)
@click.option(
    "--interpolate/--no-interpolate",
    default=False,
    show_default=True,
    help="Expand ${VAR} references in the file (from the file and your environment).",
)
@click.option(
    "--allow-empty",
    is_flag=True,
    help="Encrypt an empty set when the file sets no variables (else that is an error).",
)
def encrypt_env_command(
    kms: str,
    app_id: str,
    env_file: str,
    trusted_signer: str | None,
    trust_api: bool,
    no_verify: bool,
    interpolate: bool,
    allow_empty: bool,
) -> None:
    """Encrypt a .env file to APP_ID's key on KMS; print the hex for `encrypted_env`.

    The key's signature is verified first: pass --trusted-signer HEX (pinned) or
    --trust-api (the API's own k256_pubkey; weaker), or --no-verify to skip it
    knowingly. Only the hex goes to stdout; values are never printed.
    """
    from rich.markup import escape

    from .._params import app_id_hex
    from ..crypto import encrypt_env_plaintext, env_vars_plaintext

    settings = current_settings()
    if (trusted_signer is not None) + trust_api + no_verify != 1:
        raise click.UsageError(
            "choose exactly one of --trusted-signer HEX, --trust-api or --no-verify: the key"
            " must be verified against a signer you chose, or the check skipped explicitly"
        )
    env = read_env_file(env_file, interpolate=interpolate, allow_empty=allow_empty)
    settings.secrets.update(value for value in env.values() if len(value) >= 3)
    normalized = app_id_hex(app_id)
    # names and values checked before any request
    plaintext = env_vars_plaintext(env, allow_empty=allow_empty)
    with settings.sync_client() as client:
        signer = _resolve_signer(client, kms, trusted_signer, trust_api)
        if signer is None:
            stderr().print(
                "[yellow]warning:[/yellow] --no-verify: encrypting to a key whose signature was"
                " not checked; whoever can alter the API's answer could read these values.",
                soft_wrap=True,
            )
        key = _fetch_key(client, kms, normalized, signer)
    encrypted = encrypt_env_plaintext(plaintext, key.public_key_bytes)  # exactly what was checked
    if settings.json_output:
        emit_json(
            {
                "kms": kms,
                "app_id": normalized,
                "encrypted_env": encrypted,
                "env_keys": list(env),
                **_signer_json(signer),
            }
        )
        return
    click.echo(encrypted)
    verified = f" key verified against {signer.k256_pubkey}" if signer else " key NOT verified"
    stderr().print(
        escape(
            inert(
                f"encrypted {len(env)} variable(s) ({', '.join(env)}) for app"
                f" {normalized} on {kms};{verified}"
            )
        ),
        soft_wrap=True,
    )


COMMANDS: tuple[click.Command, ...] = (pubkey_command, pubkeys_command, encrypt_env_command)
"""The commands of this module, for the root group."""
