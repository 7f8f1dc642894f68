"""The key commands: ``pubkey`` and ``pubkeys`` (``encrypt-env`` is in
:mod:`phala_kms.cli._encrypt` and fetches its key through :func:`fetch_key`).

The trusted signer comes from the trust options (:mod:`phala_kms.cli._trust`), mapped
onto the SDK's :meth:`~phala_kms.AsyncKMSClient.get_trusted_signer`; the output says
what was verified (scheme, signer, timestamp) and which anchors agreed. ``pubkey
--from-node URL`` takes the key from a KMS node instead of the Cloud API
(:meth:`~phala_kms.AsyncKMSClient.get_verified_app_env_encrypt_pubkey_from_node`),
verified against the same anchors."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, BinaryIO, TypeAlias

import click

from ._envfile import read_app_ids
from ._exit import Failure
from ._output import (
    add_row,
    emit_json,
    inert,
    new_table,
    print_extra,
    print_fields,
    progress_bar,
    stderr,
    stdout,
    to_jsonable,
)
from ._present import describe_error, error_json, exit_code_for, hint_for
from ._settings import Settings, concurrency_option, current_settings, json_option
from ._trust import TrustChoice, trust_options, verification_json, verification_text

if TYPE_CHECKING:
    from ..errors import PhalaKMSError
    from ..models import AppEnvEncryptPubKey, TrustedSigner, VerifiedAppEnvEncryptPubKey
    from ..sync import KMSClient

    _Key: TypeAlias = AppEnvEncryptPubKey | VerifiedAppEnvEncryptPubKey
    """A key as served, or as verified."""
    _Result: TypeAlias = _Key | PhalaKMSError
    """One id's outcome in the fan-out: its key or its error."""

__all__ = [
    "COMMANDS",
    "as_verified",
    "fetch_key",
    "pubkey_command",
    "pubkeys_command",
    "resolve_signer",
]

# --------------------------------------------------------------------------- trusted signer


def resolve_signer(client: KMSClient, kms: str, trust: TrustChoice) -> TrustedSigner | None:
    """The signer every named anchor agrees on, or ``None`` when none is named."""
    if not trust.sources:
        return None
    return trust.checked(client.get_trusted_signer(kms, **trust.signer_kwargs()))


def fetch_key(
    client: KMSClient, kms: str, app_id: str, signer: TrustedSigner | None, trust: TrustChoice
) -> _Key:
    """The app's key: verified against ``signer``, or as served when it is ``None``."""
    if signer is None:
        return client.get_app_env_encrypt_pubkey(kms, app_id)
    return client.get_verified_app_env_encrypt_pubkey(
        kms, app_id, trusted_signer=signer, require_timestamped=trust.require_timestamped
    )


def _fetch_node_key(
    client: KMSClient, node_url: str, app_id: str, signer: TrustedSigner, trust: TrustChoice
) -> VerifiedAppEnvEncryptPubKey:
    """The app's key from the KMS node at ``node_url``, verified against ``signer``.

    Raises:
        Failure: The node is unreachable or answered something that is not a key (its
            SDK error's exit code, with a hint about ``--from-node``).
        SignatureVerificationError: The key does not verify (the error table's hint).
    """
    from ..errors import APIResponseError, TransportError

    try:
        return client.get_verified_app_env_encrypt_pubkey_from_node(
            node_url, app_id, trusted_signer=signer,
            require_timestamped=trust.require_timestamped, ssl_context=trust.ssl_context,
        )  # fmt: skip
    except TransportError as err:
        hint = (
            "the KMS node did not answer: check the --from-node URL (a node's url, see"
            " `phala-kms info KMS_ID`), your network, and --ca-file for a node with its own"
            " CA; or drop --from-node to fetch the key from the Cloud API"
        )
        raise Failure(describe_error(err), hint, exit_code_for(err), cause=err) from err
    except APIResponseError as err:
        hint = (
            "the KMS node answered something that is not an app key: check that --from-node"
            " is the node's base URL (its url in `phala-kms info KMS_ID`, without /prpc)"
        )
        raise Failure(describe_error(err), hint, exit_code_for(err), cause=err) from err


def as_verified(key: _Key | None) -> VerifiedAppEnvEncryptPubKey | None:
    from ..models import VerifiedAppEnvEncryptPubKey

    return key if isinstance(key, VerifiedAppEnvEncryptPubKey) else None


def _anchor_rows(signer: TrustedSigner) -> list[tuple[str, Any]]:
    return [("anchor", line) for line in signer.sources]


# --------------------------------------------------------------------------- pubkey


@click.command("pubkey")
@json_option
@click.argument("kms")
@click.argument("app_id")
@click.option(
    "--verify",
    is_flag=True,
    help="Verify the key's signature; needs a signer (--trusted-signer, --trust-api or"
    " --anchor), which implies it.",
)
@click.option(
    "--from-node",
    "from_node",
    metavar="URL",
    help="Fetch the key straight from this KMS node (POST URL/prpc/GetAppEnvEncryptPubKey?json)"
    " instead of the Cloud API, and verify it against the anchors exactly like the API's"
    " (so it needs a signer). https, or http to loopback only; --ca-file adds a CA for its"
    " TLS. The API key is never sent to the node, and is not needed unless an anchor asks the"
    " API (--trust-api, --anchor chain or node without --node-url).",
)
@trust_options
def pubkey_command(
    kms: str, app_id: str, verify: bool, from_node: str | None, trust: TrustChoice
) -> None:
    """Fetch the env-encryption public key of APP_ID on KMS (an id, slug, or phala/base/ethereum).

    Without a signer (--trusted-signer, --trust-api, --anchor) the key is shown unverified.
    With --from-node URL the key comes from that KMS node, not from the Cloud API, and is
    always verified (KMS still names whose root key the anchors give).
    """
    from .._params import app_id_hex
    from .._peer import check_peer_url

    settings = current_settings()
    if (verify or from_node is not None) and not trust.sources:
        needs = "--verify" if from_node is None else "--from-node"
        raise click.UsageError(
            f"{needs} needs a signer to compare with: --trusted-signer HEX (pinned, e.g. the"
            " KMS's k256_pubkey from `phala-kms onchain base`), --anchor chain --rpc-url URL"
            " (the KMS contract itself), --anchor node, or --trust-api (the API's own"
            " report; weaker)"
        )
    trust.check(node_needed=from_node is not None)
    normalized = app_id_hex(app_id)
    node_url = check_peer_url(from_node, "from_node") if from_node is not None else None
    # the key from a node and a pinned signer need no API key: only an anchor that asks
    # the API does (then the API request fails with the no-key hint)
    with settings.sync_client(require_api_key=node_url is None) as client:
        signer = resolve_signer(client, kms, trust)
        if node_url is not None:
            assert signer is not None  # a source is named (checked above)
            key: _Key = _fetch_node_key(client, node_url, normalized, signer, trust)
        else:
            key = fetch_key(client, kms, normalized, signer, trust)
    source = (
        f"node: POST {node_url}/prpc/GetAppEnvEncryptPubKey?json"
        if node_url is not None
        else f"api: GET /kms/{kms}/pubkey/{normalized}"
    )
    data = to_jsonable(key)
    if settings.json_output:
        emit_json(
            {
                "kms": kms,
                "app_id": normalized,
                **data,
                "key_source": source,
                **verification_json(signer, as_verified(key)),
            }
        )
        return
    extra = data.pop("extra", {})
    data.pop("app_id", None)
    rows: list[tuple[str, Any]] = [("kms", kms), ("app_id", normalized), ("from", source)]
    rows += [(name, value) for name, value in data.items() if value is not None]
    if signer is not None:
        rows.append(("verified", "yes: " + verification_text(signer, as_verified(key))))
        rows += _anchor_rows(signer)
    else:
        rows.append(("verified", "NO (pass --trusted-signer HEX, --anchor ..., or --trust-api)"))
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
    settings: Settings, kms: str, ids: list[str], trust: TrustChoice, concurrency: int
) -> tuple[TrustedSigner | None, Sequence[_Result]]:
    """The signer and every id's key (or error), with a progress bar on stderr."""
    async with settings.async_client() as client:
        signer = None
        if trust.sources:
            signer = trust.checked(await client.get_trusted_signer(kms, **trust.signer_kwargs()))
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
                    require_timestamped=trust.require_timestamped, return_exceptions=True,
                    on_progress=on_progress,
                )  # fmt: skip
    return signer, results


def _print_results(
    ids: list[str],
    results: Sequence[_Result],
    signer: TrustedSigner | None,
    failed: int,
) -> None:
    """The fan-out as a table: one row an id, its key (and scheme) or its error."""
    from rich.text import Text

    from ..errors import PhalaKMSError

    verified = f", verified {verification_text(signer, None)}" if signer else ", NOT verified"
    columns = (
        ("app_id", "scheme", "public_key / error") if signer else ("app_id", "public_key / error")
    )
    table = new_table(
        columns,
        fold=("public_key / error",),
        caption=f"{len(ids) - failed} of {len(ids)} keys{verified}",
    )
    for app_id, result in zip(ids, results, strict=True):
        scheme: tuple[str, ...] = ()
        if isinstance(result, PhalaKMSError):
            message = inert(current_settings().redact(result.message))
            scheme = ("-",) if signer else ()
            add_row(
                table, app_id, *scheme,
                Text.assemble((type(result).__name__, "red"), ": ", message),
            )  # fmt: skip
        else:
            verified_key = as_verified(result)
            if signer:
                scheme = (verified_key.scheme if verified_key is not None else "-",)
            add_row(table, app_id, *scheme, result.public_key)
    stdout().print(table)
    if signer is not None:
        console = stderr()
        for line in signer.sources:
            console.print(f"anchor: {_escaped(line)}", soft_wrap=True)


def _escaped(value: str) -> str:
    """``value`` inert and safe in rich markup."""
    from rich.markup import escape

    return escape(inert(value))


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
@trust_options
def pubkeys_command(
    kms: str,
    app_ids: tuple[str, ...],
    from_file: BinaryIO | None,
    concurrency: int,
    trust: TrustChoice,
) -> None:
    """Fetch the env-encryption public keys of many apps at once (KMS APP_ID... | --from-file).

    A progress bar goes to stderr. Every id gets a row; a failed id shows its error,
    and the command then exits with that error's code.
    """
    import asyncio

    from ..errors import PhalaKMSError

    settings = current_settings()
    trust.check()
    ids = _read_app_ids(app_ids, from_file)
    signer, results = asyncio.run(_fetch_keys(settings, kms, ids, trust, concurrency))
    failures = [result for result in results if isinstance(result, PhalaKMSError)]
    if settings.json_output:
        emit_json(
            {
                "kms": kms,
                **verification_json(signer),
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


COMMANDS: tuple[click.Command, ...] = (pubkey_command, pubkeys_command)
"""The commands of this module, for the root group."""
