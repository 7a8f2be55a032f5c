"""A Dockerfile made concrete: every step with its variables expanded and its inputs checked.

Planning needs no sandbox and no registry, so every bad input (a syntax error, an unsupported
instruction or flag, a COPY of a path outside the context, an unknown base template) is refused
with a 4xx before a build starts. Each step carries the cache key of the build up to it: a hash
of its parent's key, the step, the variables it sees and (for COPY) the files it reads.
"""

from __future__ import annotations

import copy
import shlex
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ..dockerignore import DockerIgnore
from ..errors import BuildContextError, DockerfileError, TemplateNotFoundError, UnsupportedInstructionError
from ..templates import context as ctx
from ..templates import dockerfile as df
from ..templates.oci import is_image_ref
from ..templates.recipes import RECIPES
from ..templates.store import Resolved, TemplateConfig, TemplateStore, digest
from .backends import ISOLATION_LABEL, ISOLATIONS

LAYER_STEPS = ("RUN", "COPY", "ADD", "WORKDIR")


@dataclass
class Step:
    number: int
    inst: df.Instruction
    text: str  # as shown in the log (variables expanded where Docker expands them)
    key: str = ""  # cache key of the build up to and including this step
    config: TemplateConfig = field(default_factory=TemplateConfig)  # after this step
    args: dict[str, str] = field(default_factory=dict)  # ARG values visible to RUN
    # FROM
    base: Resolved | None = None  # a corral template
    image: str | None = None  # or an OCI image reference
    pulled: bool = False  # planned with the image's own layer key and config
    # RUN
    argv: list[str] = field(default_factory=list)
    # COPY / ADD
    sources: list[str] = field(default_factory=list)
    entries: list[list[str]] = field(default_factory=list)
    dest: str = ""
    chown: str | None = None
    chmod: int | None = None
    # WORKDIR
    path: str = ""

    @property
    def makes_layer(self) -> bool:
        return self.inst.keyword in LAYER_STEPS or self.image is not None


def plan(
    store: TemplateStore, dockerfile: str, context: Path, build_args: dict[str, str],
    start_cmd: str | None = None, ready_cmd: str | None = None,
    images: dict[str, tuple[str, TemplateConfig]] | None = None,
) -> tuple[list[Step], TemplateConfig]:  # fmt: skip
    """The steps of a Dockerfile and the template's final config.

    ``images`` maps the OCI image references already pulled to (their layer key, their config:
    ENV and WORKDIR): FROM such an image starts from them. Before a pull, the build plans with a
    placeholder key, and plans again once the image is there (keys and variables then include it).
    """
    instructions = df.parse(dockerfile)
    ignore = DockerIgnore.of(context)
    steps: list[Step] = []
    global_args: dict[str, str] = {}
    args: dict[str, str] = {}
    declared: set[str] = set()
    config = TemplateConfig()
    key = ""
    entrypoint: list[str] | str | None = None
    cmd: list[str] | str | None = None
    for inst in instructions:
        values = {**args, **config.env} if steps else global_args
        step = Step(number=len(steps) + 1, inst=inst, text=inst.text)
        k = inst.keyword
        if k == "ARG":
            name, default = df.arg_default(inst)
            declared.add(name)
            value: str | None
            if name in build_args:
                value = build_args[name]
            elif default is not None:
                value = df.substitute(default, values)
            else:  # re-declared after FROM: the value it had before FROM
                value = global_args.get(name) if steps else None
            if value is not None:
                (args if steps else global_args)[name] = value
            if not steps:
                continue  # an ARG before FROM only serves FROM
        elif k == "FROM":
            words = df.substitute(inst.args, global_args).split()
            if len(words) not in (1, 3) or (len(words) == 3 and words[1].lower() != "as"):
                raise DockerfileError(
                    f"line {inst.line}: FROM takes an image or template [AS name]", line=inst.line
                )
            ref = words[0]
            step.text = f"FROM {ref}"
            try:
                if is_image_ref(ref):
                    raise TemplateNotFoundError(ref)
                step.base = store.resolve(ref)
            except TemplateNotFoundError:
                if ref.partition(":")[0] in RECIPES:
                    raise TemplateNotFoundError(
                        f"line {inst.line}: template {ref!r} is not built on this host "
                        f"(python -m corral.templates ensure {ref.partition(':')[0]})"
                    ) from None
                step.image = ref
            if step.base is not None:
                config = copy.deepcopy(step.base.config)
                key = step.base.key
            elif images and ref in images:
                key, config = images[ref][0], copy.deepcopy(images[ref][1])
                step.pulled = True
            else:
                key = digest("unpulled", ref)
        elif k == "RUN":
            form = inst.exec_form()
            step.argv = form if form is not None else ["/bin/sh", "-c", inst.args]
            if not step.argv:
                raise DockerfileError(f"line {inst.line}: RUN needs a command", line=inst.line)
        elif k in ("COPY", "ADD"):
            srcs, dest = df.paths(inst, values)
            if k == "ADD" and any("://" in s for s in srcs):
                raise UnsupportedInstructionError(
                    f"line {inst.line}: ADD of a URL is not supported (download it in a RUN step)",
                    instruction="ADD",
                    line=inst.line,
                )
            step.sources = ctx.sources(context, srcs, ignore, inst.line)
            step.entries = [ctx.entries(context, s, ignore) for s in step.sources]
            if k == "ADD":
                for rel in (r for group in step.entries for r in group):
                    p = context / rel
                    if p.is_file() and not p.is_symlink() and tarfile.is_tarfile(p):
                        raise UnsupportedInstructionError(
                            f"line {inst.line}: ADD of a local archive ({rel}) would unpack it, which corral does not do; "
                            "COPY it and unpack it in a RUN step", instruction="ADD", line=inst.line)  # fmt: skip
            step.dest = dest if dest.startswith("/") else _join(config.workdir, dest, keep_slash=True)
            step.chown = df.substitute(inst.flags["chown"], values) if "chown" in inst.flags else None
            if "chmod" in inst.flags:
                try:
                    step.chmod = int(inst.flags["chmod"], 8)
                except ValueError:
                    raise DockerfileError(
                        f"line {inst.line}: --chmod takes an octal mode", line=inst.line
                    ) from None
            fp = ctx.fingerprint(context, [r for group in step.entries for r in group])
            step.text = f"{k} {' '.join(srcs)} {dest}"
            key = digest(key, k, step.sources, step.dest, step.chown, step.chmod, fp)
        elif k == "ENV":
            config.env.update(df.key_values(inst, values))
        elif k == "LABEL":
            config.labels.update(df.key_values(inst, values))
            isolation = config.labels.get(ISOLATION_LABEL)
            if isolation is not None and isolation not in ISOLATIONS:
                raise DockerfileError(
                    f"line {inst.line}: {ISOLATION_LABEL} is one of {', '.join(ISOLATIONS)}, not {isolation!r}",
                    line=inst.line,
                )
        elif k == "WORKDIR":
            step.path = _join(config.workdir, df.substitute(inst.args, values))
            config.workdir = step.path
        elif k == "USER":
            config.user = df.substitute(inst.args, values).split(":")[0]
        elif k == "EXPOSE":
            config.expose += df.substitute(inst.args, values).split()
        elif k in ("CMD", "ENTRYPOINT"):
            form = inst.exec_form()
            command = form if form is not None else inst.args
            if k == "CMD":
                cmd = command
            else:
                entrypoint, cmd = command, None
        if k not in ("FROM", "COPY", "ADD"):
            key = digest(key, k, inst.args, inst.flags, step.text)
        if k == "RUN":  # what RUN sees changes what it makes
            key = digest(key, config.env, args, config.workdir, config.user)
        step.key, step.config, step.args = key, copy.deepcopy(config), dict(args)
        steps.append(step)
    unknown = set(build_args) - declared
    if unknown:
        raise DockerfileError(f"--build-arg {', '.join(sorted(unknown))}: not declared by an ARG", line=0)
    final = copy.deepcopy(config)
    if entrypoint is not None or cmd is not None:
        final.start_cmd = _command(entrypoint, cmd)
    final.ready_cmd = final.labels.get("corral.ready_cmd", final.ready_cmd)
    if start_cmd is not None:
        final.start_cmd = start_cmd or None
    if ready_cmd is not None:
        final.ready_cmd = ready_cmd or None
    if final.ready_cmd and not final.start_cmd:
        raise BuildContextError("a ready check needs a start command (CMD, ENTRYPOINT or start_cmd)")
    return steps, final


def _join(workdir: str | None, path: str, keep_slash: bool = False) -> str:
    import posixpath

    joined = path if path.startswith("/") else posixpath.join(workdir or "/", path)
    normal = posixpath.normpath(joined)
    return normal + "/" if keep_slash and path.endswith("/") and normal != "/" else normal


def _command(entrypoint: list[str] | str | None, cmd: list[str] | str | None) -> str:
    """ENTRYPOINT and CMD as one shell command (exec forms quoted word by word)."""
    parts = []
    for value in (entrypoint, cmd):
        if isinstance(value, list):
            parts.append(shlex.join(value))
        elif value:
            parts.append(value)
    return " ".join(parts)
