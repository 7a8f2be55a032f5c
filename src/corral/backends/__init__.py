"""Isolation backends, picked by name from a registry (``auto`` probes the host)."""

from __future__ import annotations

import importlib

from .base import Backend, Limits, Probe, SandboxHandle, SandboxSpec, SecretRule, Usage

# name -> "module:Class"; imported lazily so the SDK and CLI import anywhere.
REGISTRY: dict[str, str] = {
    "namespace": "corral.backends.namespace.backend:NamespaceBackend",
    "gvisor": "corral.backends.gvisor.backend:GVisorBackend",
    "microvm": "corral.backends.microvm.backend:MicroVMBackend",
}


def load_backend(name: str, **kwargs: object) -> Backend:
    if name == "auto":
        name = "namespace"
    try:
        target = REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown isolation backend {name!r}; known: {', '.join(REGISTRY)}") from None
    module_name, cls_name = target.split(":")
    cls = getattr(importlib.import_module(module_name), cls_name)
    backend: Backend = cls(**kwargs)
    return backend


__all__ = ["REGISTRY", "Backend", "Limits", "Probe", "SandboxHandle", "SandboxSpec", "SecretRule", "Usage", "load_backend"]
