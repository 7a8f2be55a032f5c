# generated from _async by scripts/gen_sync.py, do not edit
"""Secrets: registered once, given to sandboxes by name; their values never enter a sandbox."""

from __future__ import annotations

import builtins

from corral.sdk._sync.client import ApiClient
from corral.sdk.config import ConnectionConfig
from corral.sdk.models import SecretInfo


class Secrets:
    """``Secrets.create("GITHUB_TOKEN", value, allowed_hosts=["api.github.com"])``, then
    ``Sandbox.create(secrets=["GITHUB_TOKEN"])``: inside, ``$GITHUB_TOKEN`` is a placeholder
    that corral's egress proxy swaps for the value in request headers to the allowed hosts only."""

    @staticmethod
    def create(
        name: str,
        value: str,
        allowed_hosts: builtins.list[str],
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> SecretInfo:
        with ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            body = {"name": name, "value": value, "allowed_hosts": allowed_hosts}
            return SecretInfo.from_dict(api.request("POST", "/v1/secrets", json=body))

    @staticmethod
    def list(
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SecretInfo]:
        with ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            data = api.request("GET", "/v1/secrets")
            return [SecretInfo.from_dict(s) for s in data["secrets"]]

    @staticmethod
    def delete(
        name: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        with ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            api.request("DELETE", f"/v1/secrets/{name}")
