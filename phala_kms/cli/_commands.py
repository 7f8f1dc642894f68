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

Heavy imports (rich, aiohttp, the crypto stack) happen inside the commands, so
``phala-kms --help`` stays fast.
"""

from __future__ import annotations

import enum
import logging
import sys
import traceback
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NoReturn, TextIO

import click

from ._version import __version__

if TYPE_CHECKING:
    from rich.console import Console
    from rich.table import Table

    from .client import AsyncKMSClient
    from .errors import PhalaKMSError
    from .models import AppEnvEncryptPubKey, Paginated
    from .sync import KMSClient

__all__ = ["EXIT_CODES", "ExitCode", "cli", "exit_code_for", "main", "to_jsonable"]


class ExitCode(enum.IntEnum):
    """What ``phala-kms`` exits with."""

    OK = 0
    API_ERROR = 1
    USAGE = 2
    AUTH = 3
    NOT_FOUND = 4
    NETWORK = 5
    VERIFICATION = 6


EXIT_CODES: Mapping[int, str] = {
    ExitCode.OK: "success",
    ExitCode.API_ERROR: "any other API error (400, 409, 422, 429, redirect, unexpected body)",
    ExitCode.USAGE: "usage: bad command line, argument or setting",
    ExitCode.AUTH: "authentication: no API key, 401 or 403",
    ExitCode.NOT_FOUND: "not found: 404",
    ExitCode.NETWORK: "network: no usable response, or 5xx after retries",
    ExitCode.VERIFICATION: "verification: a signature did not verify against the trusted signer",
}
"""Every exit code of ``phala-kms`` and what it means."""

ENV_API_KEY = "PHALA_CLOUD_API_KEY"
ENV_BASE_URL = "PHALA_CLOUD_API_PREFIX"

_REDACTED = "***"
_PIPE_WIDTH = 200

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


# --------------------------------------------------------------------------- settings


class Settings:
    """The global options, shared by every command (``ctx.obj``)."""

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str | None,
        api_version: str | None,
        timeout: float,
        max_retries: int,
        json_output: bool,
    ) -> None:
        self.api_key = api_key.strip() if api_key and api_key.strip() else None
        self.base_url = base_url.strip() if base_url and base_url.strip() else None
        self.api_version = api_version
        self.timeout = timeout
        self.max_retries = max_retries
        self.json_output = json_output
        self.secrets: set[str] = set()
        if self.api_key:
            self.secrets.add(self.api_key)

    def redact(self, text: str) -> str:
        """Replace every known secret (API key, env values) in ``text``."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, _REDACTED)
        return text

    def require_api_key(self) -> str:
        """The API key, or exit 3 saying how to set one."""
        if self.api_key is None:
            _fail(
                "no API key configured",
                f"set {ENV_API_KEY} or pass --api-key (keys look like phak_...);"
                " or try `phala-kms demo`, which needs none",
                ExitCode.AUTH,
            )
        return self.api_key

    def client_kwargs(self) -> dict[str, Any]:
        return {
            "api_key": self.require_api_key(),
            "base_url": self.base_url,
            "api_version": self.api_version,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
        }

    def sync_client(self) -> KMSClient:
        from .sync import KMSClient

        return KMSClient(**self.client_kwargs())

    def async_client(self) -> AsyncKMSClient:
        from .client import AsyncKMSClient

        return AsyncKMSClient(**self.client_kwargs())


def _settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def _stdout() -> Console:
    import os

    from rich.console import Console

    console = Console(highlight=False, soft_wrap=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console.width = _PIPE_WIDTH  # piped: no terminal to fit, keep hex and URLs whole
    return console


def _stderr() -> Console:
    from rich.console import Console

    return Console(stderr=True, highlight=False)


# --------------------------------------------------------------------------- errors


def exit_code_for(err: BaseException) -> ExitCode:
    """The exit code for an exception raised by phala-kms."""
    from . import errors

    if isinstance(err, errors.SignatureVerificationError):
        if err.reason in ("invalid_trusted_signer", "invalid_argument"):
            return ExitCode.USAGE  # the caller's input, not the key, is at fault
        return ExitCode.VERIFICATION
    if isinstance(err, (errors.AuthenticationError, errors.PermissionDeniedError)):
        return ExitCode.AUTH
    if isinstance(err, errors.ConfigurationError):
        return ExitCode.AUTH if err.setting == "api_key" else ExitCode.USAGE
    if isinstance(err, errors.InvalidArgumentError):
        return ExitCode.USAGE
    if isinstance(err, errors.NotFoundError):
        return ExitCode.NOT_FOUND
    if isinstance(err, (errors.TransportError, errors.ServerError)):
        return ExitCode.NETWORK
    return ExitCode.API_ERROR


def _hint(err: PhalaKMSError) -> str:
    from . import errors

    if isinstance(err, errors.AuthenticationError):
        return f"check {ENV_API_KEY} (or --api-key): the API did not accept the key"
    if isinstance(err, errors.PermissionDeniedError):
        return (
            f"check {ENV_API_KEY} (or --api-key): the key was refused or lacks access;"
            " create a new one in the Phala Cloud dashboard"
        )
    if isinstance(err, errors.ConfigurationError):
        if err.setting == "api_key":
            return f"set {ENV_API_KEY} or pass --api-key (printable ASCII, e.g. phak_...)"
        return f"check --base-url / {ENV_BASE_URL} and the other global options"
    if isinstance(err, errors.InvalidArgumentError):
        return "check the arguments; see --help"
    if isinstance(err, errors.NotFoundError):
        if (err.url or "").rstrip("/").endswith("/kms") or not err.error_code:
            return (
                "check the id or slug (`phala-kms list --all` shows every KMS), and that"
                f" --base-url / {ENV_BASE_URL} is the API prefix ending in /api/v1"
            )
        return "check the id or slug; `phala-kms list --all` shows every KMS"
    if isinstance(err, errors.SignatureVerificationError):
        if err.reason in ("invalid_trusted_signer", "invalid_argument"):
            return (
                "--trusted-signer must be the KMS root key (k256_pubkey: 33 or 65 bytes"
                " as hex) or its 20-byte Ethereum address; see `phala-kms info` / `onchain`"
            )
        return (
            "do not encrypt to this key: it is not proven to come from the trusted KMS;"
            " check --trusted-signer (the KMS's k256_pubkey) and the KMS/app id"
        )
    if isinstance(err, errors.APITimeoutError):
        return "the API did not answer in time; raise --timeout or try again later"
    if isinstance(err, errors.TransportError):
        return (
            f"check --base-url / {ENV_BASE_URL} and your network"
            f" (tried {err.attempts} time{'s' if err.attempts != 1 else ''})"
        )
    if isinstance(err, errors.ServerError):
        return f"the API failed after {err.attempts} attempt(s); try again later"
    if isinstance(err, errors.RateLimitError):
        wait = f" {err.retry_after:g} s" if err.retry_after is not None else " a while"
        return f"rate limited: wait{wait} and try again"
    if isinstance(err, errors.RedirectError):
        return f"check --base-url / {ENV_BASE_URL}: it must be the API prefix ending in /api/v1"
    if isinstance(err, errors.ResponseValidationError):
        return (
            "the API answered with an unexpected shape; check --base-url and --api-version,"
            " or upgrade phala-kms"
        )
    if isinstance(err, errors.UnprocessableEntityError):
        return "the API rejected a parameter; see --help for the accepted values"
    if isinstance(err, errors.ClientStateError):
        return "this is a bug in phala-kms; please report it"
    return "see --help"


def describe_error(err: PhalaKMSError) -> str:
    """One line: the error's type and message (the SDK's messages already carry the
    status, error code, request id and URL), plus the request id if it is missing."""
    text = f"{type(err).__name__}: {err.message}"
    request_id = getattr(err, "request_id", None)
    if request_id and request_id not in text:
        text += f" (request id {request_id})"
    return text


def _report(settings: Settings | None, message: str, hint: str | None) -> None:
    redact = settings.redact if settings is not None else (lambda text: text)
    click.echo(redact(f"error: {message}"), err=True)
    if hint:
        click.echo(redact(f"hint: {hint}"), err=True)


def _fail(message: str, hint: str | None, code: ExitCode) -> NoReturn:
    ctx = click.get_current_context()
    _report(ctx.find_object(Settings), message, hint)
    ctx.exit(int(code))
    raise AssertionError("unreachable")  # pragma: no cover


class _Group(click.Group):
    """A group that turns phala-kms errors into one message and an exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        from .errors import PhalaKMSError

        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except PhalaKMSError as err:
            _report(ctx.find_object(Settings), describe_error(err), _hint(err))
            ctx.exit(int(exit_code_for(err)))
        except Exception as err:  # an unexpected bug: a traceback, with secrets redacted
            settings = ctx.find_object(Settings)
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            if settings is not None:
                text = settings.redact(text)
            click.echo(text.rstrip(), err=True)
            click.echo("error: unexpected internal error (see above); please report it", err=True)
            ctx.exit(int(ExitCode.API_ERROR))


# --------------------------------------------------------------------------- output


def to_jsonable(value: Any) -> Any:
    """Turn models (attrs classes), tuples and mappings into JSON-ready data.

    An attrs object becomes a dict of its fields in declaration order (``extra``
    included, always a dict), so keys are stable across runs and versions.
    """
    import attrs

    if attrs.has(type(value)):
        return {
            field.name: to_jsonable(getattr(value, field.name))
            for field in attrs.fields(type(value))
        }
    if isinstance(value, Mapping):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    return value


def _emit_json(data: Any) -> None:
    import json

    click.echo(json.dumps(to_jsonable(data), indent=2, ensure_ascii=False))


def _short(value: str | None, keep: int = 10) -> str:
    if value is None:
        return "-"
    if len(value) <= 2 * keep + 1:
        return value
    return f"{value[:keep]}…{value[-6:]}"


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def _print_fields(console: Console, rows: Iterable[tuple[str, Any]]) -> None:
    """Print ``name  value`` lines without wrapping values (hex stays copyable)."""
    from rich.markup import escape

    rows = list(rows)
    width = max((len(name) for name, _ in rows), default=0)
    for name, value in rows:
        console.print(
            f"[bold]{escape(name.ljust(width))}[/bold]  {escape(_text(value))}", soft_wrap=True
        )


def _add_row(table: Table, *values: str) -> None:
    """Add a row of plain text: API data is never read as rich markup."""
    from rich.text import Text

    table.add_row(*(Text(value) for value in values))


def _print_extra(console: Console, extra: Mapping[str, Any]) -> None:
    if extra:
        _print_fields(console, [(f"{key} (extra)", value) for key, value in extra.items()])


# --------------------------------------------------------------------------- the group


def _version_message() -> str:
    return f"phala-kms {__version__}"


@click.group(cls=_Group, epilog=_EPILOG, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--api-key",
    envvar=ENV_API_KEY,
    show_envvar=True,
    metavar="KEY",
    help="Phala Cloud API key (phak_...). Prefer the environment variable; never printed.",
)
@click.option(
    "--base-url",
    envvar=ENV_BASE_URL,
    show_envvar=True,
    metavar="URL",
    help="API prefix including /api/v1 [default: https://cloud-api.phala.com/api/v1].",
)
@click.option(
    "--api-version",
    metavar="YYYY-MM-DD",
    help="X-Phala-Version for calls that do not pin their own [default: 2026-06-23].",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="Seconds allowed for one attempt of a request.",
)
@click.option(
    "--max-retries",
    type=click.IntRange(0, 20),
    default=3,
    show_default=True,
    help="Retries of safe failures (refused, timeouts, 429, 5xx); 0 disables.",
)
@click.option("--json", "json_output", is_flag=True, help="Write JSON to stdout instead of tables.")
@click.option("-v", "--verbose", is_flag=True, help="Log retries and other SDK events to stderr.")
@click.version_option(__version__, "--version", message="phala-kms %(version)s")
@click.pass_context
def cli(
    ctx: click.Context,
    api_key: str | None,
    base_url: str | None,
    api_version: str | None,
    timeout: float,
    max_retries: int,
    json_output: bool,
    verbose: bool,
) -> None:
    """Query the Phala Cloud KMS API, verify app keys and encrypt env vars.

    Without PHALA_CLOUD_API_KEY, try `phala-kms demo`: it runs the whole SDK against
    an embedded fake of the API.
    """
    ctx.obj = Settings(
        api_key=api_key,
        base_url=base_url,
        api_version=api_version,
        timeout=timeout,
        max_retries=max_retries,
        json_output=json_output,
    )
    if verbose:
        _enable_sdk_logging(ctx)


class _StderrHandler(logging.Handler):
    """Writes SDK log lines to whatever ``sys.stderr`` is at the time (click's, in tests)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            click.echo(self.format(record), err=True)
        except Exception:  # pragma: no cover - logging must never break a command
            self.handleError(record)


def _enable_sdk_logging(ctx: click.Context) -> None:
    """Show the SDK's INFO lines (e.g. retries) on stderr for this command only."""
    logger = logging.getLogger("phala_kms")
    handler = _StderrHandler(logging.INFO)
    handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)

    def restore() -> None:
        logger.removeHandler(handler)
        logger.setLevel(old_level)

    ctx.call_on_close(restore)


def main() -> None:
    """The ``phala-kms`` console script."""
    cli(prog_name="phala-kms")


# --------------------------------------------------------------------------- list / info


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Settings).json_output = True


_json_option = click.option(
    "--json",
    "json_output",
    is_flag=True,
    expose_value=False,
    callback=_set_json,
    help="Write JSON to stdout (same as the global --json).",
)


_onchain_option = click.option(
    "--onchain/--offchain",
    "is_onchain",
    default=None,
    help="Only on-chain KMS, or only the off-chain Phala KMS [default: both].",
)
_all_option = click.option("--all", "all_pages", is_flag=True, help="Fetch every page.")
_page_option = click.option(
    "--page", type=click.IntRange(min=1), default=1, show_default=True, help="Page number."
)
_page_size_option = click.option(
    "--page-size",
    type=click.IntRange(1, 100),
    default=20,
    show_default=True,
    help="Items per page (with --all: per request).",
)


def _fetch_listing(
    iterate: Callable[..., Iterable[Any]],
    get_page: Callable[..., Paginated[Any]],
    noun: str,
    *,
    all_pages: bool,
    page: int,
    page_size: int,
    is_onchain: bool | None,
) -> tuple[tuple[Any, ...], Any, str]:
    """One page, or every page: ``(items, JSON-ready data, table caption)``."""
    if all_pages:
        items = tuple(iterate(page_size=page_size, is_onchain=is_onchain))
        return items, {"items": items, "total": len(items)}, f"{len(items)} {noun}"
    result = get_page(page, page_size, is_onchain)
    caption = f"page {result.page} of {result.pages} · {result.total} {noun}"
    if result.has_next:
        caption += " · more with --page or --all"
    return result.items, to_jsonable(result), caption


@cli.command("list")
@_json_option
@_onchain_option
@_all_option
@_page_option
@_page_size_option
def list_command(is_onchain: bool | None, all_pages: bool, page: int, page_size: int) -> None:
    """List KMS nodes (GET /kms, node-centric view)."""
    settings = _settings()
    with settings.sync_client() as client:
        items, data, caption = _fetch_listing(
            client.iter_kms_list, client.get_kms_list, "KMS nodes",
            all_pages=all_pages, page=page, page_size=page_size, is_onchain=is_onchain,
        )  # fmt: skip
    if settings.json_output:
        _emit_json(data)
        return
    from rich.table import Table

    table = Table(caption=caption)
    for column in ("id", "slug", "chain", "version"):
        table.add_column(column, no_wrap=True)
    table.add_column("url", overflow="fold")
    table.add_column("k256_pubkey", no_wrap=True)
    for kms in items:
        _add_row(
            table,
            kms.id,
            _text(kms.slug),
            _text(kms.chain_id) if kms.chain_id is not None else "off-chain",
            kms.version,
            kms.url,
            _short(kms.k256_pubkey),
        )
    _stdout().print(table)


@cli.command("info")
@_json_option
@click.argument("kms_id")
def info_command(kms_id: str) -> None:
    """Show one KMS node (GET /kms/KMS_ID): KMS_ID is an id (kms_...) or slug."""
    settings = _settings()
    with settings.sync_client() as client:
        kms = client.get_kms_info(kms_id)
    if settings.json_output:
        _emit_json(kms)
        return
    console = _stdout()
    _print_fields(
        console,
        [
            ("id", kms.id),
            ("slug", kms.slug),
            ("url", kms.url),
            ("version", kms.version),
            ("chain_id", kms.chain_id if kms.chain_id is not None else "off-chain (Phala KMS)"),
            ("kms_contract_address", kms.kms_contract_address),
            ("gateway_app_id", kms.gateway_app_id),
            ("k256_pubkey", kms.k256_pubkey),
        ],
    )
    _print_extra(console, kms.extra)


@cli.command("contracts")
@_json_option
@_onchain_option
@_all_option
@_page_option
@_page_size_option
def contracts_command(is_onchain: bool | None, all_pages: bool, page: int, page_size: int) -> None:
    """List KMS contracts (GET /kms, contract-centric view, API 2026-06-23)."""
    settings = _settings()
    with settings.sync_client() as client:
        items, data, caption = _fetch_listing(
            client.iter_kms_contracts, client.list_kms_contracts, "KMS contracts",
            all_pages=all_pages, page=page, page_size=page_size, is_onchain=is_onchain,
        )  # fmt: skip
    if settings.json_output:
        _emit_json(data)
        return
    from rich.table import Table

    table = Table(caption=caption)
    for column in ("id", "slug", "label", "chain", "contract", "nodes", "k256_pubkey"):
        table.add_column(column, no_wrap=True)
    for contract in items:
        _add_row(
            table,
            contract.id,
            _text(contract.slug),
            _text(contract.label),
            str(contract.chain_id) if contract.is_onchain else "off-chain",
            _short(contract.contract_address) if contract.is_onchain else "phala",
            str(contract.node_count),
            _short(contract.k256_pubkey),
        )
    _stdout().print(table)


@cli.command("onchain")
@_json_option
@click.argument("chain")
def onchain_command(chain: str) -> None:
    """Show the on-chain KMS contracts of CHAIN (base, ethereum) with devices and images."""
    settings = _settings()
    with settings.sync_client() as client:
        detail = client.get_kms_on_chain_detail(chain)
    if settings.json_output:
        _emit_json(detail)
        return
    from rich.markup import escape
    from rich.table import Table

    console = _stdout()
    console.print(
        f"[bold]{escape(detail.chain_name)}[/bold] (chain id {detail.chain_id}):"
        f" {len(detail.contracts)} KMS contract(s)"
    )
    for contract in detail.contracts:
        console.print()
        _print_fields(
            console,
            [
                ("contract_address", contract.contract_address),
                ("k256_pubkey", contract.k256_pubkey),
                ("ca_pubkey", contract.ca_pubkey),
                ("gateway_contract_address", contract.gateway_contract_address),
            ],
        )
        _print_extra(console, contract.extra)
        devices = Table(title="devices", title_justify="left")
        for column in ("device_id", "node_name", "allowed"):
            devices.add_column(column, overflow="fold")
        for device in contract.devices:
            _add_row(
                devices,
                _short(device.device_id, 16),
                _text(device.node_name),
                _allowed(device.on_chain_allowed),
            )
        images = Table(title="os images", title_justify="left")
        for column in ("name", "version", "os_image_hash", "allowed"):
            images.add_column(column, overflow="fold")
        for image in contract.os_images:
            _add_row(
                images,
                image.name,
                image.version,
                _short(image.os_image_hash, 16),
                _allowed(image.on_chain_allowed),
            )
        console.print(devices)
        console.print(images)


def _allowed(value: bool | None) -> str:
    return "unknown" if value is None else ("yes" if value else "no")


@cli.command("next-app-ids")
@_json_option
@click.option(
    "--counts",
    type=click.IntRange(1, 20),
    default=1,
    show_default=True,
    help="How many ids to predict.",
)
def next_app_ids_command(counts: int) -> None:
    """Predict the next app ids (and nonces) on the Phala KMS (a prediction, not a reservation)."""
    settings = _settings()
    with settings.sync_client() as client:
        result = client.next_app_ids(counts)
    if settings.json_output:
        _emit_json(result)
        return
    from rich.table import Table

    table = Table()
    table.add_column("app_id", no_wrap=True)
    table.add_column("nonce", justify="right")
    for item in result.app_ids:
        _add_row(table, item.app_id, str(item.nonce))
    _stdout().print(table)


# --------------------------------------------------------------------------- keys


class TrustedSigner:
    """Where a trusted signer came from, and the key itself."""

    def __init__(self, key: str, source: str) -> None:
        self.key = key
        self.source = source


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


def _resolve_trusted_signer(
    client: KMSClient, kms: str, trusted_signer: str | None, trust_api: bool
) -> TrustedSigner | None:
    """The signer to verify against: pinned (--trusted-signer) or from the API (--trust-api)."""
    from .errors import NotFoundError, SignatureVerificationError

    if trusted_signer is not None:
        if trust_api:
            raise click.UsageError("pass either --trusted-signer or --trust-api, not both")
        return TrustedSigner(trusted_signer.strip(), "--trusted-signer")
    if not trust_api:
        return None
    key: str | None
    try:
        key = client.get_kms_contract(kms).k256_pubkey
        source = f"GET /kms/{kms} (contract view) k256_pubkey"
    except NotFoundError:
        node = client.get_kms_info(kms)
        key = node.k256_pubkey
        source = f"GET /kms/{kms} (node view) k256_pubkey"
        if not key:  # the node omits it: take its contract's (same chain and address)
            address = (node.kms_contract_address or "").lower()
            for contract in client.iter_kms_contracts():
                same = (
                    contract.chain_id == node.chain_id
                    and contract.contract_address.lower() == address
                    if node.chain_id is not None
                    else not contract.is_onchain
                )
                if same and contract.k256_pubkey:
                    key = contract.k256_pubkey
                    source = (
                        f"GET /kms (contract view) k256_pubkey of {contract.slug or contract.id},"
                        f" the contract node {kms} serves"
                    )
                    break
    if not key:
        raise SignatureVerificationError(
            f"the API reports no k256_pubkey for KMS {kms!r}, so there is nothing to verify"
            " against; pass --trusted-signer",
            reason="invalid_trusted_signer",
        )
    from rich.markup import escape

    _stderr().print(
        f"[yellow]warning:[/yellow] --trust-api: trusting signer {escape(key)} from"
        f" {escape(source)}. This"
        " trusts the Phala Cloud API, which also serves the key: it guards against corruption"
        " in transit and KMS mis-routing, not against the API itself. Pin the key with"
        " --trusted-signer for stronger assurance.",
        soft_wrap=True,
    )
    return TrustedSigner(key, f"api: {source}")


@cli.command("pubkey")
@_json_option
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
    settings = _settings()
    if verify and trusted_signer is None and not trust_api:
        raise click.UsageError(
            "--verify needs a signer to compare with: --trusted-signer HEX (pinned, e.g. the"
            " KMS's k256_pubkey from `phala-kms onchain base`) or --trust-api (the API's own"
            " report; weaker)"
        )
    with settings.sync_client() as client:
        from ._validate import app_id_hex

        normalized = app_id_hex(app_id)
        signer = _resolve_trusted_signer(client, kms, trusted_signer, trust_api)
        if signer is not None:
            key = client.get_verified_app_env_encrypt_pubkey(
                kms, normalized, trusted_signer=signer.key
            )
        else:
            key = client.get_app_env_encrypt_pubkey(kms, normalized)
    if settings.json_output:
        data = {"kms": kms, "app_id": normalized, **to_jsonable(key)}
        data["verified"] = signer is not None
        data["trusted_signer"] = signer.key if signer else None
        data["trusted_signer_source"] = signer.source if signer else None
        _emit_json(data)
        return
    console = _stdout()
    rows: list[tuple[str, Any]] = [
        ("kms", kms),
        ("app_id", normalized),
        ("public_key", key.public_key),
        ("signature", key.signature),
    ]
    if key.timestamp is not None:
        rows += [("timestamp", key.timestamp), ("signature_v1", key.signature_v1)]
    if signer is not None:
        rows.append(("verified", f"yes: signed by {signer.key} ({signer.source})"))
    else:
        rows.append(("verified", "NO (pass --trusted-signer HEX, or --trust-api)"))
    _print_fields(console, rows)
    _print_extra(console, key.extra)


def _read_app_ids(app_ids: Sequence[str], from_file: TextIO | None) -> list[str]:
    if app_ids and from_file is not None:
        raise click.UsageError("pass app ids as arguments or with --from-file, not both")
    if from_file is not None:
        ids = []
        for line in from_file:
            text = line.split("#", 1)[0].strip()
            if text:
                ids.append(text)
        if not ids:
            raise click.UsageError("--from-file holds no app ids")
        return ids
    if not app_ids:
        raise click.UsageError("give at least one APP_ID, or --from-file FILE")
    return list(app_ids)


@cli.command("pubkeys")
@_json_option
@click.argument("kms")
@click.argument("app_ids", nargs=-1)
@click.option(
    "--from-file",
    type=click.File("r"),
    metavar="FILE",
    help="Read app ids from FILE ('-' for stdin): one per line, '#' comments allowed.",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 100),
    default=16,
    show_default=True,
    help="Requests in flight at once.",
)
@_trusted_signer_option
@_trust_api_option
def pubkeys_command(
    kms: str,
    app_ids: tuple[str, ...],
    from_file: TextIO | None,
    concurrency: int,
    trusted_signer: str | None,
    trust_api: bool,
) -> None:
    """Fetch the env-encryption public keys of many apps at once (KMS APP_ID... | --from-file).

    A progress bar goes to stderr. Every id gets a row; a failed id shows its error,
    and the command then exits with that error's code.
    """
    import asyncio

    settings = _settings()
    ids = _read_app_ids(app_ids, from_file)
    signer: TrustedSigner | None = None
    if trusted_signer is not None or trust_api:
        with settings.sync_client() as client:
            signer = _resolve_trusted_signer(client, kms, trusted_signer, trust_api)

    async def fetch() -> list[AppEnvEncryptPubKey | PhalaKMSError]:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        progress_console = _stderr()
        async with settings.async_client() as client:
            with Progress(
                TextColumn("fetching keys"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=progress_console,
                disable=not progress_console.is_terminal,
            ) as progress:
                task = progress.add_task("keys", total=len(set(ids)))

                def on_progress(done: int, total: int) -> None:
                    progress.update(task, completed=done, total=total)

                if signer is None:
                    return await client.get_app_env_encrypt_pubkeys(
                        kms, ids, concurrency=concurrency, return_exceptions=True,
                        on_progress=on_progress,
                    )  # fmt: skip
                return await client.get_app_env_encrypt_pubkeys(
                    kms, ids, concurrency=concurrency, return_exceptions=True,
                    trusted_signer=signer.key, on_progress=on_progress,
                )  # fmt: skip

    results = asyncio.run(fetch())
    from .errors import PhalaKMSError

    failures = [result for result in results if isinstance(result, PhalaKMSError)]
    if settings.json_output:
        rows = []
        for app_id, result in zip(ids, results, strict=True):
            if isinstance(result, PhalaKMSError):
                rows.append(
                    {
                        "app_id": app_id,
                        "ok": False,
                        "key": None,
                        "error": {
                            "type": type(result).__name__,
                            "message": settings.redact(result.message),
                            "exit_code": int(exit_code_for(result)),
                        },
                    }
                )
            else:
                rows.append({"app_id": app_id, "ok": True, "key": result, "error": None})
        _emit_json(
            {
                "kms": kms,
                "verified": signer is not None,
                "trusted_signer": signer.key if signer else None,
                "trusted_signer_source": signer.source if signer else None,
                "total": len(ids),
                "failed": len(failures),
                "results": rows,
            }
        )
    else:
        from rich.markup import escape
        from rich.table import Table

        table = Table(
            caption=f"{len(ids) - len(failures)} of {len(ids)} keys"
            + (f", verified against {_short(signer.key)}" if signer else ", NOT verified")
        )
        table.add_column("app_id", no_wrap=True)
        table.add_column("public_key / error", overflow="fold")
        for app_id, result in zip(ids, results, strict=True):
            if isinstance(result, PhalaKMSError):
                table.add_row(
                    escape(app_id), f"[red]{type(result).__name__}[/red]: {escape(result.message)}"
                )
            else:
                _add_row(table, app_id, result.public_key)
        _stdout().print(table)
    if failures:
        first = failures[0]
        _fail(
            f"{len(failures)} of {len(ids)} app ids failed; first: {describe_error(first)}",
            _hint(first),
            exit_code_for(first),
        )


# --------------------------------------------------------------------------- encrypt-env


def read_env_file(path: str, *, interpolate: bool = False) -> dict[str, str]:
    """Read a ``.env`` file with python-dotenv (comments, quotes, ``export`` handled).

    Args:
        path: The file, or ``-`` for stdin.
        interpolate: Expand ``${VAR}`` references (from the file and the environment).

    Raises:
        click.UsageError: A line cannot be parsed, or a name is given without ``=``; the
            message names the line or the name, never a value.
    """
    import io

    from dotenv import dotenv_values

    # python-dotenv only logs a line it cannot parse and carries on: a secret silently
    # missing from a deployment is worse than an error, so such a warning is fatal here.
    unparsed: list[str] = []

    class _Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            unparsed.append(record.getMessage())

    dotenv_logger = logging.getLogger("dotenv.main")
    handler = _Collect(logging.WARNING)
    dotenv_logger.addHandler(handler)
    try:
        if path == "-":
            values = dotenv_values(stream=io.StringIO(sys.stdin.read()), interpolate=interpolate)
        else:
            values = dotenv_values(path, interpolate=interpolate, encoding="utf-8")
    finally:
        dotenv_logger.removeHandler(handler)
    if unparsed:
        raise click.UsageError(f"{path}: {unparsed[0]}; fix the file (nothing was encrypted)")
    env: dict[str, str] = {}
    for name, value in values.items():
        if value is None:
            raise click.UsageError(
                f"{path}: {name!r} has no value (write {name}= for an empty value)"
            )
        env[name] = value
    return env


@cli.command("encrypt-env")
@_json_option
@click.argument("kms")
@click.argument("app_id")
@click.option(
    "--env-file",
    type=click.Path(exists=True, dir_okay=False, allow_dash=True),
    required=True,
    help="The .env file to encrypt ('-' for stdin). Comments, quotes and 'export' are handled.",
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
def encrypt_env_command(
    kms: str,
    app_id: str,
    env_file: str,
    trusted_signer: str | None,
    trust_api: bool,
    no_verify: bool,
    interpolate: bool,
) -> None:
    """Encrypt a .env file to APP_ID's key on KMS; print the hex for `encrypted_env`.

    The key's signature is verified first: pass --trusted-signer HEX (pinned) or
    --trust-api (the API's own k256_pubkey; weaker), or --no-verify to skip it
    knowingly. Only the hex goes to stdout; values are never printed.
    """
    settings = _settings()
    choices = (trusted_signer is not None) + trust_api + no_verify
    if choices != 1:
        raise click.UsageError(
            "choose exactly one of --trusted-signer HEX, --trust-api or --no-verify: the key"
            " must be verified against a signer you chose, or the check skipped explicitly"
        )
    env = read_env_file(env_file, interpolate=interpolate)
    settings.secrets.update(value for value in env.values() if len(value) >= 3)
    from ._validate import app_id_hex
    from .crypto import encrypt_env_vars

    normalized = app_id_hex(app_id)
    encrypt_env_vars(env, bytes(32 * [9]))  # names checked before any request
    with settings.sync_client() as client:
        signer = _resolve_trusted_signer(client, kms, trusted_signer, trust_api)
        if signer is not None:
            encrypted = client.encrypt_env_vars_for_app(
                kms, normalized, env, trusted_signer=signer.key
            )
        else:
            _stderr().print(
                "[yellow]warning:[/yellow] --no-verify: encrypting to a key whose signature was"
                " not checked; whoever can alter the API's answer could read these values.",
                soft_wrap=True,
            )
            key = client.get_app_env_encrypt_pubkey(kms, normalized)
            encrypted = encrypt_env_vars(env, key.public_key_bytes)
    names = ", ".join(env) or "none"
    if settings.json_output:
        _emit_json(
            {
                "kms": kms,
                "app_id": normalized,
                "encrypted_env": encrypted,
                "env_keys": list(env),
                "verified": signer is not None,
                "trusted_signer": signer.key if signer else None,
                "trusted_signer_source": signer.source if signer else None,
            }
        )
        return
    click.echo(encrypted)
    from rich.markup import escape

    _stderr().print(
        escape(
            f"encrypted {len(env)} variable(s) ({names}) for app {normalized} on {kms};"
            + (f" key verified against {signer.key}" if signer else " key NOT verified")
        ),
        soft_wrap=True,
    )


# --------------------------------------------------------------------------- fake / demo


@cli.command("fake-server")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    default=8787,
    show_default=True,
    help="Port to bind (0 picks a free one).",
)
def fake_server_command(host: str, port: int) -> None:
    """Run the fake Phala Cloud KMS API (phala_kms.testing) until Ctrl-C.

    It prints the PHALA_CLOUD_API_PREFIX and PHALA_CLOUD_API_KEY to use with it.
    """
    import ipaddress

    from .testing import run_fake_server

    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        click.echo(
            f"warning: binding {host}: the fake (and its well-known API key) is reachable"
            " from other machines",
            err=True,
        )
    try:
        run_fake_server(host, port)
    except OSError as err:
        _fail(
            f"cannot listen on {host}:{port}: {err.strerror or err}",
            "pick another --port",
            ExitCode.USAGE,
        )


@cli.command("demo")
@_json_option
@click.option(
    "--apps",
    type=click.IntRange(1, 5000),
    default=None,
    help="App ids in the key fan-out [default: 300 against the fake, 20 against a real API].",
)
@click.option(
    "--concurrency",
    type=click.IntRange(1, 100),
    default=32,
    show_default=True,
    help="Requests in flight during the fan-out.",
)
def demo_command(apps: int | None, concurrency: int) -> None:
    """Walk the whole SDK, step by step, with timings and checks.

    With no API key and no base URL configured (options or environment), it starts
    the embedded fake API in-process and runs every step, including a decryption
    round trip and a retried 503. With --base-url/--api-key (or their environment
    variables) it runs the read-only steps against that API. Exits non-zero if a
    step misbehaves.
    """
    from ._demo import run_demo

    settings = _settings()
    code = run_demo(
        api_key=settings.api_key,
        base_url=settings.base_url,
        api_version=settings.api_version,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        apps=apps,
        concurrency=concurrency,
        json_output=settings.json_output,
    )
    if code:
        click.get_current_context().exit(code)


if __name__ == "__main__":
    main()
