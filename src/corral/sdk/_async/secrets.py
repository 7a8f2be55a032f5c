"""Secrets: registered once, given to sandboxes by name; their values never enter a sandbox."""

from __future__ import annotations

import builtins

from corral.sdk._async.client import AsyncApiClient
from corral.sdk.config import ConnectionConfig
from corral.sdk.models import SecretInfo


class AsyncSecrets:
    """``AsyncSecrets.create("GITHUB_TOKEN", value, allowed_hosts=["api.github.com"])``, then
    ``AsyncSandbox.create(secrets=["GITHUB_TOKEN"])``: inside, ``$GITHUB_TOKEN`` is a placeholder
    that corral's egress proxy swaps for the value in request headers to the allowed hosts only."""

    @staticmethod
    async def create(
        name: str,
        value: str,
        allowed_hosts: builtins.list[str],
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> SecretInfo:
        async with AsyncApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            body = {"name": name, "value": value, "allowed_hosts": allowed_hosts}
            return SecretInfo.from_dict(await api.request("POST", "/v1/secrets", json=body))

    @staticmethod
    async def list(
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SecretInfo]:
        async with AsyncApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            data = await api.request("GET", "/v1/secrets")
            return [SecretInfo.from_dict(s) for s in data["secrets"]]

    @staticmethod
    async def delete(
        name: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        async with AsyncApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            await api.request("DELETE", f"/v1/secrets/{name}")
