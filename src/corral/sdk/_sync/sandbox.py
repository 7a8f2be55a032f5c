# generated from _async by scripts/gen_sync.py, do not edit
"""``Sandbox``: create, connect to, list and kill sandboxes; ``.commands``, ``.files``, ``.pty``."""

from __future__ import annotations

import builtins
from typing import Any
from urllib.parse import urlencode, urlsplit

from corral.errors import SandboxNotFoundError, SandboxNotRunningError
from corral.sdk._sync.client import ApiClient
from corral.sdk._sync.code import CodeInterpreter, Handler
from corral.sdk._sync.commands import Commands
from corral.sdk._sync.files import Filesystem
from corral.sdk._sync.pty import Pty
from corral.sdk.config import ConnectionConfig
from corral.sdk.execution import CodeContext, Execution
from corral.sdk.models import BackendInfo, NetworkInfo, PortInfo, SandboxInfo


class Sandbox:
    """A running sandbox. Use as a context manager to kill it on exit::

    with Sandbox.create() as sbx:
        r = sbx.commands.run("echo hi")
    """

    def __init__(self, info: SandboxInfo, api: ApiClient) -> None:
        self._info = info
        self._api = api
        self.commands = Commands(api, info.sandbox_id)
        self.files = Filesystem(api, info.sandbox_id)
        self.pty = Pty(api, info.sandbox_id)
        self._code = CodeInterpreter(api, info.sandbox_id)

    @property
    def sandbox_id(self) -> str:
        return self._info.sandbox_id

    @property
    def id(self) -> str:
        return self._info.sandbox_id

    @property
    def _path(self) -> str:
        return f"/v1/sandboxes/{self.sandbox_id}"

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.sandbox_id} template={self._info.template!r}>"

    @classmethod
    def create(
        cls,
        template: str = "base",
        timeout: int = 300,
        metadata: dict[str, str] | None = None,
        envs: dict[str, str] | None = None,
        cpu_count: float | None = None,
        memory_mb: int | None = None,
        disk_mb: int | None = None,
        internet: bool = True,
        public_ports: bool = True,
        allow_out: builtins.list[str] | None = None,
        deny_out: builtins.list[str] | None = None,
        secrets: builtins.list[str] | None = None,
        isolation: str | None = None,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Start a new sandbox from ``template`` that lives ``timeout`` seconds unless extended.

        ``isolation`` picks the backend: "namespace", "gvisor", "microvm" or "auto" (default: the
        template's, else the server's; :meth:`backends` says which work on the server's host)."""
        body: dict[str, Any] = {
            "template": template,
            "timeout": timeout,
            "metadata": metadata or {},
            "envs": envs or {},
            "internet": internet,
            "public_ports": public_ports,
            "allow_out": allow_out or [],
            "deny_out": deny_out or [],
            "secrets": secrets or [],
        }
        for key, value in (
            ("cpu_count", cpu_count), ("memory_mb", memory_mb), ("disk_mb", disk_mb), ("isolation", isolation)
        ):  # fmt: skip
            if value is not None:
                body[key] = value
        api = ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout))
        try:
            data = api.request("POST", "/v1/sandboxes", json=body)
        except BaseException:
            api.close()
            raise
        return cls(SandboxInfo.from_dict(data), api)

    @classmethod
    def connect(
        cls,
        sandbox_id: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> Sandbox:
        """Attach to an existing sandbox (raises ``SandboxNotFoundError`` if there is none)."""
        api = ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout))
        try:
            data = api.request("GET", f"/v1/sandboxes/{sandbox_id}")
        except BaseException:
            api.close()
            raise
        return cls(SandboxInfo.from_dict(data), api)

    @staticmethod
    def list(
        state: str | builtins.list[str] | None = None,
        metadata: dict[str, str] | None = None,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[SandboxInfo]:
        """Sandboxes known to the server, optionally only those in ``state`` with ``metadata``."""
        params: builtins.list[tuple[str, str]] = []
        for s in [state] if isinstance(state, str) else state or []:
            params.append(("state", s))
        for key, value in (metadata or {}).items():
            params.append(("metadata", f"{key}={value}"))
        config = ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)
        with ApiClient(config) as api:
            data = api.request("GET", "/v1/sandboxes", params=params)
        return [SandboxInfo.from_dict(d) for d in data["sandboxes"]]

    @staticmethod
    def backends(
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[BackendInfo]:
        """The server's isolation backends: whether each works on its host (and why not), which is
        the default, which ``isolation="auto"`` may pick."""
        config = ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)
        with ApiClient(config) as api:
            data = api.request("GET", "/v1/backends")
        return [BackendInfo.from_dict(d) for d in data["backends"]]

    @staticmethod
    def kill_by_id(
        sandbox_id: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> bool:
        """Kill a sandbox by id; False when it was already gone."""
        config = ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)
        with ApiClient(config) as api:
            return _kill(api, sandbox_id)

    def kill(self) -> bool:
        """Kill this sandbox and free everything it holds; False when it was already gone."""
        return _kill(self._api, self.sandbox_id)

    def set_timeout(self, timeout: int) -> None:
        """Make the sandbox expire ``timeout`` seconds from now (shorter or longer than before)."""
        data = self._api.request("POST", f"{self._path}/timeout", json={"timeout": timeout})
        self._info = SandboxInfo.from_dict(data)

    def get_info(self) -> SandboxInfo:
        data = self._api.request("GET", self._path)
        self._info = SandboxInfo.from_dict(data)
        return self._info

    def is_running(self) -> bool:
        try:
            info = self.get_info()
        except SandboxNotFoundError:
            return False
        return info.state == "running"

    # ------------------------------------------------------------------ network
    def get_network(self) -> NetworkInfo:
        """The egress policy in force, the attempts it refused, and the bytes in and out."""
        return NetworkInfo.from_dict(self._api.request("GET", f"{self._path}/network"))

    def update_network(
        self,
        internet: bool | None = None,
        allow_out: builtins.list[str] | None = None,
        deny_out: builtins.list[str] | None = None,
    ) -> NetworkInfo:
        """Change internet access and the allow/deny lists (IPv4 addresses or CIDRs; allow wins)
        at once; what is left out stays as it is."""
        body: dict[str, Any] = {"internet": internet, "allow_out": allow_out, "deny_out": deny_out}
        data = self._api.request(
            "PATCH", f"{self._path}/network", json={k: v for k, v in body.items() if v is not None}
        )
        return NetworkInfo.from_dict(data)

    # ------------------------------------------------------------------ ports
    def get_host(self, port: int) -> str:
        """``<port>-<id>.<domain>[:<api port>]``: where a server listening on ``port`` inside is
        reached (HTTP and WebSocket). With the default domain ``localhost`` browsers resolve it
        to this machine; other clients send it as the Host header."""
        api = urlsplit(self._api.config.api_url)
        return f"{port}-{self.sandbox_id}.{self._info.domain}" + (f":{api.port}" if api.port else "")

    def get_url(self, port: int, path: str = "/", path_based: bool = False) -> str:
        """A URL of ``path`` on ``port`` inside: host-based (``get_host``), or under the API's own
        address (``/v1/sandboxes/<id>/ports/<port>/``) for clients that cannot resolve the host
        name. Carries the traffic token when the sandbox's ports are private."""
        api = urlsplit(self._api.config.api_url)
        if path_based:
            url = f"{self._api.config.api_url.rstrip('/')}/v1/sandboxes/{self.sandbox_id}/ports/{port}/{path.lstrip('/')}"
        else:
            url = f"{api.scheme}://{self.get_host(port)}/{path.lstrip('/')}"
        if self._info.traffic_token:
            url += ("&" if "?" in url else "?") + urlencode({"traffic_token": self._info.traffic_token})
        return url

    def list_ports(self) -> builtins.list[PortInfo]:
        """The TCP ports something listens on inside the sandbox, with their URLs."""
        data = self._api.request("GET", f"{self._path}/ports")
        return [PortInfo.from_dict(p) for p in data["ports"]]

    # ------------------------------------------------------------------ code interpreter
    def run_code(
        self,
        code: str,
        language: str | None = None,
        context: CodeContext | str | None = None,
        envs: dict[str, str] | None = None,
        timeout: float | None = None,
        on_stdout: Handler | None = None,
        on_stderr: Handler | None = None,
        on_result: Handler | None = None,
        on_error: Handler | None = None,
    ) -> Execution:
        """Run a cell in a Jupyter kernel (template ``code-interpreter``); state persists per context.

        Languages: python (default), javascript, typescript, bash, r. Outputs stream to the
        callbacks; the Execution holds ``results`` (rich outputs; the cell's value is the main
        result), ``logs``, ``error`` and ``execution_count``.
        """
        return self._code.run_code(
            code, language=language, context=context, envs=envs, timeout=timeout,
            on_stdout=on_stdout, on_stderr=on_stderr, on_result=on_result, on_error=on_error,
        )  # fmt: skip

    def create_code_context(self, language: str | None = None, cwd: str | None = None) -> CodeContext:
        return self._code.create_context(language=language, cwd=cwd)

    def list_code_contexts(self) -> builtins.list[CodeContext]:
        return self._code.list_contexts()

    def restart_code_context(self, context: CodeContext | str) -> None:
        self._code.restart_context(context)

    def remove_code_context(self, context: CodeContext | str) -> None:
        self._code.remove_context(context)

    def close(self) -> None:
        """Close the HTTP connections (the sandbox keeps running)."""
        self._api.close()

    def __enter__(self) -> Sandbox:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.kill()
        finally:
            self.close()


def _kill(api: ApiClient, sandbox_id: str) -> bool:
    try:
        api.request("DELETE", f"/v1/sandboxes/{sandbox_id}")
    except (SandboxNotFoundError, SandboxNotRunningError):
        return False
    return True
