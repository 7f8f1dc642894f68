"""``phala-kms encrypt-env``: a ``.env`` file encrypted to an app's verified key.

The app is named as ``KMS APP_ID`` or by its CVM (``--cvm ID``, read from
``GET /cvms/{cvm_id}``). Names, values, the TEE's limits and the allowed names
(``--allowed-envs``, ``--app-compose``, ``--docker-compose``) are checked before any
request; the key is verified against the trust options' signer
(:mod:`phala_kms.cli._trust`) through :func:`phala_kms.cli._keys.fetch_key`. Only the
hex goes to stdout; values are never printed.
"""

from __future__ import annotations

import click

from ._envfile import read_env_file
from ._keys import as_verified, fetch_key, resolve_signer
from ._output import emit_json, inert, stderr
from ._settings import current_settings, json_option
from ._trust import TrustChoice, trust_options, verification_json, verification_text

__all__ = ["COMMANDS", "encrypt_env_command"]


def _allowed_envs(
    names: tuple[str, ...], app_compose: str | None, docker_compose: str | None
) -> tuple[tuple[str, ...] | None, str | None]:
    """The allow-list from the one option that gives it, and where it came from."""
    import pathlib

    from ..tee import allowed_envs_from_app_compose, env_names_in_docker_compose

    given = [flag for flag, value in (("--allowed-envs", names), ("--app-compose", app_compose),
             ("--docker-compose", docker_compose)) if value]  # fmt: skip
    if len(given) > 1:
        raise click.UsageError(f"give the allowed names once: {' and '.join(given)} both set them")
    if app_compose is not None:
        return allowed_envs_from_app_compose(pathlib.Path(app_compose)), app_compose
    if docker_compose is not None:
        return env_names_in_docker_compose(pathlib.Path(docker_compose)), docker_compose
    if names:
        listed = tuple(n.strip() for value in names for n in value.split(",") if n.strip())
        return listed, "--allowed-envs"
    return None, None


def _target(kms: str | None, app_id: str | None, cvm_id: str | None) -> None:
    """Refuse a command line that names the app twice, or not at all."""
    if cvm_id is not None and app_id is not None:
        raise click.UsageError(
            "with --cvm the app id comes from the CVM: give no APP_ID (a KMS argument"
            " overrides the CVM's own)"
        )
    if cvm_id is None and (kms is None or app_id is None):
        raise click.UsageError("give KMS and APP_ID, or --cvm ID")


@click.command("encrypt-env")
@json_option
@click.argument("kms", required=False)
@click.argument("app_id", required=False)
@click.option(
    "--cvm",
    "cvm_id",
    metavar="ID",
    help="Encrypt for this existing CVM: its app id and KMS come from GET /cvms/ID (the KMS"
    " by kms_info.slug, else id; a KMS argument overrides it), and a CVM whose KMS reports"
    " another root key than the trusted signer is refused.",
)
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    required=True,
    help="The .env file to encrypt ('-' for stdin), UTF-8. Comments, quotes and 'export' are"
    " handled; a line that does not parse, a name without '=', or a name set twice is an error.",
)
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
@click.option(
    "--allowed-envs",
    metavar="NAME,...",
    multiple=True,
    help="The app's allowed_envs (comma-separated, repeatable): a variable outside it is an"
    " error, since the TEE would silently drop it.",
)
@click.option(
    "--app-compose",
    type=click.Path(exists=True, dir_okay=False),
    metavar="PATH",
    help="Read allowed_envs from the app's app-compose.json (absent: no variable is allowed).",
)
@click.option(
    "--docker-compose",
    type=click.Path(exists=True, dir_okay=False),
    metavar="PATH",
    help="Allow only the names a docker compose file interpolates (${NAME}, $NAME).",
)
@click.option(
    "--check-registered",
    is_flag=True,
    help="First require the KMS contract's registeredApps(APP_ID) to be true, over"
    " --rpc-url; exit 6 if it is not.",
)
@trust_options
def encrypt_env_command(
    kms: str | None,
    app_id: str | None,
    cvm_id: str | None,
    env_file: str,
    no_verify: bool,
    interpolate: bool,
    allow_empty: bool,
    allowed_envs: tuple[str, ...],
    app_compose: str | None,
    docker_compose: str | None,
    check_registered: bool,
    trust: TrustChoice,
) -> None:
    """Encrypt a .env file to APP_ID's key on KMS (or to a CVM's, --cvm ID); print the hex
    for `encrypted_env`.

    The key's signature is verified first, against the root key every anchor you name
    agrees on: --trusted-signer HEX (pinned), --anchor chain --rpc-url URL (the KMS
    contract), --anchor node, --trust-api (the API's own report; weaker); or --no-verify
    to skip it knowingly. The variables are checked against what the TEE accepts (and
    the allowed names, if given) before any request. Only the hex goes to stdout;
    values are never printed.
    """
    from rich.markup import escape

    from .._params import app_id_hex
    from .._trusted import check_cvm_signer, cvm_target
    from ..crypto import check_trusted_signer, encrypt_env_plaintext, env_vars_plaintext

    settings = current_settings()
    _target(kms, app_id, cvm_id)
    if no_verify == bool(trust.sources):
        raise click.UsageError(
            "choose exactly one of: a signer (--trusted-signer HEX, --trust-api, --anchor ...)"
            " or --no-verify: the key must be verified against a signer you chose, or the"
            " check skipped explicitly"
        )
    if check_registered and trust.rpc_url is None:
        raise click.UsageError("--check-registered needs --rpc-url URL (the KMS contract's chain)")
    trust.check(rpc_needed=check_registered)
    allowed, allowed_from = _allowed_envs(allowed_envs, app_compose, docker_compose)
    env = read_env_file(env_file, interpolate=interpolate, allow_empty=allow_empty)
    settings.secrets.update(value for value in env.values() if len(value) >= 3)
    normalized = app_id_hex(app_id) if app_id is not None else None
    # names, values, TEE limits and allowed names checked before any request
    plaintext = env_vars_plaintext(env, allowed_envs=allowed, allow_empty=allow_empty)
    with settings.sync_client() as client:
        if cvm_id is not None:
            cvm = client.get_cvm(cvm_id)
            kms, cvm_app_id = cvm_target(cvm, cvm_id, kms)
            normalized = app_id_hex(cvm_app_id)
        assert kms is not None
        assert normalized is not None
        signer = resolve_signer(client, kms, trust)
        if signer is None:
            stderr().print(
                "[yellow]warning:[/yellow] --no-verify: encrypting to a key whose signature was"
                " not checked; whoever can alter the API's answer could read these values.",
                soft_wrap=True,
            )
        elif cvm_id is not None:
            check_cvm_signer(cvm, cvm_id, check_trusted_signer(signer))
        if check_registered:
            assert trust.rpc_url is not None
            client.check_app_registered(
                kms, normalized, rpc_url=trust.rpc_url, ssl_context=trust.ssl_context
            )
        key = fetch_key(client, kms, normalized, signer, trust)
    encrypted = encrypt_env_plaintext(plaintext, key.public_key_bytes)  # exactly what was checked
    if settings.json_output:
        emit_json(
            {
                "kms": kms,
                "app_id": normalized,
                "cvm_id": cvm_id,
                "encrypted_env": encrypted,
                "env_keys": list(env),
                "allowed_envs": list(allowed) if allowed is not None else None,
                "registered_on_chain": True if check_registered else None,
                **verification_json(signer, as_verified(key)),
            }
        )
        return
    click.echo(encrypted)
    target = f"app {normalized} on {kms}" + (f" (CVM {cvm_id})" if cvm_id else "")
    verified = (
        f" key verified: {verification_text(signer, as_verified(key))}"
        if signer
        else " key NOT verified"
    )
    checks = ""
    if allowed_from is not None:
        checks += f"; every name allowed ({allowed_from})"
    if check_registered:
        checks += "; app registered with the KMS contract on chain"
    stderr().print(
        escape(
            inert(
                f"encrypted {len(env)} variable(s) ({', '.join(env)}) for {target};{verified}"
                f"{checks}"
            )
        ),
        soft_wrap=True,
    )


COMMANDS: tuple[click.Command, ...] = (encrypt_env_command,)
"""The commands of this module, for the root group."""
