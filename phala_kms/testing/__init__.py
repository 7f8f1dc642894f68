"""A fake Phala Cloud KMS API for tests: real HTTP, real keys, injectable faults.

:class:`FakeKMSServer` is an ``aiohttp.web`` server on a loopback port that serves
every KMS route of the Phala Cloud API under ``/api/v1``: ``GET /kms``,
``GET /kms/{kms_id}``, ``GET /kms/{slug}/nodes``, ``GET /kms/{kms}/pubkey/{app_id}``,
``GET /kms/on-chain/{chain}`` and ``GET /kms/phala/next_app_id``. It checks the API
key, switches shapes on ``X-Phala-Version`` (node shapes before ``2026-06-23``;
contract shapes from it, and when the header is absent), validates like FastAPI, and
signs each app's X25519 key with a secp256k1 KMS root key the way the dstack KMS
does. Any route can be made to fail: error statuses with ``Retry-After``, latency,
gateway HTML, truncated or non-JSON bodies, dropped connections, redirects, huge
bodies. It logs every request (secrets redacted) and counts the peak number of
requests in flight.

Async tests::

    from phala_kms.testing import FakeKMSServer, StatusFault

    async def test_retries_503() -> None:
        async with FakeKMSServer() as server:
            server.inject("kms_list", StatusFault(503, retry_after=1), times=2)
            # point the client at server.base_url with server.api_key ...
            assert server.route_counts["kms_list"] == 3

Pressure, server-wide while it is on (not per injection): a rate limit, a token bucket
answering 429 + ``Retry-After`` + ``ERR-05-002`` once empty, and an outage switch::

    server.rate_limit = RateLimit(rate=300, burst=30, retry_after=1)  # or http_date=True
    server.rate_limited_count                       # requests it refused so far
    server.outage = True                            # every API request: 503
    server.outage = False                           # over; server.outage_count refused

Sync tests (the server runs its own loop in a background thread)::

    with FakeKMSServer.in_thread(phala_node_count=3) as server:
        ...

Checking a key the fake handed out::

    private = server.app_private_key("phala", app_id)   # decrypt what you encrypted
    env = decrypt_env_vars(ciphertext, private)
    server.k256_pubkey                                  # the Phala KMS signer to trust

Predicted app ids (``GET /kms/phala/next_app_id``) stay the same until a test says an
app was deployed::

    app_id = server.deploy_app()   # the first predicted id; predictions move on by one

The chain trust anchor (``get_trusted_signer(..., sources=("chain",))``) reads a DstackKms
contract over JSON-RPC: :class:`FakeChainRPC` serves a chain on a loopback port, either
a real EVM (:class:`EthTesterEVM`, needs eth-tester and py-evm) or the pure-Python
:class:`DstackKmsStandIn`, which needs nothing more::

    chain = DstackKmsStandIn()
    address = chain.put_contract(root_key_bytes, [app_id_bytes])   # kmsInfo, registeredApps
    with FakeChainRPC.in_thread(chain) as rpc:
        ...   # rpc_url=rpc.url; the KMS's contract_address in the fake must be ``address``

With pytest, the plugin (installed with phala-kms) provides the fixtures
``fake_kms_server`` (async) and ``fake_kms_server_thread`` (sync); mark a test with
``@pytest.mark.fake_kms_options(...)`` to pass :class:`FakeKMSServer` arguments. From a
shell, ``phala-kms fake-server --port 8787`` runs :func:`run_fake_server`; Ctrl-C
(SIGINT) or SIGTERM closes it cleanly and exits 0, even when started with SIGINT ignored.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._constants import API_VERSIONS, CONTRACT_API_VERSION, NODE_API_VERSION
from .._lazy import lazy_attributes

if TYPE_CHECKING:
    from ._chain import ChainBackend, DstackKmsStandIn, EthTesterEVM, FakeChainRPC
    from ._decrypt import decrypt_env_vars
    from ._faults import (
        DropConnectionFault,
        Fault,
        GatewayHTMLFault,
        HugeBodyFault,
        LatencyFault,
        NonJSONFault,
        RedirectFault,
        ResetMidBodyFault,
        RetryAfter,
        StatusFault,
        TruncatedJSONFault,
        WrongShapeFault,
    )
    from ._injections import Injection
    from ._pressure import Outage, RateLimit
    from ._requests import REDACTED, RecordedRequest
    from ._retries import instant_retries
    from ._routes import ROUTE_NAMES
    from ._server import DEFAULT_API_KEY, FakeKMSServer, ThreadedFakeKMSServer
    from ._shell import run_fake_server

__all__ = [
    "API_VERSIONS",
    "CONTRACT_API_VERSION",
    "ChainBackend",
    "DEFAULT_API_KEY",
    "DstackKmsStandIn",
    "DropConnectionFault",
    "EthTesterEVM",
    "FakeChainRPC",
    "FakeKMSServer",
    "Fault",
    "GatewayHTMLFault",
    "HugeBodyFault",
    "Injection",
    "LatencyFault",
    "NODE_API_VERSION",
    "NonJSONFault",
    "Outage",
    "REDACTED",
    "ROUTE_NAMES",
    "RateLimit",
    "RecordedRequest",
    "RedirectFault",
    "ResetMidBodyFault",
    "RetryAfter",
    "StatusFault",
    "ThreadedFakeKMSServer",
    "TruncatedJSONFault",
    "WrongShapeFault",
    "decrypt_env_vars",
    "instant_retries",
    "run_fake_server",
]

# The rest loads on first use, so that the pytest plugin (imported by every pytest run
# where phala-kms is installed) costs nothing in suites that never touch the fake.
# Every name of __all__ that is neither imported above nor listed here is a fault type.
_MODULES = {
    "decrypt_env_vars": "_decrypt",
    "ChainBackend": "_chain",
    "DstackKmsStandIn": "_chain",
    "EthTesterEVM": "_chain",
    "FakeChainRPC": "_chain",
    "Injection": "_injections",
    "Outage": "_pressure",
    "RateLimit": "_pressure",
    "REDACTED": "_requests",
    "RecordedRequest": "_requests",
    "instant_retries": "_retries",
    "ROUTE_NAMES": "_routes",
    "DEFAULT_API_KEY": "_server",
    "FakeKMSServer": "_server",
    "ThreadedFakeKMSServer": "_server",
    "run_fake_server": "_shell",
}
_LAZY = {name: _MODULES.get(name, "_faults") for name in __all__ if name not in globals()}

__getattr__, __dir__ = lazy_attributes(__name__, globals(), _LAZY, __all__)
