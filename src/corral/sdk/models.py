"""The SDK's view of API objects: plain dataclasses parsed from the JSON the server sends."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from corral.errors import TimeoutError_

SandboxState = Literal["starting", "running", "killed", "expired", "failed"]
FileType = Literal["file", "dir", "symlink"]


def _parse_time(value: Any) -> datetime | None:
    if value is None or value == "":
        return None
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value).replace("Z", "+00:00"))


def to_jsonable(obj: Any) -> Any:
    """A dataclass (or list of them) as JSON-ready data: datetimes become ISO 8601 strings."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list):
        return [to_jsonable(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, datetime):
        return obj.isoformat()
    return obj


@dataclass
class BackendInfo:
    """An isolation backend of the server: whether it works on its host, and why not."""

    name: str
    works: bool
    reason: str = ""
    auto: bool = False  # isolation="auto" may pick it
    default: bool = False  # the server's default

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BackendInfo:
        return cls(
            name=d["name"],
            works=bool(d["works"]),
            reason=d.get("reason") or "",
            auto=bool(d.get("auto")),
            default=bool(d.get("default")),
        )


@dataclass
class SandboxInfo:
    sandbox_id: str
    template: str
    state: str
    started_at: datetime | None
    end_at: datetime | None
    metadata: dict[str, str] = field(default_factory=dict)
    cpu_count: float | None = None
    memory_mb: int | None = None
    disk_mb: int | None = None
    internet: bool = True
    isolation: str = "namespace"  # the backend it runs on
    reason: str | None = None
    ended_at: datetime | None = None
    envd_url: str | None = None
    public_ports: bool = True
    traffic_token: str | None = None  # what the port URLs of a sandbox with private ports ask for
    domain: str = "localhost"  # port URLs are <port>-<sandbox id>.<domain>

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SandboxInfo:
        return cls(
            sandbox_id=d["sandbox_id"],
            template=d.get("template", ""),
            state=d.get("state", ""),
            started_at=_parse_time(d.get("started_at")),
            end_at=_parse_time(d.get("end_at")),
            metadata=dict(d.get("metadata") or {}),
            cpu_count=d.get("cpu_count"),
            memory_mb=d.get("memory_mb"),
            disk_mb=d.get("disk_mb"),
            internet=bool(d.get("internet", True)),
            isolation=d.get("isolation") or "namespace",
            reason=d.get("reason"),
            ended_at=_parse_time(d.get("ended_at")),
            envd_url=d.get("envd_url"),
            public_ports=bool(d.get("public_ports", True)),
            traffic_token=d.get("traffic_token"),
            domain=d.get("domain") or "localhost",
        )


@dataclass
class EntryInfo:
    name: str
    path: str
    type: str
    size: int
    mode: int
    permissions: str
    owner: str
    group: str
    modified_time: datetime | None
    symlink_target: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EntryInfo:
        return cls(
            name=d.get("name", ""),
            path=d.get("path", ""),
            type=d.get("type", "file"),
            size=int(d.get("size") or 0),
            mode=int(d.get("mode") or 0),
            permissions=d.get("permissions", ""),
            owner=str(d.get("owner", "")),
            group=str(d.get("group", "")),
            modified_time=_parse_time(d.get("modified_time")),
            symlink_target=d.get("symlink_target"),
        )


FilesystemEventType = Literal["create", "write", "remove", "rename", "chmod"]


@dataclass
class FilesystemEvent:
    """A change under a watched directory. ``rename`` is reported for the old path of a move
    (the new path gets a ``create``)."""

    type: str
    path: str
    time: datetime | None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FilesystemEvent:
        return cls(type=str(d.get("type", "")), path=str(d.get("path", "")), time=_parse_time(d.get("time")))


@dataclass
class ProcessInfo:
    pid: int
    cmd: str
    args: list[str] = field(default_factory=list)
    cwd: str | None = None
    tag: str | None = None
    user: str | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProcessInfo:
        return cls(
            pid=int(d["pid"]),
            cmd=d.get("cmd", ""),
            args=list(d.get("args") or []),
            cwd=d.get("cwd"),
            tag=d.get("tag"),
            user=d.get("user"),
        )


@dataclass
class CommandResult:
    """What a finished command left: its whole output, exit code and error (``timeout``/``killed``)."""

    stdout: str
    stderr: str
    exit_code: int
    error: str | None = None


class CommandTimeoutError(TimeoutError_):
    """A command ran past its timeout and was killed; carries the output streamed before that.

    A subclass of ``corral.TimeoutError``: catch that.
    """

    def __init__(
        self, message: str, stdout: str = "", stderr: str = "", exit_code: int | None = None
    ) -> None:
        super().__init__(message)
        self.stdout, self.stderr, self.exit_code = stdout, stderr, exit_code


@dataclass(frozen=True)
class PtySize:
    """A terminal's size, in character cells."""

    rows: int = 24
    cols: int = 80


@dataclass
class PortInfo:
    """A TCP port something listens on inside the sandbox, and the URLs that reach it."""

    port: int
    url: str  # host-based: http://<port>-<id>.<domain>:<api port>/
    path_url: str  # path-based: <api url>/v1/sandboxes/<id>/ports/<port>/

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PortInfo:
        return cls(port=int(d["port"]), url=d["url"], path_url=d["path_url"])


@dataclass
class NetworkInfo:
    """A sandbox's egress policy, what it refused (packets, and where they were going), and its traffic."""

    internet: bool
    allow_out: list[str]
    deny_out: list[str]
    blocked: int
    blocked_destinations: list[dict[str, Any]]
    bytes_out: int
    bytes_in: int

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> NetworkInfo:
        return cls(
            internet=bool(d["internet"]), allow_out=list(d["allow_out"]), deny_out=list(d["deny_out"]),
            blocked=int(d["blocked"]), blocked_destinations=list(d["blocked_destinations"]),
            bytes_out=int(d["bytes_out"]), bytes_in=int(d["bytes_in"]),
        )  # fmt: skip


@dataclass
class SecretInfo:
    """A registered secret as the API shows it: never its value."""

    name: str
    hosts: list[str]
    placeholder: str

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SecretInfo:
        return cls(name=d["name"], hosts=list(d["hosts"]), placeholder=d["placeholder"])


@dataclass
class TemplateInfo:
    name: str
    tag: str
    kind: str  # "recipe" (built-in, e.g. base) or "dockerfile"
    build_id: str | None = None
    created_at: datetime | None = None
    layers: int = 0
    config: dict[str, Any] = field(default_factory=dict)  # env, workdir, user, start_cmd, ready_cmd, labels

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TemplateInfo:
        return cls(
            name=d["name"], tag=d.get("tag", "latest"), kind=d.get("kind", "dockerfile"), build_id=d.get("build_id"),
            created_at=_parse_time(d.get("created_at")) if not isinstance(d.get("created_at"), float)
            else datetime.fromtimestamp(d["created_at"]).astimezone(),
            layers=d["layers"] if isinstance(d.get("layers"), int) else len(d.get("layers") or []),
            config=dict(d.get("config") or {}),
        )  # fmt: skip


@dataclass
class BuildInfo:
    build_id: str
    name: str
    tag: str
    status: str  # building, succeeded, failed
    started_at: datetime | None
    finished_at: datetime | None = None
    steps: int = 0
    error: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BuildInfo:
        return cls(
            build_id=d["build_id"], name=d["name"], tag=d["tag"], status=d["status"],
            started_at=_parse_time(d.get("started_at")), finished_at=_parse_time(d.get("finished_at")),
            steps=d.get("steps", 0), error=d.get("error"),
        )  # fmt: skip


@dataclass
class BuildResult:
    """A finished build: its id, the template it registered, and every event it streamed."""

    build_id: str
    template: TemplateInfo
    events: list[dict[str, Any]] = field(default_factory=list)

    @property
    def cached_steps(self) -> list[int]:
        return [e["step"] for e in self.events if e.get("type") == "step_end" and e.get("cached")]

    @property
    def logs(self) -> list[str]:
        return [e["data"] for e in self.events if e.get("type") == "log"]
