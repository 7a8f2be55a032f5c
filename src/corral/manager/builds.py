"""Template builds: a planned Dockerfile run step by step into cached layers.

FROM resolves a corral template or pulls an OCI image (templates/oci.py) into a bottom layer.
RUN starts a sandbox of the layers so far (internet on) whose upper dir is the new layer, runs the
command through the agent and keeps what it wrote. COPY, ADD and WORKDIR write into a new layer
on the host (templates/fsops.py). A step whose cache key has a layer already is CACHED. Only a
build that succeeded registers its template; a failed one leaves only finished layers (cache).

Each build streams events (``start``, ``step``, ``log``, ``step_end``, ``end``) to whoever
follows it, and appends them to its log file, which can be read later.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import posixpath
import secrets
import shutil
import tempfile
import time
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import errors
from ..agent.client import AgentClient
from ..backends import Limits, SandboxSpec
from ..backends.namespace.overlay import MAX_LOWER_DIRS
from ..templates import context as ctx
from ..templates import fsops, oci
from ..templates.recipes import RECIPES
from ..templates.store import Resolved, TemplateConfig, TemplateStore, digest, split_ref
from .plan import Step, plan

if TYPE_CHECKING:
    from .service import Manager

log = logging.getLogger("corral.builds")

BUILD_LIMITS = Limits(cpu_count=2.0, memory_mb=4096, disk_mb=64)  # disk: only the agent's run dir
STEP_TIMEOUT = 3600.0


@dataclass
class BuildRequest:
    name: str
    tag: str
    dockerfile: str
    context: Path  # the unpacked context dir (owned by the build: removed when it ends)
    build_args: dict[str, str] = field(default_factory=dict)
    start_cmd: str | None = None
    ready_cmd: str | None = None
    no_cache: bool = False
    scratch: Path | None = None  # removed with the context when the build ends (default: context)


@dataclass
class Build:
    build_id: str
    request: BuildRequest
    steps: list[Step]
    config: TemplateConfig
    record: dict[str, Any]
    events: list[dict[str, Any]] = field(default_factory=list)
    lowers: list[Path] = field(default_factory=list)  # the layers so far (kept from garbage collection)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    done: bool = False
    task: asyncio.Task[None] | None = None


class Builds:
    def __init__(self, manager: Manager) -> None:
        self.manager = manager
        self.store = TemplateStore(manager.settings.templates_dir)
        self.active: dict[str, Build] = {}

    async def submit(
        self, chunks: AsyncIterable[bytes], name: str, tag: str, dockerfile: str = "Dockerfile",
        build_args: dict[str, str] | None = None, start_cmd: str | None = None, ready_cmd: str | None = None,
        no_cache: bool = False,
    ) -> Build:  # fmt: skip
        """Receive a build context (a tar stream that holds the Dockerfile) and start its build."""
        split_ref(f"{name}:{tag}")
        contexts = self.store.root / "contexts"
        contexts.mkdir(mode=0o700, parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=f"ctx-{os.getpid()}-", dir=contexts))
        try:
            spool = work / "context.tar"
            received = 0
            with open(spool, "wb") as f:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > ctx.MAX_CONTEXT_BYTES:
                        raise errors.PayloadTooLargeError(
                            f"a build context is at most {ctx.MAX_CONTEXT_BYTES} bytes"
                        )
                    f.write(chunk)
            tree = work / "tree"
            tree.mkdir()

            def unpack() -> None:
                with open(spool, "rb") as f:
                    ctx.unpack(f, tree)
                spool.unlink()

            await asyncio.to_thread(unpack)
            rel = posixpath.normpath(dockerfile.lstrip("/"))
            path = tree / rel
            if rel.startswith("..") or path.is_symlink() or not path.is_file():
                raise errors.BuildContextError(f"the build context has no Dockerfile at {dockerfile!r}")
            text = path.read_text(errors="replace")
        except BaseException:
            shutil.rmtree(work, ignore_errors=True)
            raise
        request = BuildRequest(name, tag, text, tree, dict(build_args or {}), start_cmd, ready_cmd, no_cache)
        request.scratch = work
        return await self.start(request)

    async def start(self, req: BuildRequest) -> Build:
        """Plan (4xx on bad input, nothing started), then run the build in the background."""
        try:
            name, tag = split_ref(f"{req.name}:{req.tag}")
            if name in RECIPES or (self.store.root / name / "current.json").exists():
                raise errors.InvalidRequestError(
                    f"template name {name!r} is taken by a built-in (recipe) template"
                )
            steps, config = await asyncio.to_thread(self._plan, req, None)
            image = next((st.image for st in steps if st.inst.keyword == "FROM"), None)
            if image is not None and not req.no_cache and (pulled := self._pulled(image)) is not None:
                steps, config = await asyncio.to_thread(self._plan, req, {image: pulled})
            elif image is not None:  # a missing image or an unreachable registry: a 4xx/502 now
                await asyncio.to_thread(oci.check_exists, image)
        except BaseException:
            shutil.rmtree(req.scratch or req.context, ignore_errors=True)
            raise
        build_id = secrets.token_hex(10)
        record = {
            "build_id": build_id, "name": name, "tag": tag, "status": "building", "started_at": time.time(),
            "finished_at": None, "steps": len(steps), "error": None, "template": None, "pid": os.getpid(),
        }  # fmt: skip
        build = Build(build_id, req, steps, config, record)
        self.store.save_build(record)
        self.active[build_id] = build
        build.task = asyncio.get_running_loop().create_task(self._run(build))
        return build

    def _plan(
        self, req: BuildRequest, images: dict[str, tuple[str, TemplateConfig]] | None
    ) -> tuple[list[Step], TemplateConfig]:
        return plan(
            self.store, req.dockerfile, req.context, req.build_args, req.start_cmd, req.ready_cmd, images
        )

    def _pulled(self, image: str, key: str | None = None) -> tuple[str, TemplateConfig] | None:
        """(layer key, inherited config) of an image pulled before (the one pinned to ``image``)."""
        key = key or self.store.image_layer(image)
        layer = self.store.cached_layer(key) if key else None
        if key is None or layer is None:
            return None
        inherited = layer.get("config") or {}
        return key, TemplateConfig(env=dict(inherited.get("env") or {}), workdir=inherited.get("workdir"))

    async def follow(self, build_id: str) -> AsyncIterator[dict[str, Any]]:
        """A build's events from the first: live while it runs, then from its log."""
        build = self.active.get(build_id)
        if build is None:
            self.store.build(build_id)  # 404 for an unknown build
            path = self.store.log_path(build_id)
            lines = await asyncio.to_thread(lambda: path.read_text().splitlines() if path.exists() else [])
            for line in lines:
                with contextlib.suppress(ValueError):
                    yield json.loads(line)
            return
        seen = 0
        while True:
            async with build.changed:
                await build.changed.wait_for(lambda n=seen: len(build.events) > n or build.done)  # type: ignore[misc]
                fresh = build.events[seen:]
                finished = build.done
            seen += len(fresh)
            for event in fresh:
                yield event
            if finished and seen >= len(build.events):
                return

    def in_use(self) -> set[str]:
        """The layers the builds in progress stack (a template deletion must not collect them)."""
        return {str(p) for b in self.active.values() for p in b.lowers}

    def get(self, build_id: str) -> dict[str, Any]:
        build = self.active.get(build_id)
        return dict(build.record) if build is not None else self.store.build(build_id)

    async def close(self) -> None:
        for build in list(self.active.values()):
            if build.task is not None:
                build.task.cancel()
        await asyncio.gather(*(b.task for b in self.active.values() if b.task), return_exceptions=True)

    # ---- running a build -----------------------------------------------------------------

    async def _emit(self, build: Build, event: dict[str, Any]) -> None:
        line = json.dumps(event, separators=(",", ":")) + "\n"
        with open(self.store.log_path(build.build_id), "a") as f:
            f.write(line)
        async with build.changed:
            build.events.append(event)
            build.changed.notify_all()

    async def _run(self, build: Build) -> None:
        req, total = build.request, len(build.steps)
        await self._emit(build, {"type": "start", "build_id": build.build_id, "name": build.record["name"],
                                 "tag": build.record["tag"], "steps": total})  # fmt: skip
        lowers = build.lowers
        all_cached = not req.no_cache
        status, error, template = "failed", None, None
        held = contextlib.ExitStack()
        try:
            held.enter_context(self.store.building())  # blocks only while a collection renames (ms)
            for index in range(total):
                step = build.steps[index]  # (the list is re-planned once a FROM image is pulled)
                started = time.monotonic()
                await self._emit(
                    build, {"type": "step", "step": step.number, "total": total, "instruction": step.text}
                )
                cached = await self._step(build, step, lowers, all_cached)
                all_cached = all_cached and cached
                await self._emit(build, {"type": "step_end", "step": step.number, "cached": cached,
                                         "seconds": round(time.monotonic() - started, 3)})  # fmt: skip
            build.config.user = await asyncio.to_thread(_user_name, lowers, build.config.user)
            res = Resolved(
                name=build.record["name"], tag=build.record["tag"], template_dir=lowers[0], layers=tuple(lowers[1:]),
                config=build.config, key=build.steps[-1].key, build_id=build.build_id, created_at=time.time(),
                kind="dockerfile",
            )  # fmt: skip
            self.store.register(res)
            template = res.to_dict()
            status = "succeeded"
        except asyncio.CancelledError:
            error = errors.UnavailableError("the build was cancelled (the server shut down)").to_body()
            raise
        except errors.CorralError as e:
            error = e.to_body()
        except Exception as e:
            log.exception("build %s", build.build_id)
            error = errors.BuildFailedError(f"internal error: {type(e).__name__}: {e}").to_body()
        finally:
            held.close()
            build.record.update(status=status, error=error, template=template, finished_at=time.time())
            self.store.save_build(build.record)
            end = {
                "type": "end",
                "status": status,
                "build_id": build.build_id,
                "error": error,
                "template": template,
            }
            with contextlib.suppress(Exception):
                await asyncio.shield(self._emit(build, end))
            build.done = True
            async with build.changed:
                build.changed.notify_all()
            self.active.pop(build.build_id, None)
            shutil.rmtree(req.scratch or req.context, ignore_errors=True)

    async def _step(self, build: Build, step: Step, lowers: list[Path], use_cache: bool) -> bool:
        """Run one step; extend ``lowers`` (bottom first) with its layer. True when it was CACHED."""
        kw = step.inst.keyword
        if kw == "FROM":
            if step.base is not None:
                lowers[:] = [step.base.template_dir, *step.base.layers]
                return True
            return await self._pull(build, step, lowers)
        if not step.makes_layer:
            return use_cache
        if len(lowers) >= MAX_LOWER_DIRS:
            raise errors.BuildFailedError(
                f"step {step.number} would stack layer {len(lowers) + 1}, over the limit of {MAX_LOWER_DIRS} "
                "(an overlay's lower dirs); merge RUN steps (cmd1 && cmd2) or COPY a directory at once",
                step=step.number,
            )
        cached = self.store.cached_layer(step.key)
        if cached is not None and use_cache:
            if cached["diff"] is not None:
                lowers.append(cached["diff"])
            return True
        with self.store.new_layer(step.key) as scratch:
            if kw == "RUN":
                await self._run_step(build, step, lowers, scratch)
            else:
                await asyncio.to_thread(self._file_step, build, step, lowers, scratch)
            layer = self.store.commit_layer(
                scratch, step.key, {"step": step.text, "build_id": build.build_id}
            )
        if layer["diff"] is not None:
            lowers.append(layer["diff"])
        return False

    async def _pull(self, build: Build, step: Step, lowers: list[Path]) -> bool:
        assert step.image is not None
        if step.pulled:  # planned with the image pinned to this reference
            cached = self.store.cached_layer(self.store.image_layer(step.image) or "")
            if cached is not None and cached["diff"] is not None:
                lowers[:] = [cached["diff"]]
                return True
        loop = asyncio.get_running_loop()

        def say(line: str) -> None:
            asyncio.run_coroutine_threadsafe(
                self._emit(build, {"type": "log", "step": step.number, "data": line}), loop
            )

        with self.store.new_layer(digest("pull", step.image)) as scratch:
            image_digest, inherited = await asyncio.to_thread(oci.pull, step.image, scratch / "diff", say)
            key = digest("image", image_digest)
            layer = self.store.commit_layer(
                scratch,
                key,
                {"step": step.text, "image": step.image, "digest": image_digest, "config": inherited},
            )
        self.store.pin_image(step.image, key)
        assert layer["diff"] is not None
        lowers[:] = [layer["diff"]]
        # The steps after FROM are keyed on the image actually pulled, and see its ENV and WORKDIR.
        pulled = self._pulled(step.image, key)
        assert pulled is not None
        build.steps, build.config = await asyncio.to_thread(self._plan, build.request, {step.image: pulled})
        return False

    def _file_step(self, build: Build, step: Step, lowers: list[Path], scratch: Path) -> None:
        with fsops.merged(list(reversed(lowers)), scratch) as root:
            if step.inst.keyword == "WORKDIR":
                fsops.make_dirs(root, step.path, 0, 0)
            else:
                uid, gid = fsops.ids(root, step.chown)
                fsops.copy_in(
                    root, build.request.context, step.entries, step.sources, step.dest, uid, gid, step.chmod
                )
        (scratch / "merged").rmdir()

    async def _run_step(self, build: Build, step: Step, lowers: list[Path], scratch: Path) -> None:
        from .service import new_sandbox_id

        # RUN steps run on namespaces whatever the server's default: the layer is the overlay's upper dir.
        backend = self.manager.backends.get("namespace")
        spec = SandboxSpec(
            sandbox_id=new_sandbox_id(), template_dir=lowers[0], layers=tuple(lowers[1:]), limits=BUILD_LIMITS,
            internet=True, upper_dir=scratch / "diff",
        )  # fmt: skip
        handle = await backend.start(spec)
        try:
            await backend.configure(handle, BUILD_LIMITS, True)
            envs = {**step.args, **step.config.env}
            user = await asyncio.to_thread(_user_name, lowers, step.config.user)
            stream = AgentClient(handle.agent_socket).exec(
                cmd=step.argv[0], args=step.argv[1:], envs=envs, cwd=step.config.workdir, user=user,
                timeout=STEP_TIMEOUT,
            )  # fmt: skip
            tail: list[str] = []
            partial = {"stdout": b"", "stderr": b""}
            end: dict[str, Any] = {}
            async for event in stream:
                kind = event.get("type")
                if kind in partial:
                    *lines, partial[kind] = (partial[kind] + event["data"]).split(b"\n")
                    for raw in lines:
                        text = raw.decode(errors="replace")
                        tail = [*tail[-19:], text]
                        await self._emit(build, {"type": "log", "step": step.number, "data": text})
                elif kind == "end":
                    end = event
            for rest in partial.values():
                if rest:
                    text = rest.decode(errors="replace")
                    tail = [*tail[-19:], text]
                    await self._emit(build, {"type": "log", "step": step.number, "data": text})
            code = end.get("exit_code")
            if code != 0 or end.get("error"):
                why = f"exit code {code}" + (f" ({end['error']})" if end.get("error") else "")
                raise errors.BuildFailedError(
                    f"step {step.number}/{len(build.steps)} `{step.text}` failed with {why}:\n"
                    + "\n".join(tail),
                    step=step.number,
                )
        finally:
            with contextlib.suppress(Exception):
                await backend.stop(handle)
            await asyncio.shield(backend.cleanup(handle))


def _user_name(lowers: list[Path], user: str) -> str:
    """USER as the name the agent looks up: a numeric uid is mapped through the image's /etc/passwd."""
    if not user.isdigit():
        return user
    for layer in reversed(lowers):  # the topmost layer that has the file has the current one
        # SECURITY: resolved inside the layer; a symlinked /etc must not make us read a host file.
        passwd = fsops.host_path(layer, "/etc/passwd")
        if passwd.is_file():
            for line in passwd.read_text(errors="replace").splitlines():
                cols = line.split(":")
                if len(cols) > 2 and cols[2] == user:
                    return cols[0]
            break
    raise errors.BuildFailedError(
        f"USER {user}: the image has no account with that uid (add one in a RUN step)"
    )
