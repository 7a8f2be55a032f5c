"""Templates on disk: named and tagged templates, their layers, and the builds that made them.

Layout under the templates dir (one per host, shared by every server on it)::

    <recipe>/<digest>/rootfs, <recipe>/current.json   recipe-built templates (builder.py)
    layers/<key>/diff          one build step's files (an overlay upper dir, owners shifted);
    layers/<key>/meta.json     its step, parent key and whether it is empty. ``key`` hashes the
                               parent's key and the step (and the files a COPY reads), so a
                               layer is stored once and shared by every template that has it.
    images/<hash of ref>.json  an OCI image reference -> the layer holding its root filesystem
    refs/<name>/<tag>.json     a template: its lower dirs (bottom first) and run-time config
    builds/<id>.json, .ndjson  a build's record and its log (one JSON event per line)

Files, not SQLite: the templates dir is what every server on the host shares (the SQLite store is
per server), and each record is written once, atomically (a temp file renamed into place).
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import InvalidRequestError, TemplateNotFoundError
from .builder import template_path

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
TAG_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,127}")
DEFAULT_TAG = "latest"


@dataclass
class TemplateConfig:
    """What a template carries besides files: applied to every sandbox started from it."""

    env: dict[str, str] = field(default_factory=dict)
    workdir: str | None = None
    user: str = "root"  # who runs RUN steps and the start command
    start_cmd: str | None = None
    ready_cmd: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    expose: list[str] = field(default_factory=list)


@dataclass
class Resolved:
    """A template reference made concrete: what the backend mounts and the config to apply."""

    name: str
    tag: str
    template_dir: Path  # the bottom root filesystem
    layers: tuple[Path, ...] = ()  # diffs above it, bottom to top
    config: TemplateConfig = field(default_factory=TemplateConfig)
    key: str = ""  # the cache key of the top layer (a FROM of this template starts from it)
    build_id: str | None = None
    created_at: float = 0.0
    kind: str = "recipe"  # recipe | dockerfile

    @property
    def ref(self) -> str:
        return f"{self.name}:{self.tag}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "tag": self.tag, "kind": self.kind, "build_id": self.build_id,
            "created_at": self.created_at, "template_dir": str(self.template_dir),
            "layers": [str(p) for p in self.layers], "key": self.key, "config": asdict(self.config),
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resolved:
        return cls(
            name=d["name"], tag=d["tag"], kind=d.get("kind", "dockerfile"), build_id=d.get("build_id"),
            created_at=d.get("created_at", 0.0), template_dir=Path(d["template_dir"]),
            layers=tuple(Path(p) for p in d.get("layers", [])), key=d.get("key", ""),
            config=TemplateConfig(**d.get("config", {})),
        )  # fmt: skip


def split_ref(ref: str) -> tuple[str, str]:
    """``name[:tag]`` checked: (name, tag)."""
    name, _, tag = ref.partition(":")
    tag = tag or DEFAULT_TAG
    if not NAME_RE.fullmatch(name) or not TAG_RE.fullmatch(tag):
        raise InvalidRequestError(
            f"template {ref!r}: a name is 1-63 of [a-z0-9._-] (starting with a letter or digit), a tag 1-128 of [A-Za-z0-9._-]"
        )
    return name, tag


def digest(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def write_json(path: Path, data: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class TemplateStore:
    def __init__(self, templates_dir: Path) -> None:
        self.root = templates_dir
        self.layers = templates_dir / "layers"
        self.refs = templates_dir / "refs"
        self.images = templates_dir / "images"
        self.builds = templates_dir / "builds"

    # ---- templates ------------------------------------------------------------------------

    def resolve(self, ref: str) -> Resolved:
        """The template ``name[:tag]``: a Dockerfile-built one, or a recipe-built one (tag latest)."""
        name, tag = split_ref(ref)
        meta = self.refs / name / f"{tag}.json"
        if meta.exists():
            try:
                res = Resolved.from_dict(json.loads(meta.read_text()))
            except (OSError, ValueError, KeyError, TypeError):
                raise TemplateNotFoundError(f"template {ref!r} has an unreadable record") from None
            for p in (res.template_dir, *res.layers):
                if not p.is_dir():
                    raise TemplateNotFoundError(f"template {ref!r} is missing its layer {p}")
            return res
        if tag == DEFAULT_TAG:
            rootfs = template_path(self.root, name)  # TemplateNotFoundError when it is not built
            return Resolved(name=name, tag=tag, template_dir=rootfs, key=digest("rootfs", str(rootfs)))
        raise TemplateNotFoundError(f"template {ref!r} does not exist")

    def register(self, res: Resolved) -> None:
        write_json(self.refs / res.name / f"{res.tag}.json", res.to_dict())

    def list(self) -> list[Resolved]:
        out = []
        for meta in sorted(self.root.glob("*/current.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TemplateNotFoundError):
                data = json.loads(meta.read_text())
                out.append(self.resolve(data["name"]))
        for meta in sorted(self.refs.glob("*/*.json")):
            with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                out.append(Resolved.from_dict(json.loads(meta.read_text())))
        return out

    def unregister(self, ref: str, keep: set[str] | None = None) -> tuple[Resolved, builtins.list[Path]]:
        """Remove a Dockerfile-built template's tag and take away the layers nothing uses any more.

        Returns the template and the trash dirs its unused layers were moved to (the caller
        removes them, which takes a while; moving them out is instant, so a build running in the
        same process never finds a layer half removed: it finds it, or it does not).
        """
        name, tag = split_ref(ref)
        meta = self.refs / name / f"{tag}.json"
        if not meta.exists():
            self.resolve(ref)  # a recipe-built template answers below; an unknown one 404s here
            raise InvalidRequestError(f"template {ref!r} is built from a recipe and cannot be deleted")
        res = Resolved.from_dict(json.loads(meta.read_text()))
        meta.unlink()
        with contextlib.suppress(OSError):
            meta.parent.rmdir()
        return res, self.collect_garbage(keep)

    def referenced_dirs(self) -> set[str]:
        """Every lower dir some tagged template stacks (they must outlive a rebuild of their base)."""
        used: set[str] = set()
        for meta in self.refs.glob("*/*.json"):
            with contextlib.suppress(OSError, ValueError, KeyError):
                data = json.loads(meta.read_text())
                used.add(data["template_dir"])
                used.update(data.get("layers", []))
        return used

    def collect_garbage(self, keep: set[str] | None = None) -> builtins.list[Path]:
        """Move away the layers no template references, no mounted overlay uses and ``keep`` (the
        lower dirs of builds in progress) does not name; return the trash dirs to remove.

        The build cache goes with them: a later build of the same steps runs them again.
        """
        lock = os.open(self.root / ".gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:  # a build runs (in this or another server): collect at a later delete
            os.close(lock)
            return []
        try:
            return self._collect(keep)
        finally:
            os.close(lock)

    def _collect(self, keep: set[str] | None) -> builtins.list[Path]:
        used = self.referenced_dirs() | (keep or set())
        mounted = Path("/proc/mounts").read_text()
        trash = []
        for layer in self.layers.iterdir() if self.layers.is_dir() else []:
            diff = layer / "diff"
            if layer.name.startswith(".") or str(diff) in used or str(diff) in mounted:
                continue
            meta = self._layer_meta(layer.name)
            if meta is not None and meta.get("empty") and time.time() - meta.get("created_at", 0) < 3600:
                continue  # an empty step's marker is tiny; kept a while as a cache entry
            target = self.layers / f".trash-{layer.name}-{os.getpid()}-{time.monotonic_ns()}"
            with contextlib.suppress(OSError):
                os.rename(layer, target)
                trash.append(target)
        for pin in self.images.glob("*.json") if self.images.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, KeyError):
                if not (self.layers / json.loads(pin.read_text())["layer"]).is_dir():
                    pin.unlink()
        return trash

    @contextlib.contextmanager
    def building(self) -> Iterator[None]:
        """Held by a build from its first step until its template is registered: garbage
        collection (in any server on this host) does not run meanwhile, so it never takes a
        layer a build has made or found in the cache but not yet registered."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock = os.open(self.root / ".gc.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(lock, fcntl.LOCK_SH)  # waits only while a collection moves layers away
            yield
        finally:
            os.close(lock)

    def remove_abandoned(self) -> builtins.list[str]:
        """Remove scratch dirs (half-made layers, received contexts) of server processes that died."""
        removed = []
        for pattern in ("layers/.tmp-*", "layers/.trash-*", "contexts/ctx-*"):
            for scratch in self.root.glob(pattern):
                try:
                    pid = int(scratch.name.split("-")[-2 if pattern.startswith("layers") else 1])
                    os.kill(pid, 0)
                    continue  # its process still runs (maybe another server on this host)
                except (ValueError, IndexError):
                    pass
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue
                merged = scratch / "merged"
                if merged.is_dir() and str(merged) in Path("/proc/mounts").read_text():
                    continue
                shutil.rmtree(scratch, ignore_errors=True)
                removed.append(scratch.name)
        return removed

    # ---- layers ---------------------------------------------------------------------------

    def _layer_meta(self, key: str) -> dict[str, Any] | None:
        try:
            data: dict[str, Any] = json.loads((self.layers / key / "meta.json").read_text())
            return data
        except (OSError, ValueError):
            return None

    def cached_layer(self, key: str) -> dict[str, Any] | None:
        """The finished layer of ``key`` (meta with ``diff``: its dir, None when empty), or None."""
        meta = self._layer_meta(key)
        if meta is None:
            return None
        diff = self.layers / key / "diff"
        if not meta.get("empty") and not diff.is_dir():
            return None
        return {**meta, "diff": None if meta.get("empty") else diff}

    @contextlib.contextmanager
    def new_layer(self, key: str) -> Iterator[Path]:
        """A scratch dir for a layer being made (``<dir>/diff`` is its upper dir, ``<dir>/work``
        the overlay's); ``commit_layer`` moves it into place, anything else removes it."""
        self.layers.mkdir(parents=True, exist_ok=True)
        scratch = self.layers / f".tmp-{key}-{os.getpid()}-{time.monotonic_ns()}"
        scratch.mkdir()
        try:
            yield scratch
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def commit_layer(self, scratch: Path, key: str, meta: dict[str, Any]) -> dict[str, Any]:
        """Move a made layer into place (an identical one made meanwhile by another build wins)."""
        diff = scratch / "diff"
        empty = not diff.is_dir() or not any(diff.iterdir())
        shutil.rmtree(scratch / "work", ignore_errors=True)
        if empty:
            shutil.rmtree(diff, ignore_errors=True)
        write_json(scratch / "meta.json", {**meta, "key": key, "empty": empty, "created_at": time.time()})
        with contextlib.suppress(OSError):  # ENOTEMPTY/EEXIST: the other build's layer is the same
            os.rename(scratch, self.layers / key)
        cached = self.cached_layer(key)
        assert cached is not None
        return cached

    # ---- OCI images -----------------------------------------------------------------------

    def image_layer(self, image_ref: str) -> str | None:
        try:
            key: str = json.loads((self.images / f"{digest('image', image_ref)}.json").read_text())["layer"]
        except (OSError, ValueError, KeyError):
            return None
        return key if self.cached_layer(key) is not None else None

    def pin_image(self, image_ref: str, key: str) -> None:
        write_json(self.images / f"{digest('image', image_ref)}.json", {"ref": image_ref, "layer": key})

    # ---- builds ---------------------------------------------------------------------------

    def save_build(self, record: dict[str, Any]) -> None:
        write_json(self.builds / f"{record['build_id']}.json", record)

    def build(self, build_id: str) -> dict[str, Any]:
        from ..errors import BuildNotFoundError

        if not re.fullmatch(r"[a-z0-9]{1,40}", build_id):
            raise BuildNotFoundError(f"build {build_id!r} does not exist")
        try:
            data: dict[str, Any] = json.loads((self.builds / f"{build_id}.json").read_text())
        except (OSError, ValueError):
            raise BuildNotFoundError(f"build {build_id!r} does not exist") from None
        return data

    def fail_abandoned_builds(self) -> builtins.list[str]:
        """Mark failed the builds still "building" whose server process is gone (it crashed)."""
        failed = []
        for path in self.builds.glob("*.json") if self.builds.is_dir() else []:
            with contextlib.suppress(OSError, ValueError, KeyError):
                record = json.loads(path.read_text())
                if record["status"] != "building" or _alive(record.get("pid")):
                    continue
                record.update(status="failed", finished_at=time.time(), error={
                    "code": "build_failed", "message": "the server stopped while the build ran"})  # fmt: skip
                self.save_build(record)
                failed.append(record["build_id"])
        return failed

    def log_path(self, build_id: str) -> Path:
        return self.builds / f"{build_id}.ndjson"


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
