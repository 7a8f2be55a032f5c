# generated from _async by scripts/gen_sync.py, do not edit
"""``Template``: build templates from Dockerfiles or a Python builder, list, get, delete.

tpl = (Template().from_template("base").apt_install(["cowsay"]).pip_install(["requests"])
       .copy("src", "/app").set_workdir("/app").set_start_cmd("python3 -m http.server", ready_cmd="curl -sf localhost:8000"))
result = Template.build(tpl, name="web", on_event=print)
sbx = Sandbox.create(template="web")
"""

from __future__ import annotations

import builtins
import json
import os
import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from corral.errors import BuildFailedError, error_from_body
from corral.sdk._context import GENERATED_DOCKERFILE, context_tar
from corral.sdk._sync.client import ApiClient
from corral.sdk.config import ConnectionConfig
from corral.sdk.models import BuildInfo, BuildResult, TemplateInfo

OnEvent = Callable[[dict[str, Any]], object]


class Template:
    """A Dockerfile written through Python calls; each call adds one instruction and returns self."""

    def __init__(self) -> None:
        self._lines: builtins.list[str] = []
        self._files: dict[str, str] = {}  # name in the context -> local path
        self.start_cmd: str | None = None
        self.ready_cmd: str | None = None

    def _add(self, line: str) -> Template:
        self._lines.append(line)
        return self

    def from_template(self, name: str) -> Template:
        """Start from a corral template (``base``, ``code-interpreter``, one you built)."""
        return self._add(f"FROM {name}")

    def from_image(self, image: str) -> Template:
        """Start from an OCI image in a registry (it needs bash and python3)."""
        return self._add(f"FROM {image}")

    def run(self, cmd: str) -> Template:
        return self._add("RUN " + " \\\n    ".join(cmd.splitlines()))

    def apt_install(self, packages: builtins.list[str]) -> Template:
        pkgs = " ".join(shlex.quote(p) for p in packages)
        return self._add(
            "RUN apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "
            f"{pkgs} && rm -rf /var/lib/apt/lists/*"
        )

    def pip_install(self, packages: builtins.list[str]) -> Template:
        return self._add("RUN pip install --no-cache-dir " + " ".join(shlex.quote(p) for p in packages))

    def npm_install(self, packages: builtins.list[str], global_: bool = True) -> Template:
        return self._add(
            "RUN npm install " + ("-g " if global_ else "") + " ".join(shlex.quote(p) for p in packages)
        )

    def copy(self, src: str | os.PathLike[str], dest: str, user: str | None = None) -> Template:
        """Copy a local file or directory into the template (a directory's contents go into ``dest``)."""
        local = Path(src)
        if not os.path.lexists(local):
            raise FileNotFoundError(f"{local} does not exist")
        name = f".corral/files/{len(self._files)}/{local.name or 'root'}"
        self._files[name] = str(local)
        chown = f"--chown={user} " if user else ""
        return self._add(f"COPY {chown}{json.dumps([name, dest])}")

    def set_envs(self, envs: dict[str, str]) -> Template:
        return self._add("ENV " + " ".join(f"{k}={json.dumps(v)}" for k, v in envs.items()))

    def set_workdir(self, path: str) -> Template:
        return self._add(f"WORKDIR {path}")

    def set_user(self, user: str) -> Template:
        return self._add(f"USER {user}")

    def set_start_cmd(self, cmd: str, ready_cmd: str | None = None) -> Template:
        """Run ``cmd`` in the background when a sandbox starts; create returns once ``ready_cmd`` exits 0."""
        self.start_cmd, self.ready_cmd = cmd, ready_cmd
        return self

    def to_dockerfile(self) -> str:
        return "\n".join(self._lines) + "\n"

    @staticmethod
    def build(
        template: Template | None = None,
        *,
        name: str,
        tag: str = "latest",
        context_dir: str | os.PathLike[str] | None = None,
        dockerfile: str = "Dockerfile",
        build_args: dict[str, str] | None = None,
        start_cmd: str | None = None,
        ready_cmd: str | None = None,
        no_cache: bool = False,
        on_event: OnEvent | None = None,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> BuildResult:
        """Build ``template`` (a builder), or the Dockerfile in ``context_dir``, as ``name:tag``.

        ``on_event`` sees every build event as it streams (start, step, log, step_end, end). A
        failed build raises its error (``BuildFailedError`` for a failing RUN, ``ImageNotFoundError``,
        ``DockerfileError``, ...); nothing is registered then.
        """
        text: str | None = None
        extra: dict[str, str] = {}
        if template is not None:
            text, extra = template.to_dockerfile(), template._files
            dockerfile = GENERATED_DOCKERFILE
            start_cmd = template.start_cmd if start_cmd is None else start_cmd
            ready_cmd = template.ready_cmd if ready_cmd is None else ready_cmd
        elif context_dir is None:
            context_dir = "."
        if context_dir is not None and text is None:
            path = Path(dockerfile) if os.path.isabs(dockerfile) else Path(context_dir) / dockerfile
            inside = os.path.abspath(path).startswith(os.path.abspath(context_dir) + os.sep)
            if not inside:  # a Dockerfile outside the context travels as the generated one
                text, dockerfile = path.read_text(), GENERATED_DOCKERFILE
            else:
                dockerfile = os.path.relpath(path, context_dir)
        params: builtins.list[tuple[str, str]] = [("name", name), ("tag", tag), ("dockerfile", dockerfile)]
        params += [("build_arg", f"{k}={v}") for k, v in (build_args or {}).items()]
        for key, value in (("start_cmd", start_cmd), ("ready_cmd", ready_cmd)):
            if value is not None:
                params.append((key, value))
        if no_cache:
            params.append(("no_cache", "true"))
        spool = context_tar(context_dir, dockerfile, extra, text)
        config = ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)
        events: builtins.list[dict[str, Any]] = []
        try:
            with ApiClient(config) as api:
                resp = api.open_stream(
                    "POST", "/v1/templates", params=params, content=_chunks(spool), read_timeout=3600,
                    headers={"content-type": "application/x-tar"},
                )  # fmt: skip
                for line in api.iter_lines(resp):
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    if event.get("type") == "keepalive":
                        continue
                    events.append(event)
                    if on_event is not None:
                        on_event(event)
        finally:
            spool.close()
        end = events[-1] if events and events[-1].get("type") == "end" else None
        if end is None:
            raise BuildFailedError("the build's event stream ended before the build did")
        if end.get("error"):
            raise error_from_body(400, end["error"])
        return BuildResult(
            build_id=end["build_id"], template=TemplateInfo.from_dict(end["template"]), events=events
        )

    @staticmethod
    def list(
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[TemplateInfo]:
        with ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            data = api.request("GET", "/v1/templates")
        return [TemplateInfo.from_dict(d) for d in data["templates"]]

    @staticmethod
    def get(
        ref: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> TemplateInfo:
        """A template by ``name`` or ``name:tag``."""
        with ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            return TemplateInfo.from_dict(api.request("GET", f"/v1/templates/{ref}"))

    @staticmethod
    def delete(
        ref: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> None:
        """Delete a template (``TemplateInUseError`` while a sandbox runs from it)."""
        with ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            api.request("DELETE", f"/v1/templates/{ref}")

    @staticmethod
    def get_build(
        build_id: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> BuildInfo:
        with ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            return BuildInfo.from_dict(api.request("GET", f"/v1/builds/{build_id}"))

    @staticmethod
    def build_logs(
        build_id: str,
        *,
        api_key: str | None = None,
        api_url: str | None = None,
        base_url: str | None = None,
        request_timeout: float | None = None,
    ) -> builtins.list[dict[str, Any]]:
        """A build's events (the whole log of a finished build; up to now and then live for a running one)."""
        events = []
        with ApiClient(ConnectionConfig.resolve(api_key, api_url, base_url, request_timeout)) as api:
            resp = api.open_stream("GET", f"/v1/builds/{build_id}/logs", read_timeout=3600)
            for line in api.iter_lines(resp):
                if line.strip():
                    event = json.loads(line)
                    if event.get("type") != "keepalive":
                        events.append(event)
        return events


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk
