"""How the key commands choose the trusted signer, and how they say what was verified.

The trust options (``--trusted-signer``, ``--trust-api``, ``--anchor``, ``--rpc-url``,
``--node-url``, ``--ca-file``, ``--require-timestamped``) become one :class:`TrustChoice`.
It only maps options onto the arguments of the SDK's
:meth:`~phala_kms.AsyncKMSClient.get_trusted_signer`, where the rule that every named
source must agree lives (:mod:`phala_kms.anchors`):

* ``--trusted-signer HEX`` is the ``pinned`` source, ``--trust-api`` the ``api`` one;
  ``--anchor NAME`` (repeatable) names any of ``pinned``, ``api``, ``chain``, ``node``;
  the sources are the union of the three;
* ``--rpc-url`` is the ``chain`` source's JSON-RPC endpoint, ``--node-url`` (repeatable)
  the nodes of the ``node`` source (default: the API's list of the KMS's nodes), and
  ``--ca-file`` a PEM CA trusted for both (and for ``pubkey --from-node``'s node), in
  addition to the system store;
* no source at all means no verification (``pubkey`` shows the key unverified,
  ``encrypt-env`` needs ``--no-verify`` for that).

Options that would be silently ignored (``--rpc-url`` without ``--anchor chain``, ...)
are usage errors, before any request.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, TypeVar

import click

from ._output import inert, stderr

if TYPE_CHECKING:
    import ssl

    from ..models import TrustedSigner, VerifiedAppEnvEncryptPubKey

__all__ = ["ANCHORS", "TrustChoice", "trust_options", "verification_json", "verification_text"]

F = TypeVar("F", bound=Callable[..., Any])

ANCHORS: Final = ("pinned", "api", "chain", "node")
"""The trust-anchor sources, as :data:`phala_kms.anchors.SOURCES` names them (not
imported from there, so that ``--help`` loads no SDK network code)."""


@dataclasses.dataclass(frozen=True)
class TrustChoice:
    """The trust options of one command.

    Attributes:
        trusted_signer: ``--trusted-signer``: the pinned root key or its address.
        trust_api: ``--trust-api``.
        anchors: ``--anchor`` values, as given.
        rpc_url: ``--rpc-url``.
        node_urls: ``--node-url`` values.
        ca_file: ``--ca-file``.
        require_timestamped: ``--require-timestamped``.
    """

    trusted_signer: str | None = None
    trust_api: bool = False
    anchors: tuple[str, ...] = ()
    rpc_url: str | None = None
    node_urls: tuple[str, ...] = ()
    ca_file: str | None = None
    require_timestamped: bool = False

    @property
    def sources(self) -> tuple[str, ...]:
        """Every source named, in the SDK's reading order."""
        named = set(self.anchors)
        if self.trusted_signer is not None:
            named.add("pinned")
        if self.trust_api:
            named.add("api")
        return tuple(name for name in ANCHORS if name in named)

    def check(self, *, rpc_needed: bool = False, node_needed: bool = False) -> None:
        """Refuse options that contradict or would be ignored; before any request.

        Args:
            rpc_needed: Something besides ``--anchor chain`` uses ``--rpc-url``
                (``encrypt-env --check-registered``).
            node_needed: Something besides ``--anchor node`` talks to a KMS node, so
                ``--ca-file`` is used (``pubkey --from-node``).

        Raises:
            click.UsageError: ``--anchor pinned`` without ``--trusted-signer``;
                ``--rpc-url``, ``--node-url`` or ``--ca-file`` that nothing uses;
                ``--require-timestamped`` without any source.
        """
        sources = self.sources
        if "pinned" in self.anchors and self.trusted_signer is None:
            raise click.UsageError("--anchor pinned needs the pinned key: --trusted-signer HEX")
        if "chain" in sources and self.rpc_url is None:
            raise click.UsageError(
                "--anchor chain needs --rpc-url URL: a JSON-RPC endpoint of the chain the"
                " KMS contract is on"
            )
        if self.rpc_url is not None and "chain" not in sources and not rpc_needed:
            raise click.UsageError("--rpc-url is used by --anchor chain (or --check-registered)")
        if self.node_urls and "node" not in sources:
            raise click.UsageError("--node-url is used by --anchor node")
        if self.ca_file is not None and not (
            {"chain", "node"} & set(sources) or (rpc_needed and self.rpc_url) or node_needed
        ):
            raise click.UsageError(
                "--ca-file is used by --anchor node, --anchor chain, --rpc-url or --from-node"
            )
        if self.require_timestamped and not sources:
            raise click.UsageError(
                "--require-timestamped needs a signer to verify against: --trusted-signer,"
                " --trust-api or --anchor"
            )

    @functools.cached_property
    def ssl_context(self) -> ssl.SSLContext | None:
        """The system trust store plus ``--ca-file``, or ``None`` (the SDK's default).

        Raises:
            click.BadParameter: The file holds no usable PEM certificate.
        """
        if self.ca_file is None:
            return None
        import ssl

        context = ssl.create_default_context()
        try:
            context.load_verify_locations(cafile=self.ca_file)
        except (OSError, ssl.SSLError) as err:
            raise click.BadParameter(
                f"{inert(self.ca_file)} is not a PEM CA certificate file ({inert(err)})",
                param_hint="--ca-file",
            ) from None
        return context

    def signer_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of ``get_trusted_signer`` for these options."""
        pinned = self.trusted_signer.strip() if self.trusted_signer is not None else None
        return {
            "sources": self.sources,
            "pinned": pinned,
            "rpc_url": self.rpc_url if "chain" in self.sources else None,
            "node_urls": list(self.node_urls) or None,
            "ssl_context": self.ssl_context,
        }

    def checked(self, signer: TrustedSigner) -> TrustedSigner:
        """``signer``, after saying on stderr what an API-only signer trusts."""
        if self.sources == ("api",):
            _warn_api_only(signer)
        return signer


def _warn_api_only(signer: TrustedSigner) -> None:
    from rich.markup import escape

    sources = "; ".join(source.removeprefix("api: ") for source in signer.sources)
    stderr().print(
        "[yellow]warning:[/yellow] --trust-api (the API as the only anchor): trusting signer"
        f" {escape(inert(signer.k256_pubkey))} from {escape(inert(sources))}. This trusts"
        " the Phala Cloud API, which also serves the key:"
        " it guards against corruption in transit and KMS mis-routing, not against the API"
        " itself. Pin the key with --trusted-signer, or add --anchor chain / --anchor node,"
        " for stronger assurance.",
        soft_wrap=True,
    )


def _source_name(line: str) -> str:
    return line.split(":", 1)[0]


def verification_json(
    signer: TrustedSigner | None, key: VerifiedAppEnvEncryptPubKey | None = None
) -> dict[str, Any]:
    """What was verified, as JSON keys.

    ``verified``; ``trusted_signer`` (the agreed root key); ``trusted_signer_source``
    (the anchors' lines joined by ``"; "``); ``anchors`` (one ``{"source", "detail"}``
    per source that agreed); and, given the verified ``key``, ``verification``:
    ``{"scheme", "signer", "timestamp"}`` (``timestamp`` is ``null`` for the legacy
    scheme). All ``null`` / empty when nothing was verified.
    """
    data: dict[str, Any] = {
        "verified": signer is not None,
        "trusted_signer": signer.k256_pubkey if signer else None,
        "trusted_signer_source": "; ".join(signer.sources) if signer else None,
        "anchors": [{"source": _source_name(line), "detail": line} for line in signer.sources]
        if signer
        else [],
    }
    if key is not None or signer is None:
        data["verification"] = (
            {"scheme": key.scheme, "signer": key.signer, "timestamp": key.timestamp}
            if key is not None
            else None
        )
    return data


def _when(timestamp: int) -> str:
    import datetime

    try:
        moment = datetime.datetime.fromtimestamp(timestamp, datetime.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return str(timestamp)
    return f"{timestamp} ({moment:%Y-%m-%dT%H:%M:%SZ})"


def verification_text(signer: TrustedSigner, key: VerifiedAppEnvEncryptPubKey | None) -> str:
    """One line for people: the scheme, its timestamp, the signer and the anchors."""
    names = ", ".join(dict.fromkeys(_source_name(line) for line in signer.sources))
    if key is None:
        return f"against {signer.k256_pubkey} (anchors: {names})"
    scheme = key.scheme
    if key.timestamp is not None:
        scheme += f", signed at {_when(key.timestamp)}"
    else:
        scheme += " (legacy: no timestamp, replayable)"
    return f"{scheme}, by {key.signer} (anchors: {names})"


def _options() -> list[Callable[[F], F]]:
    return [
        click.option(
            "--trusted-signer",
            metavar="HEX",
            help="Anchor 'pinned': the KMS root key (k256_pubkey, compressed or uncompressed"
            " hex) or its Ethereum address, recorded once from a source you trust.",
        ),
        click.option(
            "--trust-api",
            is_flag=True,
            help="Anchor 'api' (same as --anchor api): the k256_pubkey of GET /kms/KMS"
            " (contract view, else node view). Alone it trusts the Phala Cloud API, which also"
            " serves the key: it catches corruption and KMS mis-routing, not a dishonest API."
            " A warning is printed.",
        ),
        click.option(
            "--anchor",
            "anchors",
            type=click.Choice(ANCHORS),
            multiple=True,
            help="A source of the KMS root key; repeat it: every source named must agree"
            " (else exit 6). pinned: --trusted-signer; api: the Cloud API; chain: the DstackKms"
            " contract's kmsInfo() over --rpc-url; node: the KMS nodes' GetMeta (--node-url,"
            " default the API's list of nodes).",
        ),
        click.option(
            "--rpc-url",
            metavar="URL",
            help="EVM JSON-RPC endpoint of the KMS contract's chain, for --anchor chain (and"
            " encrypt-env --check-registered); https, or http to loopback only. Its"
            " eth_chainId must be the contract's.",
        ),
        click.option(
            "--node-url",
            "node_urls",
            metavar="URL",
            multiple=True,
            help="A KMS node's base URL for --anchor node (repeatable) instead of the API's"
            " list; https, or http to loopback only.",
        ),
        click.option(
            "--ca-file",
            type=click.Path(exists=True, dir_okay=False),
            metavar="PATH",
            help="PEM CA certificate(s) to trust for the nodes (--anchor node, pubkey"
            " --from-node) and the RPC, in addition to the system store (e.g. the KMS's own"
            " CA). TLS is never switched off.",
        ),
        click.option(
            "--require-timestamped",
            is_flag=True,
            help="Refuse a key that offers only the legacy signature (no timestamp,"
            " replayable): exit 6.",
        ),
    ]


def trust_options(func: F) -> F:
    """Add the trust options to a command; it receives them as ``trust`` (a
    :class:`TrustChoice`)."""

    @functools.wraps(func)
    def command(
        *args: Any,
        trusted_signer: str | None,
        trust_api: bool,
        anchors: tuple[str, ...],
        rpc_url: str | None,
        node_urls: tuple[str, ...],
        ca_file: str | None,
        require_timestamped: bool,
        **kwargs: Any,
    ) -> Any:
        trust = TrustChoice(
            trusted_signer=trusted_signer,
            trust_api=trust_api,
            anchors=anchors,
            rpc_url=rpc_url,
            node_urls=node_urls,
            ca_file=ca_file,
            require_timestamped=require_timestamped,
        )
        return func(*args, trust=trust, **kwargs)

    wrapped: F = command  # type: ignore[assignment]
    for option in reversed(_options()):
        wrapped = option(wrapped)
    return wrapped
