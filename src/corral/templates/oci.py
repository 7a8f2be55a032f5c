"""OCI images as template root filesystems, without a Docker engine.

``skopeo copy`` pulls the image into an OCI layout, ``umoci raw unpack`` turns that into a plain
root filesystem (owners as in the image). Then corral's needs are added: the ``user`` account
(uid 1000, home /home/user), the dirs the agent is mounted on, and ``/usr/bin/python3`` (the agent
is a stdlib-only Python daemon run by the image's own python3: an image with python3 only in
/usr/local/bin gets a symlink; an image without python3 or bash is refused with a message saying
so). Finally the owners are shifted into the sandbox uid range, like every template.

Registries on a loopback address are spoken to over plain HTTP (as Docker does for localhost).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import BuildFailedError, ImageNotFoundError, RegistryError
from .shift import shift_owners

Progress = Callable[[str], None]
PULL_TIMEOUT = 1800
_LOOPBACK = re.compile(r"^(localhost|127\.\d+\.\d+\.\d+|\[::1\])(:\d+)?$")
_REF = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._:/@\[\]-]*$")
_MISSING = ("manifest unknown", "name unknown", "not found", "repository name not known", "no such image")
_UNREACHABLE = ("connection refused", "no such host", "i/o timeout", "network is unreachable", "dial tcp",
                "server misbehaving", "tls:", "connection reset")  # fmt: skip


def is_image_ref(ref: str) -> bool:
    """Whether ``FROM ref`` names an OCI image rather than a corral template.

    A corral template is ``name[:tag]`` with no registry or repository path; an image reference
    is anything else a registry can serve (``python:3.12-slim`` is tried as a template first).
    """
    return "/" in ref or "@" in ref


def registry_host(ref: str) -> str:
    first = ref.split("/", 1)[0]
    if "/" in ref and ("." in first or ":" in first or first == "localhost"):
        return first
    return "docker.io"


def pull(image_ref: str, rootfs: Path, say: Progress) -> tuple[str, dict[str, Any]]:
    """Pull ``image_ref`` and unpack it, ready for sandboxes, into ``rootfs``; return its digest
    and the part of its config a template inherits (``env``, ``workdir``)."""
    if not _REF.match(image_ref) or len(image_ref) > 512:
        raise ImageNotFoundError(f"{image_ref!r} is not an image reference")
    for tool, package in (("skopeo", "skopeo"), ("umoci", "umoci")):
        if shutil.which(tool) is None:
            raise RegistryError(f"{tool} is not installed (apt-get install {package})")
    host = registry_host(image_ref)
    with tempfile.TemporaryDirectory(prefix="corral-oci-", dir=rootfs.parent) as tmp:
        layout = Path(tmp) / "oci"
        argv = ["skopeo"]
        if not Path("/etc/containers/policy.json").exists():
            argv.append("--insecure-policy")
        argv += ["copy", "--quiet", "--digestfile", f"{tmp}/digest"]
        if _LOOPBACK.match(host):
            argv.append("--src-tls-verify=false")
        argv += [f"docker://{image_ref}", f"oci:{layout}:image"]
        say(f"pulling {image_ref} with skopeo")
        out = _run(argv, image_ref)
        image_digest = Path(f"{tmp}/digest").read_text().strip()
        image_config = read_config(layout)
        say(f"unpacking {image_digest[:19]} with umoci")
        _run(["umoci", "raw", "unpack", "--image", f"{layout}:image", str(rootfs)], image_ref, out)
    prepare_rootfs(rootfs, image_ref)
    say("shifting file owners into the sandbox uid range")
    shift_owners(rootfs)
    return image_digest, image_config


def read_config(layout: Path) -> dict[str, Any]:
    """ENV and WORKDIR of the one image in an OCI layout (its CMD, ENTRYPOINT and USER are not
    inherited: a template's start command and user come from its own Dockerfile)."""
    try:
        index = json.loads((layout / "index.json").read_text())
        manifest = json.loads(_blob(layout, index["manifests"][0]["digest"]))
        config = json.loads(_blob(layout, manifest["config"]["digest"])).get("config") or {}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return {}
    env = {}
    for item in config.get("Env") or []:
        key, sep, value = str(item).partition("=")
        if sep and key:
            env[key] = value
    return {"env": env, "workdir": config.get("WorkingDir") or None}


def _blob(layout: Path, digest: str) -> str:
    algorithm, _, hexdigest = digest.partition(":")
    if not re.fullmatch(r"[a-z0-9]+", algorithm) or not re.fullmatch(r"[a-f0-9]+", hexdigest):
        raise ValueError(f"bad digest {digest!r}")
    return (layout / "blobs" / algorithm / hexdigest).read_text()


def check_exists(image_ref: str) -> None:
    """Ask the registry for the image's manifest (quick): ImageNotFoundError or RegistryError now,
    before a build starts, rather than at its first step."""
    if not _REF.match(image_ref) or len(image_ref) > 512:
        raise ImageNotFoundError(f"{image_ref!r} is not an image reference")
    if shutil.which("skopeo") is None:
        raise RegistryError("skopeo is not installed (apt-get install skopeo)")
    argv = ["skopeo", "--command-timeout", "60s", "inspect", "--raw"]
    if _LOOPBACK.match(registry_host(image_ref)):
        argv.append("--tls-verify=false")
    _run([*argv, f"docker://{image_ref}"], image_ref)


def _run(argv: list[str], image_ref: str, prior: str = "") -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, errors="replace", timeout=PULL_TIMEOUT)
    except subprocess.TimeoutExpired:
        raise RegistryError(f"pulling {image_ref} took over {PULL_TIMEOUT} s") from None
    if proc.returncode == 0:
        return prior + proc.stdout
    message = (proc.stderr or proc.stdout).strip().splitlines()
    detail = message[-1][:500] if message else f"exit {proc.returncode}"
    low = detail.lower()
    if any(s in low for s in _UNREACHABLE):
        raise RegistryError(f"cannot reach the registry of {image_ref}: {detail}")
    if any(s in low for s in _MISSING):
        raise ImageNotFoundError(f"image {image_ref} was not found in its registry: {detail}")
    raise RegistryError(f"pulling {image_ref} failed: {detail}")


def prepare_rootfs(rootfs: Path, image_ref: str) -> None:
    """Add what corral's sandboxes need to an unpacked image (owners not yet shifted).

    SECURITY: an image's symlinks may point anywhere (``/etc -> /host/etc`` means the host's when
    followed here): every path written is resolved inside ``rootfs`` first (``_in_root``).
    """
    if not _exists_in(rootfs, "/bin/bash"):
        raise BuildFailedError(f"image {image_ref} has no /bin/bash, which corral runs commands with")
    if not _exists_in(rootfs, "/usr/bin/python3"):
        local = "/usr/local/bin/python3"
        if not _exists_in(rootfs, local):
            raise BuildFailedError(
                f"image {image_ref} has no python3, which corral's agent needs (/usr/bin/python3); "
                "use an image with python3 installed"
            )
        _make_dirs(rootfs, "/usr/bin")
        target = _in_root(rootfs, "/usr/bin/python3", follow_last=False)
        if target.is_symlink():
            target.unlink()
        os.symlink(local, target)
    for d in ("/run/corral", "/usr/local/lib/corral", "/tmp", "/root", "/etc"):
        _make_dirs(rootfs, d)
    os.chmod(_in_root(rootfs, "/tmp"), 0o1777)
    _add_user(rootfs)


def _in_root(rootfs: Path, path: str, follow_last: bool = True) -> Path:
    from .fsops import host_path

    return host_path(rootfs, path, follow_last)


def _make_dirs(rootfs: Path, path: str) -> None:
    from .fsops import make_dirs

    make_dirs(rootfs, path, 0, 0)


def _exists_in(rootfs: Path, path: str) -> bool:
    """Whether ``path`` exists inside ``rootfs``, following its symlinks inside it (never out)."""
    current = rootfs
    parts = [p for p in path.split("/") if p]
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            current = current.parent if current != rootfs else rootfs
            continue
        candidate = current / part
        if candidate.is_symlink():
            hops += 1
            if hops > 40:
                return False
            target = os.readlink(candidate)
            parts = [p for p in target.split("/") if p] + parts
            if target.startswith("/"):
                current = rootfs
            continue
        if not os.path.lexists(candidate):
            return False
        current = candidate
    return True


def _add_user(rootfs: Path) -> None:
    """The ``user`` account (uid/gid 1000) corral's commands run as, unless the image has it."""
    passwd_path, group_path, shadow_path = (_in_root(rootfs, f"/etc/{n}") for n in ("passwd", "group", "shadow"))
    passwd = passwd_path.read_text() if passwd_path.is_file() else "root:x:0:0:root:/root:/bin/bash\n"
    users = {line.split(":")[0] for line in passwd.splitlines() if line}
    if "user" not in users:
        _replace(passwd_path, passwd.rstrip("\n") + "\nuser:x:1000:1000::/home/user:/bin/bash\n")
        group = group_path.read_text() if group_path.is_file() else "root:x:0:\n"
        if not any(line.startswith("user:") for line in group.splitlines()):
            _replace(group_path, group.rstrip("\n") + "\nuser:x:1000:\n")
        if shadow_path.is_file():
            _replace(shadow_path, shadow_path.read_text().rstrip("\n") + "\nuser:!:19000:0:99999:7:::\n", 0o640)
    _make_dirs(rootfs, "/home/user")
    home = _in_root(rootfs, "/home/user")
    os.chown(home, 1000, 1000)
    os.chmod(home, 0o750)


def _replace(path: Path, text: str, mode: int = 0o644) -> None:
    """Write a file in an image: a new inode (never through whatever ``path`` was), same mode if it existed."""
    try:
        st = os.lstat(path)
        mode, owner = st.st_mode & 0o7777, (st.st_uid, st.st_gid)
    except FileNotFoundError:
        owner = (0, 0)
    tmp = path.with_name(f".{path.name}.corral")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chown(tmp, *owner)
    os.chmod(tmp, mode)
    os.replace(tmp, path)
