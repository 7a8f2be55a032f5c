"""The isolation backends one server runs, chosen per sandbox.

Every registered backend is loaded on first use with the same settings and probed once; a
sandbox runs on the backend its create request names, else its template's default (the label
``corral.isolation``), else the server's (``--isolation``). ``auto`` is the strongest backend that
works here and is fit for production: a microVM only with working KVM (under TCG it works, slowly,
when asked for by name), then gVisor, then namespaces.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from .. import errors
from ..backends import REGISTRY, Backend, Probe, load_backend

log = logging.getLogger("corral.manager")

STRONGEST_FIRST = ("microvm", "gvisor", "namespace")
ISOLATIONS = (*REGISTRY, "auto")
ISOLATION_LABEL = "corral.isolation"  # a template's default backend (a Dockerfile LABEL)


@dataclass(frozen=True)
class BackendInfo:
    name: str
    works: bool
    reason: str  # why it does not work here, or a note on how it works ("TCG: slow")
    auto: bool  # what ``auto`` may pick (works, and fit for production)
    default: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "works": self.works,
            "reason": self.reason,
            "auto": self.auto,
            "default": self.default,
        }


class BackendSet:
    def __init__(self, default: str, only: dict[str, dict[str, Any]] | None = None, **kwargs: Any) -> None:
        """``kwargs`` go to every backend's constructor, ``only[name]`` to that backend's alone."""
        if default not in ISOLATIONS:
            raise ValueError(f"unknown isolation {default!r}; known: {', '.join(ISOLATIONS)}")
        self._kwargs = kwargs
        self._only = only or {}
        self._loaded: dict[str, Backend] = {}
        self._probes: dict[str, Probe] = {}
        self._wanted = default
        self._default: str | None = None

    # ---- choosing ---------------------------------------------------------------------

    @property
    def default_name(self) -> str:
        """The server's default backend (``auto`` resolved, once)."""
        if self._default is None:
            self._default = self._resolve_auto() if self._wanted == "auto" else self._wanted
        return self._default

    def _resolve_auto(self) -> str:
        for name in STRONGEST_FIRST:
            if name in REGISTRY and self.info(name).auto:
                return name
        return "namespace"  # nothing works: namespace's own start says why

    def choose(self, isolation: str | None) -> Backend:
        """The backend a new sandbox runs on; refuses one that does not work on this host."""
        name = isolation or self.default_name
        if name == "auto":
            name = self.default_name if self._wanted == "auto" else self._resolve_auto()
        if name not in REGISTRY:
            raise errors.InvalidRequestError(f"unknown isolation {name!r}; known: {', '.join(ISOLATIONS)}")
        info = self.info(name)
        if not info.works:
            raise errors.NotSupportedError(f"the {name} backend does not work on this host: {info.reason}")
        return self.get(name)

    # ---- loading and probing ------------------------------------------------------------

    def get(self, name: str) -> Backend:
        """The backend called ``name`` (loaded on first use)."""
        backend = self._loaded.get(name)
        if backend is None:
            try:
                backend = load_backend(name, **self._kwargs, **self._only.get(name, {}))
            except ValueError as e:
                raise errors.InvalidRequestError(str(e)) from None
            self._loaded[name] = backend
        return backend

    def probe(self, name: str) -> Probe:
        probe = self._probes.get(name)
        if probe is None:
            try:
                probe = self.get(name).probe()
            except errors.CorralError:
                raise
            except Exception as e:  # e.g. its module cannot be imported here
                probe = Probe(False, f"{type(e).__name__}: {e}")
            self._probes[name] = probe
        return probe

    def info(self, name: str) -> BackendInfo:
        probe = self.probe(name)
        auto = probe.ok and probe.production
        return BackendInfo(name, probe.ok, probe.reason, auto, name == self._default)

    def infos(self) -> list[BackendInfo]:
        self.default_name  # noqa: B018 (resolves auto, so "default" is set)
        return [self.info(name) for name in REGISTRY]

    def names_to_reap(self) -> list[str]:
        """The backends that may have left sandboxes on this host (those that work here)."""
        return [name for name in REGISTRY if self.probe(name).ok]

    async def close(self) -> None:
        for backend in self._loaded.values():
            try:
                await backend.close()
            except Exception:
                log.exception("closing the %s backend", backend.name)
