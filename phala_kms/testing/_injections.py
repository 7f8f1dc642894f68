"""Where and how often the fake's faults apply: :class:`Injection` and the registry of them.

A fault (:mod:`._faults`) says *what* goes wrong; an injection says *where* (a route
name, ``"*"`` or a path glob) and *how often* (``times``).
"""

from __future__ import annotations

import fnmatch
import threading
from collections.abc import Collection
from dataclasses import dataclass

from ._faults import FAULT_TYPES, Fault, LatencyFault

__all__ = ["FaultRegistry", "Injection"]


@dataclass(eq=False)
class Injection:
    """One injected fault and how many more requests it applies to.

    Returned by :meth:`FakeKMSServer.inject <phala_kms.testing.FakeKMSServer.inject>`;
    read ``hits`` to see how often it fired.

    Attributes:
        route: a route name, ``"*"`` for every request, or a glob over the path below
            ``/api/v1`` (it starts with ``/``, e.g. ``"/kms/*/pubkey/*"``).
        fault: what happens.
        times: how many requests it applies to; ``None`` for every request until
            cleared.
        hits: how many requests it has applied to so far.
    """

    route: str
    fault: Fault
    times: int | None
    hits: int = 0

    @property
    def remaining(self) -> int | None:
        """Requests it still applies to (``None``: unlimited)."""
        return None if self.times is None else max(self.times - self.hits, 0)

    @property
    def exhausted(self) -> bool:
        """Whether it has applied ``times`` times already."""
        return self.times is not None and self.hits >= self.times

    def matches(self, route: str | None, path: str) -> bool:
        """Whether it applies to a request for ``route`` (its name) at ``path``."""
        if self.route == "*":
            return True
        if self.route.startswith("/"):
            return fnmatch.fnmatchcase(path, self.route)
        return self.route == route


class FaultRegistry:
    """The active injections, in injection order; safe to use from any thread."""

    def __init__(self, route_names: Collection[str]) -> None:
        """Accept injections for ``route_names``, ``"*"`` and path globs."""
        self._route_names = tuple(route_names)
        self._lock = threading.Lock()
        self._injections: list[Injection] = []

    def inject(self, route: str, fault: Fault, times: int | None) -> Injection:
        """Add an injection of ``fault`` on ``route`` for ``times`` requests.

        Raises:
            ValueError: unknown route name or ``times`` < 1.
            TypeError: ``fault`` is not a fault.
        """
        if route != "*" and not route.startswith("/") and route not in self._route_names:
            raise ValueError(
                f"unknown route {route!r}; use one of {self._route_names}, '*' or '/glob'"
            )
        if times is not None and times < 1:
            raise ValueError("times must be >= 1 or None")
        if not isinstance(fault, FAULT_TYPES):
            raise TypeError(f"not a fault: {fault!r}")
        injection = Injection(route=route, fault=fault, times=times)
        with self._lock:
            self._injections.append(injection)
        return injection

    @property
    def injections(self) -> list[Injection]:
        """The injections still active, in injection order."""
        with self._lock:
            return list(self._injections)

    def clear(self) -> None:
        """Remove every injection."""
        with self._lock:
            self._injections.clear()

    def take(self, route: str, path: str) -> list[Fault]:
        """The faults that act on one request, counting a hit on each.

        Every matching :class:`LatencyFault`, and the first other matching fault, in
        injection order. Exhausted injections are removed.

        Args:
            route: the request's route name.
            path: the request path below ``/api/v1``.
        """
        if not self._injections:  # the common case, without the lock
            return []
        taken: list[Fault] = []
        with self._lock:
            answered = False
            for injection in self._injections:
                if injection.exhausted or not injection.matches(route, path):
                    continue
                if not isinstance(injection.fault, LatencyFault):
                    if answered:
                        continue
                    answered = True
                injection.hits += 1
                taken.append(injection.fault)
            self._injections = [i for i in self._injections if not i.exhausted]
        return taken
