"""The global options, the :class:`Settings` they fill, and options several commands share.

Every default comes from :mod:`phala_kms._constants`, the SDK's own, so the command
line and the clients cannot drift apart.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._constants import (
    DEFAULT_API_VERSION,
    DEFAULT_BASE_URL,
    DEFAULT_CONCURRENCY,
    DEFAULT_MAX_RETRIES,
    DEFAULT_TIMEOUT,
    ENV_API_KEY,
    ENV_BASE_URL,
)
from ._exit import ExitCode, Failure

if TYPE_CHECKING:
    from ..client import AsyncKMSClient
    from ..sync import KMSClient

__all__ = [
    "Settings",
    "concurrency_option",
    "current_settings",
    "find_settings",
    "global_options",
    "int_option",
    "json_option",
]

F = TypeVar("F", bound=Callable[..., Any])

REDACTED = "***"
"""What a secret is replaced with in anything printed."""


def _stripped(value: str | None) -> str | None:
    return value.strip() if value and value.strip() else None


@dataclasses.dataclass
class Settings:
    """The global options, shared by every command (``ctx.obj``).

    Attributes:
        api_key: The API key (stripped), or ``None``.
        base_url: The API prefix (stripped), or ``None`` for the SDK's default.
        api_version: The ``X-Phala-Version`` for calls that do not pin their own, or ``None``.
        timeout: Seconds one attempt of a request may take.
        max_retries: Retries of safe failures.
        json_output: Write JSON to stdout instead of tables.
        secrets: Text never to print: the API key and, once read, env-var values.
        json_written: A JSON document went to stdout already (so a failure after it
            goes to stderr only, and stdout stays one document).
    """

    api_key: str | None = None
    base_url: str | None = None
    api_version: str | None = None
    timeout: float = DEFAULT_TIMEOUT
    max_retries: int = DEFAULT_MAX_RETRIES
    json_output: bool = False
    secrets: set[str] = dataclasses.field(default_factory=set)
    json_written: bool = False

    def __post_init__(self) -> None:
        self.api_key = _stripped(self.api_key)
        self.base_url = _stripped(self.base_url)
        if self.api_key:
            self.secrets.add(self.api_key)

    def update(self, **options: Any) -> None:
        """Set the global options (the fields of this class) once they are parsed.

        The root group's entry point creates the settings before parsing, so that it
        still holds them (``--json``, the secrets to redact) when a failure escapes
        the command; the root command fills them in here.
        """
        for name, value in options.items():
            if name not in self.__dataclass_fields__:
                raise TypeError(f"unknown setting {name!r}")
            setattr(self, name, value)
        self.__post_init__()

    def redact(self, text: str) -> str:
        """Replace every known secret (API key, env values) in ``text`` with ``***``."""
        for secret in sorted(self.secrets, key=len, reverse=True):
            if secret:
                text = text.replace(secret, REDACTED)
        return text

    def require_api_key(self) -> str:
        """The API key.

        Raises:
            Failure: No key is configured (exit code 3, saying how to set one).
        """
        if self.api_key is None:
            raise Failure(
                "no API key configured",
                f"set {ENV_API_KEY} or pass --api-key (keys look like phak_...);"
                " or try `phala-kms demo`, which needs none",
                ExitCode.AUTH,
                kind="NoAPIKey",
            )
        return self.api_key

    def client_kwargs(self, *, require_api_key: bool = True) -> dict[str, Any]:
        """The keyword arguments of ``KMSClient`` / ``AsyncKMSClient`` for these settings.

        Args:
            require_api_key: Fail now when no key is configured; ``False`` for a command
                that may not need the API at all (a client without a key raises
                ``ConfigurationError`` on its first API request).

        Raises:
            Failure: ``require_api_key`` and no key is configured.
        """
        return {
            "api_key": self.require_api_key() if require_api_key else self.api_key,
            "base_url": self.base_url,
            "api_version": self.api_version,
            "timeout": self.timeout,
            "max_retries": self.max_retries,
        }

    def sync_client(self, *, require_api_key: bool = True) -> KMSClient:
        """A blocking client for these settings (use it as a context manager); see
        :meth:`client_kwargs` for ``require_api_key``."""
        from ..sync import KMSClient

        return KMSClient(**self.client_kwargs(require_api_key=require_api_key))

    def async_client(self) -> AsyncKMSClient:
        """An asyncio client for these settings (use it as an async context manager)."""
        from ..client import AsyncKMSClient

        return AsyncKMSClient(**self.client_kwargs())


def current_settings() -> Settings:
    """The settings of the command being run."""
    return click.get_current_context().ensure_object(Settings)


def find_settings(settings: Settings | None = None) -> Settings | None:
    """``settings``, else the running command's, else ``None`` (outside a command)."""
    if settings is not None:
        return settings
    ctx = click.get_current_context(silent=True)
    return ctx.find_object(Settings) if ctx is not None else None


def global_options(func: F) -> F:
    """Add the global options (everything but ``--verbose`` and ``--version``) to ``func``.

    ``func`` receives them as ``api_key``, ``base_url``, ``api_version``, ``timeout``,
    ``max_retries`` and ``json_output``: the fields of :class:`Settings`.
    """
    options = [
        click.option(
            "--api-key",
            envvar=ENV_API_KEY,
            show_envvar=True,
            metavar="KEY",
            help="Phala Cloud API key (phak_...). Prefer the environment variable; never printed.",
        ),
        click.option(
            "--base-url",
            envvar=ENV_BASE_URL,
            show_envvar=True,
            metavar="URL",
            help=f"API prefix including /api/v1 [default: {DEFAULT_BASE_URL}].",
        ),
        click.option(
            "--api-version",
            metavar="YYYY-MM-DD",
            help="X-Phala-Version for calls that do not pin their own"
            f" [default: {DEFAULT_API_VERSION}].",
        ),
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            default=DEFAULT_TIMEOUT,
            show_default=True,
            help="Seconds allowed for one attempt of a request.",
        ),
        int_option(
            "--max-retries",
            0,
            20,
            DEFAULT_MAX_RETRIES,
            "Retries of safe failures (refused, timeouts, 429, 5xx); 0 disables.",
        ),
        click.option(
            "--json", "json_output", is_flag=True, help="Write JSON to stdout instead of tables."
        ),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _set_json(ctx: click.Context, _param: click.Parameter, value: bool) -> None:
    if value:
        ctx.ensure_object(Settings).json_output = True


json_option = click.option(
    "--json",
    "json_output",
    is_flag=True,
    expose_value=False,
    callback=_set_json,
    help="Write JSON to stdout (same as the global --json).",
)
"""A command's own ``--json``, the same as the global one."""


def int_option(
    flag: str, low: int, high: int | None, default: int, help_text: str
) -> Callable[[F], F]:
    """An integer option from ``low`` to ``high`` (``None``: no upper bound), default shown."""
    return click.option(
        flag, type=click.IntRange(low, high), default=default, show_default=True, help=help_text
    )


def concurrency_option(help_text: str) -> Callable[[F], F]:
    """``--concurrency``: requests in flight at once (1 to 100, default the SDK's)."""
    return int_option("--concurrency", 1, 100, DEFAULT_CONCURRENCY, help_text)
