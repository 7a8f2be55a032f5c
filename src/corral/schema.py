"""Request and response models of corral's REST API (pydantic), shared by the server and manager."""

from __future__ import annotations

import ipaddress
import re
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

ENV_NAME_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_")


def _check_envs(envs: dict[str, str]) -> dict[str, str]:
    if len(envs) > 256:
        raise ValueError("at most 256 environment variables")
    for name, value in envs.items():
        if not name or name[0].isdigit() or not set(name) <= ENV_NAME_CHARS or len(name) > 256:
            raise ValueError(f"invalid environment variable name {name[:64]!r}")
        if "\0" in value or len(value) > 32768:
            raise ValueError(f"invalid value for environment variable {name!r} (NUL byte or over 32 KiB)")
    return envs


DOMAIN_PATTERN = re.compile(r"(\*\.)?([a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?\.)+[a-z][a-z0-9-]{0,62}")


def _check_destinations(entries: list[str] | None) -> list[str] | None:
    """Egress entries: IPv4 addresses or CIDRs, normalized (``10.1.2.3/8`` -> ``10.0.0.0/8``), or
    domain names (``example.com``; ``*.example.com`` for any name under it), lowercased."""
    if entries is None:
        return None
    if len(entries) > 256:
        raise ValueError("at most 256 entries")
    out = []
    for entry in entries:
        try:
            net = ipaddress.ip_network(entry.strip(), strict=False)
        except ValueError:
            name = entry.strip().lower().rstrip(".")
            if not DOMAIN_PATTERN.fullmatch(name):
                raise ValueError(
                    f"{entry[:80]!r} is neither an IPv4 address or CIDR nor a domain name (example.com, *.example.com)"
                ) from None
            out.append(name)
            continue
        if net.version != 4:
            raise ValueError(f"{entry!r}: sandboxes have no IPv6 egress to allow or deny")
        out.append(str(net))
    return out


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CreateSandbox(Strict):
    template: str = Field("base", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$")
    timeout: int | None = Field(None, ge=1, description="Lifetime in seconds (default 300).")
    metadata: dict[str, str] = Field(default_factory=dict)
    envs: dict[str, str] = Field(default_factory=dict)
    cpu_count: float | None = Field(None, gt=0)
    memory_mb: int | None = Field(None, ge=32)
    disk_mb: int | None = Field(None, ge=16)
    internet: bool = True
    isolation: Literal["namespace", "gvisor", "microvm", "auto"] | None = Field(
        None,
        description="The backend: namespace (shared kernel), gvisor (a user-space kernel), microvm (a VM), or auto"
        " (the strongest that works here); default: the template's (LABEL corral.isolation), else the server's.",
    )
    public_ports: bool = Field(
        True,
        description="Servers inside are reachable through the port URLs without a token; false asks for its traffic_token.",
    )
    allow_out: list[str] = Field(
        default_factory=list,
        description="IPv4 addresses or CIDRs, or domain names (example.com, *.example.com), always reachable, internet on or off.",
    )
    deny_out: list[str] = Field(
        default_factory=list,
        description="IPv4 addresses or CIDRs, or domain names, refused (allow_out wins).",
    )
    secrets: list[str] = Field(
        default_factory=list,
        max_length=64,
        description="Names of registered secrets: each is an env var holding a placeholder inside.",
    )

    _destinations = field_validator("allow_out", "deny_out")(
        classmethod(lambda cls, v: _check_destinations(v))
    )

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str]) -> dict[str, str]:
        if len(value) > 64:
            raise ValueError("at most 64 metadata entries")
        for k, v in value.items():
            if not k or len(k) > 128 or len(v) > 2048:
                raise ValueError("metadata keys are 1-128 characters, values at most 2048")
        return value

    _envs = field_validator("envs")(classmethod(lambda cls, v: _check_envs(v)))


class SetTimeout(Strict):
    timeout: int = Field(..., ge=1, description="Seconds from now until the sandbox expires.")


class SandboxInfo(BaseModel):
    sandbox_id: str
    template: str
    state: Literal["starting", "running", "killed", "expired", "failed"]
    started_at: datetime
    end_at: datetime
    ended_at: datetime | None = None
    metadata: dict[str, str]
    cpu_count: float
    memory_mb: int
    disk_mb: int
    internet: bool
    isolation: str = Field("namespace", description="The backend the sandbox runs on.")
    reason: str | None = None
    public_ports: bool = True
    domain: str = Field(
        "localhost", description="Port URLs are <port>-<sandbox id>.<domain> on the API's port."
    )
    traffic_token: str | None = Field(
        None, description="What the port URLs of a sandbox with public_ports=false ask for (header or query)."
    )


class BackendInfo(BaseModel):
    name: str
    works: bool = Field(..., description="Whether sandboxes can run on it on this host.")
    reason: str = Field("", description="Why it does not work here, or how it works (e.g. TCG: slow).")
    auto: bool = Field(..., description="Whether isolation=auto may pick it (works and fit for production).")
    default: bool = Field(..., description="The server's default backend.")


class BackendList(BaseModel):
    backends: list[BackendInfo]


class SandboxList(BaseModel):
    sandboxes: list[SandboxInfo]


class RunCommand(Strict):
    cmd: str = Field(..., min_length=1, max_length=256 * 1024)
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = Field(None, max_length=4096)
    user: str = Field("user", min_length=1, max_length=32, pattern=r"^[a-z_][a-z0-9_-]*$")
    timeout: float | None = Field(60, ge=0, description="Seconds; 0 or null means no limit.")
    stdin: bool = False
    tag: str | None = Field(None, max_length=256)

    _envs = field_validator("envs")(classmethod(lambda cls, v: _check_envs(v)))


class RunCode(Strict):
    code: str = Field(..., max_length=512 * 1024)
    language: str | None = Field(
        None,
        max_length=32,
        description="python (default), javascript, typescript, bash or r; not with context_id.",
    )
    context_id: str | None = Field(None, max_length=64, description="A context from POST .../code/contexts.")
    envs: dict[str, str] = Field(default_factory=dict, description="Environment variables for this run only.")
    timeout: float | None = Field(
        None,
        gt=0,
        le=86400,
        description="Seconds; the kernel is interrupted and the context keeps its state.",
    )

    _envs = field_validator("envs")(classmethod(lambda cls, v: _check_envs(v)))


class CreateCodeContext(Strict):
    language: str | None = Field(
        None, max_length=32, description="python (default), javascript, typescript, bash or r."
    )
    cwd: str | None = Field(None, max_length=4096, description="Absolute path; /home/user by default.")


class CodeContext(BaseModel):
    id: str
    language: str
    cwd: str


class CodeContextList(BaseModel):
    contexts: list[CodeContext]
    languages: list[str] = Field(
        default_factory=list, description="The languages this sandbox's template has."
    )


class CreateSecret(Strict):
    name: str = Field(
        ..., min_length=1, max_length=128, description="Also the env var name inside sandboxes."
    )
    value: str = Field(..., min_length=1, max_length=8192)
    allowed_hosts: list[str] = Field(
        ..., min_length=1, max_length=64, description="example.com or *.example.com"
    )


class SecretInfo(BaseModel):
    name: str
    hosts: list[str]
    placeholder: str = Field(..., description="What sandboxes see instead of the value.")


class SecretList(BaseModel):
    secrets: list[SecretInfo]


class UpdateNetwork(Strict):
    internet: bool | None = Field(None, description="Unchanged when left out.")
    allow_out: list[str] | None = Field(None, description="Replaces the list; unchanged when left out.")
    deny_out: list[str] | None = Field(None, description="Replaces the list; unchanged when left out.")

    _destinations = field_validator("allow_out", "deny_out")(
        classmethod(lambda cls, v: _check_destinations(v))
    )


class BlockedDestination(BaseModel):
    address: str
    port: int
    packets: int


class NetworkInfo(BaseModel):
    internet: bool
    allow_out: list[str]
    deny_out: list[str]
    blocked: int = Field(..., description="Packets refused by the egress rules.")
    blocked_destinations: list[BlockedDestination] = Field(
        ..., description="Where they were going (last 1024)."
    )
    bytes_out: int
    bytes_in: int


class PortInfo(BaseModel):
    port: int
    url: str = Field(..., description="Host-based: <port>-<sandbox id>.<domain>.")
    path_url: str = Field(
        ..., description="Path-based: /v1/sandboxes/{id}/ports/{port}/ on the API's own address."
    )


class PortList(BaseModel):
    ports: list[PortInfo] = Field(..., description="TCP ports something listens on inside the sandbox.")


class ProcessInfo(BaseModel):
    pid: int
    cmd: str
    args: list[str] = Field(default_factory=list)
    cwd: str | None = None
    tag: str | None = None
    user: str | None = None


class ProcessList(BaseModel):
    processes: list[ProcessInfo]


class SendStdin(Strict):
    data: str = Field(..., max_length=16 * 1024 * 1024)


class CreatePty(Strict):
    cols: int = Field(..., ge=1, le=1000, description="Terminal width in columns.")
    rows: int = Field(..., ge=1, le=1000, description="Terminal height in rows.")
    cmd: str | None = Field(
        None,
        min_length=1,
        max_length=256 * 1024,
        description="A command line run with `bash -l -c`; null runs an interactive login bash.",
    )
    envs: dict[str, str] = Field(default_factory=dict)
    cwd: str | None = Field(None, max_length=4096)
    user: str = Field("user", min_length=1, max_length=32, pattern=r"^[a-z_][a-z0-9_-]*$")
    timeout: float | None = Field(None, ge=0, description="Seconds; 0 or null means no limit.")

    _envs = field_validator("envs")(classmethod(lambda cls, v: _check_envs(v)))


class PtyInput(Strict):
    data: str = Field(..., max_length=16 * 1024 * 1024)


class ResizePty(Strict):
    cols: int = Field(..., ge=1, le=1000)
    rows: int = Field(..., ge=1, le=1000)


class SendSignal(Strict):
    signal: str | int = "SIGTERM"


class EntryInfo(BaseModel):
    name: str
    path: str
    type: Literal["file", "dir", "symlink"] | str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: datetime
    symlink_target: str | None = None


class EntryList(BaseModel):
    entries: list[EntryInfo]


class MakeDir(Strict):
    path: str = Field(..., min_length=1, max_length=4096)
    user: str = Field("user", pattern=r"^[a-z_][a-z0-9_-]*$", max_length=32)


class MakeDirResult(BaseModel):
    created: bool


class Rename(Strict):
    src: str = Field(..., min_length=1, max_length=4096)
    dst: str = Field(..., min_length=1, max_length=4096)
    user: str = Field("user", pattern=r"^[a-z_][a-z0-9_-]*$", max_length=32)


class ErrorBody(BaseModel):
    code: str
    message: str


class FileUrlRequest(Strict):
    path: str = Field(..., min_length=1, max_length=4096)
    user: str = Field("user", pattern=r"^[a-z_][a-z0-9_-]*$", max_length=32)
    operation: Literal["download", "upload"]
    expires_in: int = Field(
        3600, ge=1, le=7 * 24 * 3600, description="Seconds the URL stays valid (at most 7 days)."
    )


class FileUrl(BaseModel):
    url: str = Field(..., description="Usable without an API key until expires_at.")
    expires_at: datetime


class TemplateConfigInfo(BaseModel):
    env: dict[str, str] = Field(default_factory=dict)
    workdir: str | None = None
    user: str = "root"
    start_cmd: str | None = None
    ready_cmd: str | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    expose: list[str] = Field(default_factory=list)


class TemplateInfo(BaseModel):
    name: str
    tag: str
    kind: Literal["recipe", "dockerfile"]
    build_id: str | None = None
    created_at: datetime | None = None
    layers: int = Field(0, description="Lower dirs stacked on the template's root filesystem.")
    config: TemplateConfigInfo = Field(default_factory=TemplateConfigInfo)


class TemplateList(BaseModel):
    templates: list[TemplateInfo]


class BuildInfo(BaseModel):
    build_id: str
    name: str
    tag: str
    status: Literal["building", "succeeded", "failed"]
    started_at: datetime
    finished_at: datetime | None = None
    steps: int
    error: dict[str, Any] | None = Field(None, description="{code, message, details?} of a failed build")
