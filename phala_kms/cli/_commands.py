"""The read-only commands (``list``, ``contracts``, ``info``, ``onchain``,
``next-app-ids``) and ``fake-server``.

``list`` and ``contracts`` are one command made twice by :func:`_listing_command`:
they differ only in the client methods they page through and the columns they show.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._constants import CONTRACT_API_VERSION, ENV_API_KEY, ENV_BASE_URL
from ._exit import ExitCode, Failure
from ._output import (
    add_row,
    emit_json,
    inert,
    new_table,
    print_model,
    short,
    stdout,
    text,
    to_jsonable,
)
from ._settings import current_settings, int_option, json_option

if TYPE_CHECKING:
    from rich.table import Table

    from ..models import KMSContract, KMSInfo, KMSOnChainDetail, NextAppIDs, Paginated
    from ..sync import KMSClient

__all__ = [
    "COMMANDS",
    "contracts_command",
    "fake_server_command",
    "info_command",
    "list_command",
    "next_app_ids_command",
    "onchain_command",
]

T = TypeVar("T")

# --------------------------------------------------------------------------- list / contracts

_PageGetter = Callable[[int, int, "bool | None"], "Paginated[Any]"]
_Walker = Callable[..., Iterable[Any]]


def _fetch_listing(
    get_page: _PageGetter,
    walk: _Walker,
    noun: str,
    *,
    all_pages: bool,
    page: int,
    page_size: int,
    is_onchain: bool | None,
) -> tuple[Sequence[Any], Any, str]:
    """One page, or every page: ``(items, JSON-ready data, table caption)``."""
    if all_pages:
        items = tuple(walk(page_size=page_size, is_onchain=is_onchain))
        return items, {"items": items, "total": len(items)}, f"{len(items)} {noun}"
    result = get_page(page, page_size, is_onchain)
    caption = f"page {result.page} of {result.pages} · {result.total} {noun}"
    if result.has_next:
        caption += " · more with --page or --all"
    return result.items, to_jsonable(result), caption


def _listing_command(
    name: str,
    summary: str,
    noun: str,
    methods: Callable[[KMSClient], tuple[_PageGetter, _Walker]],
    columns: Sequence[str],
    row: Callable[[Any], Sequence[str]],
    *,
    fold: Iterable[str] = (),
) -> click.Command:
    """A paged listing command (``--onchain/--offchain``, ``--all``, ``--page``, ``--page-size``).

    Args:
        name: The command's name.
        summary: Its help text.
        noun: What it lists, for the table caption (``"KMS nodes"``).
        methods: The client's ``(get one page, walk every page)`` methods.
        columns: The table's column headers.
        row: One item's cells, in column order.
        fold: The columns that may wrap.
    """

    @click.command(name, help=summary)
    @json_option
    @click.option(
        "--onchain/--offchain",
        "is_onchain",
        default=None,
        help="Only on-chain KMS, or only the off-chain Phala KMS [default: both].",
    )
    @click.option("--all", "all_pages", is_flag=True, help="Fetch every page.")
    @int_option("--page", 1, None, 1, "Page number.")
    @int_option("--page-size", 1, 100, 20, "Items per page (with --all: per request).")
    def command(is_onchain: bool | None, all_pages: bool, page: int, page_size: int) -> None:
        settings = current_settings()
        with settings.sync_client() as client:
            get_page, walk = methods(client)
            items, data, caption = _fetch_listing(
                get_page, walk, noun,
                all_pages=all_pages, page=page, page_size=page_size, is_onchain=is_onchain,
            )  # fmt: skip
        if settings.json_output:
            emit_json(data)
            return
        table = new_table(columns, fold=fold, caption=caption)
        for item in items:
            add_row(table, *row(item))
        stdout().print(table)

    return command


def _node_row(kms: KMSInfo) -> Sequence[str]:
    chain = text(kms.chain_id) if kms.chain_id is not None else "off-chain"
    return (kms.id, text(kms.slug), chain, kms.version, kms.url, short(kms.k256_pubkey))


def _contract_row(contract: KMSContract) -> Sequence[str]:
    return (
        contract.id,
        text(contract.slug),
        text(contract.label),
        str(contract.chain_id) if contract.is_onchain else "off-chain",
        short(contract.contract_address) if contract.is_onchain else "phala",
        str(contract.node_count),
        short(contract.k256_pubkey),
    )


list_command = _listing_command(
    "list",
    "List KMS nodes (GET /kms, node-centric view).",
    "KMS nodes",
    lambda client: (client.get_kms_list, client.iter_kms_list),
    ("id", "slug", "chain", "version", "url", "k256_pubkey"),
    _node_row,
    fold=("url",),
)

contracts_command = _listing_command(
    "contracts",
    f"List KMS contracts (GET /kms, contract-centric view, API {CONTRACT_API_VERSION}).",
    "KMS contracts",
    lambda client: (client.list_kms_contracts, client.iter_kms_contracts),
    ("id", "slug", "label", "chain", "contract", "nodes", "k256_pubkey"),
    _contract_row,
)

# --------------------------------------------------------------------------- single reads


def _read(call: Callable[[KMSClient], T], show: Callable[[T], None]) -> None:
    """Make one call with a client for the current settings and print its result:
    as JSON with ``--json``, else with ``show``."""
    settings = current_settings()
    with settings.sync_client() as client:
        result = call(client)
    if settings.json_output:
        emit_json(result)
    else:
        show(result)


@click.command("info")
@json_option
@click.argument("kms_id")
def info_command(kms_id: str) -> None:
    """Show one KMS node (GET /kms/KMS_ID): KMS_ID is an id (kms_...) or slug."""
    _read(lambda client: client.get_kms_info(kms_id), _show_node)


def _show_node(kms: KMSInfo) -> None:
    chain_id = kms.chain_id if kms.chain_id is not None else "off-chain (Phala KMS)"
    print_model(stdout(), kms, _NODE_FIELDS, chain_id=chain_id)


_NODE_FIELDS = (
    "id",
    "slug",
    "url",
    "version",
    "chain_id",
    "kms_contract_address",
    "gateway_app_id",
    "k256_pubkey",
)
_CONTRACT_FIELDS = ("contract_address", "k256_pubkey", "ca_pubkey", "gateway_contract_address")


@click.command("onchain")
@json_option
@click.argument("chain")
def onchain_command(chain: str) -> None:
    """Show the on-chain KMS contracts of CHAIN (base, ethereum) with devices and images."""
    _read(lambda client: client.get_kms_on_chain_detail(chain), _show_onchain)


def _allowed(value: bool | None) -> str:
    return "unknown" if value is None else text(value)


def _show_onchain(detail: KMSOnChainDetail) -> None:
    from rich.markup import escape

    console = stdout()
    console.print(
        f"[bold]{escape(inert(detail.chain_name))}[/bold] (chain id {inert(detail.chain_id)}):"
        f" {len(detail.contracts)} KMS contract(s)"
    )
    for contract in detail.contracts:
        console.print()
        print_model(console, contract, _CONTRACT_FIELDS)
        devices = _titled_table("devices", ("device_id", "node_name", "allowed"))
        for device in contract.devices:
            add_row(
                devices,
                short(device.device_id, 16),
                text(device.node_name),
                _allowed(device.on_chain_allowed),
            )
        images = _titled_table("os images", ("name", "version", "os_image_hash", "allowed"))
        for image in contract.os_images:
            add_row(
                images,
                image.name,
                image.version,
                short(image.os_image_hash, 16),
                _allowed(image.on_chain_allowed),
            )
        console.print(devices)
        console.print(images)


def _titled_table(title: str, columns: Sequence[str]) -> Table:
    return new_table(columns, fold=columns, title=title, title_justify="left")


@click.command("next-app-ids")
@json_option
@int_option("--counts", 1, 20, 1, "How many ids to predict.")
def next_app_ids_command(counts: int) -> None:
    """Predict the next app ids (and nonces) on the Phala KMS.

    A prediction, not a reservation: asking again gives the same ids until an app is
    deployed, then they move on by one.
    """
    _read(lambda client: client.next_app_ids(counts), _show_app_ids)


def _show_app_ids(result: NextAppIDs) -> None:
    table = new_table(("app_id", "nonce"))
    table.columns[1].justify = "right"
    for item in result.app_ids:
        add_row(table, item.app_id, str(item.nonce))
    stdout().print(table)


# --------------------------------------------------------------------------- fake-server


@click.command(
    "fake-server",
    help="Run the fake Phala Cloud KMS API (phala_kms.testing) until stopped.\n\n"
    f"It prints the {ENV_BASE_URL} and {ENV_API_KEY} to use with it. Ctrl-C (SIGINT) or"
    " SIGTERM closes the server and exits 0, also when started from a script that"
    " ignores SIGINT; a port that cannot be bound exits 2.",
)
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to bind.")
@int_option("--port", 0, 65535, 8787, "Port to bind (0 picks a free one).")
def fake_server_command(host: str, port: int) -> None:
    """Run the fake API in the foreground; a port that cannot be bound exits 2."""
    import ipaddress

    from ..testing import run_fake_server

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
        raise Failure(
            f"cannot listen on {host}:{port}: {err.strerror or err}",
            "pick another --port",
            ExitCode.USAGE,
        ) from None


COMMANDS: tuple[click.Command, ...] = (
    list_command,
    contracts_command,
    info_command,
    onchain_command,
    next_app_ids_command,
    fake_server_command,
)
"""The commands of this module, for the root group."""
