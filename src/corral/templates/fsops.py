"""File steps of a build (COPY, ADD, WORKDIR), done on the host into a new layer.

The layers below are mounted read-only under an overlay whose upper dir is the new layer, so
copy-up, whiteouts and parent dirs behave exactly as in a sandbox. Every path inside the image is
resolved component by component inside the merged root: a symlink in the image (``/bin -> usr/bin``,
or a hostile ``/app -> /etc``) is followed as the sandbox would see it, never to the host's files.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path

from ..backends.namespace.overlay import MS_NODEV, MS_NOSUID, mount, overlay_options, umount_retry
from ..errors import BuildContextError, BuildFailedError
from .shift import HOST_UID_BASE


@contextlib.contextmanager
def merged(lowers: Sequence[Path], scratch: Path) -> Iterator[Path]:
    """Mount lowers (topmost first) with ``scratch/diff`` as the upper dir at ``scratch/merged``."""
    for name in ("diff", "work", "merged"):
        (scratch / name).mkdir(exist_ok=True)
    os.chown(scratch / "diff", HOST_UID_BASE, HOST_UID_BASE)
    target = scratch / "merged"
    # SECURITY: nosuid/nodev; the host only reads and writes paths resolved inside this root.
    mount("corral-build", target, "overlay", MS_NOSUID | MS_NODEV,
          overlay_options(list(lowers), scratch / "diff", scratch / "work"))  # fmt: skip
    try:
        yield target
    finally:
        umount_retry(target)


def resolve_in_root(root: Path, path: str, follow_last: bool = True) -> str:
    """``path`` inside ``root`` with every symlink resolved as if ``root`` were ``/`` (as chroot
    would); returns the resolved absolute in-image path. Missing components are kept as given."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    hops = 0
    while parts:
        part = parts.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        host = root.joinpath(*resolved, part)
        if (parts or follow_last) and host.is_symlink():
            hops += 1
            if hops > 40:
                raise BuildFailedError(f"too many levels of symbolic links in {path}")
            target = os.readlink(host)
            if target.startswith("/"):
                resolved = []
            parts = [p for p in target.split("/") if p] + parts
            continue
        resolved.append(part)
    return "/" + "/".join(resolved)


def host_path(root: Path, path: str, follow_last: bool = True) -> Path:
    return root / resolve_in_root(root, path, follow_last).lstrip("/")


def make_dirs(root: Path, path: str, uid: int, gid: int, depth: int = 0) -> None:
    """``mkdir -p`` inside root; new dirs are owned by uid:gid (ids inside the sandbox)."""
    if depth > 40:
        raise BuildFailedError(f"too many levels of symbolic links in {path}")
    current = "/"
    for part in [p for p in path.split("/") if p]:
        current = resolve_in_root(root, posixpath.join(current, part))
        host = root / current.lstrip("/")
        if not os.path.lexists(host):
            parent = posixpath.dirname(current)
            if not (root / parent.lstrip("/")).is_dir():  # a symlink led to a path not made yet
                make_dirs(root, parent, uid, gid, depth + 1)
            host.mkdir(mode=0o755)
            os.chown(host, uid + HOST_UID_BASE, gid + HOST_UID_BASE)
        elif not host.is_dir():
            raise BuildFailedError(f"{current} exists in the image and is not a directory")


def ids(root: Path, spec: str | None) -> tuple[int, int]:
    """``user[:group]`` (names or numbers) as ids inside the image; root when spec is None."""
    if not spec:
        return 0, 0
    user, _, group = spec.partition(":")

    def lookup(name: str, table: str, field: int) -> int:
        if name.isdigit():
            return int(name)
        path = host_path(root, f"/etc/{table}")
        with contextlib.suppress(OSError):
            for line in path.read_text(errors="replace").splitlines():
                cols = line.split(":")
                if len(cols) > field and cols[0] == name:
                    return int(cols[field])
        raise BuildFailedError(f"no {'user' if table == 'passwd' else 'group'} {name!r} in the image")

    uid = lookup(user, "passwd", 2)
    if group:
        gid = lookup(group, "group", 2)
    elif user.isdigit():
        gid = uid
    else:
        gid = lookup(user, "passwd", 3)
    if not (0 <= uid < 65536 and 0 <= gid < 65536):
        raise BuildFailedError(f"{spec}: ids must be below 65536")
    return uid, gid


def copy_in(
    root: Path, context: Path, rels: list[list[str]], srcs: list[str], dest: str, uid: int, gid: int, mode: int | None
) -> int:
    """COPY: ``srcs`` (context-relative; ``rels[i]`` is srcs[i] and what is below it) to ``dest``
    (absolute, in the image). Returns the number of entries written."""
    many = len(srcs) > 1 or dest.endswith("/")
    dest_is_dir = many or host_path(root, dest).is_dir()
    count = 0
    for src, below in zip(srcs, rels, strict=True):
        src_host = context / src if src != "." else context
        src_is_dir = src_host.is_dir() and not src_host.is_symlink()
        for rel in below:
            # a dir's contents go into dest; a file goes into dest/ or becomes dest
            if src_is_dir:
                tail = rel[len(src) :].lstrip("/") if src != "." else rel
                target = posixpath.join(dest, tail) if tail else dest
            else:
                target = posixpath.join(dest, posixpath.basename(rel)) if dest_is_dir else dest
            _copy_entry(root, context / rel if rel != "." else context, target, uid, gid, mode)
            count += 1
    return count


def _copy_entry(root: Path, src: Path, target: str, uid: int, gid: int, mode: int | None) -> None:
    st = os.lstat(src)
    make_dirs(root, posixpath.dirname(target.rstrip("/")) or "/", uid, gid)
    if stat.S_ISDIR(st.st_mode):
        # SECURITY: resolved in the root, the last component included: chown/chmod below follow
        # symlinks, and a symlink in the image may point anywhere on the host.
        host = host_path(root, target, follow_last=True)
        if os.path.lexists(host) and not host.is_dir():
            host.unlink()
        if not os.path.lexists(host):
            host.mkdir()
        os.chown(host, uid + HOST_UID_BASE, gid + HOST_UID_BASE)
        os.chmod(host, mode if mode is not None else stat.S_IMODE(st.st_mode))
        return
    host = host_path(root, target, follow_last=False)
    if os.path.lexists(host):
        if host.is_dir() and not host.is_symlink():
            raise BuildContextError(f"cannot copy a file over the directory {target}")
        host.unlink()
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), host)
        os.lchown(host, uid + HOST_UID_BASE, gid + HOST_UID_BASE)
        return
    # SECURITY: O_NOFOLLOW on both ends: neither a context symlink nor one in the image is followed.
    fd_in = os.open(src, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        fd_out = os.open(host, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            while os.sendfile(fd_out, fd_in, None, 1 << 30) > 0:
                pass
            os.fchown(fd_out, uid + HOST_UID_BASE, gid + HOST_UID_BASE)
            os.fchmod(fd_out, mode if mode is not None else stat.S_IMODE(st.st_mode))
        finally:
            os.close(fd_out)
    finally:
        os.close(fd_in)
