"""A build context: received as a tar, unpacked into a private dir, read by COPY and ADD.

Nothing in a context is ever followed out of it: members with absolute names or ``..`` are
refused, a member below a symlink member is refused, and COPY sources are looked up without
following symlinks (a symlink is copied as a symlink).
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import posixpath
import stat
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import IO

from ..dockerignore import DockerIgnore
from ..errors import BuildContextError

MAX_CONTEXT_BYTES = 4 * 1024**3


def unpack(fileobj: IO[bytes], dest: Path) -> None:
    """Unpack a tar stream into the empty dir ``dest`` (files, dirs and symlinks only)."""
    total = 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                name = _member_name(member.name)
                if name is None:
                    continue
                target = dest / name
                _check_parents(dest, name)
                if member.isdir():
                    target.mkdir(mode=0o755, parents=True, exist_ok=True)
                elif member.issym():
                    if os.path.lexists(target):
                        raise BuildContextError(f"the context has {name!r} twice")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    os.symlink(member.linkname, target)
                elif member.isfile():
                    total += member.size
                    if total > MAX_CONTEXT_BYTES:
                        raise BuildContextError(f"the build context is over {MAX_CONTEXT_BYTES} bytes")
                    target.parent.mkdir(parents=True, exist_ok=True)
                    src = tar.extractfile(member)
                    assert src is not None
                    # SECURITY: O_NOFOLLOW|O_EXCL: never write through a planted symlink.
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                    with os.fdopen(fd, "wb") as out:
                        while chunk := src.read(1 << 20):
                            out.write(chunk)
                    os.chmod(target, member.mode & 0o7777)
                # hard links, devices and fifos are left out (a build context has no use for them)
    except tarfile.TarError as e:
        raise BuildContextError(f"the build context is not a valid tar stream: {e}") from None
    except FileExistsError:
        raise BuildContextError("the build context has a path twice") from None


def _member_name(raw: str) -> str | None:
    name = posixpath.normpath(raw) if raw else "."
    if name == ".":
        return None
    if name.startswith("/") or name == ".." or name.startswith("../") or "\0" in name:
        raise BuildContextError(f"the build context has a path outside it: {raw!r}")
    return name


def _check_parents(root: Path, name: str) -> None:
    current = root
    for part in name.split("/")[:-1]:
        current = current / part
        try:
            st = os.lstat(current)
        except FileNotFoundError:
            return
        # SECURITY: a member below a symlink member would be written wherever the symlink points.
        if not stat.S_ISDIR(st.st_mode):
            raise BuildContextError(f"the build context has {name!r} below a non-directory")


def sources(context: Path, patterns: Iterable[str], ignore: DockerIgnore, line: int) -> list[str]:
    """The context-relative paths COPY's source patterns name (wildcards expanded), checked."""
    out: list[str] = []
    for pattern in patterns:
        rel = posixpath.normpath(pattern.lstrip("/")) if pattern.strip("/") else "."
        if rel == ".." or rel.startswith("../"):
            raise BuildContextError(f"line {line}: COPY of {pattern!r}, a path outside the build context", line=line)
        if any(c in rel for c in "*?["):
            found = [p for p in ignore.walk(context) if p.count("/") == rel.count("/") and fnmatch.fnmatchcase(p, rel)]
            if not found:
                raise BuildContextError(f"line {line}: COPY {pattern!r} matches no file in the build context", line=line)
            out.extend(sorted(set(found)))
            continue
        if rel != ".":
            _check_parents(context, rel)
            if not os.path.lexists(context / rel) or ignore.ignored(rel):
                raise BuildContextError(f"line {line}: {pattern!r} is not in the build context", line=line)
        out.append(rel)
    return out


def entries(context: Path, rel: str, ignore: DockerIgnore) -> list[str]:
    """``rel`` and, if it is a directory, everything kept below it (context-relative, sorted)."""
    path = context / rel if rel != "." else context
    if rel != "." and (path.is_symlink() or not path.is_dir()):
        return [rel]
    out = [] if rel == "." else [rel]
    for p in DockerIgnore().walk(path):
        full = p if rel == "." else f"{rel}/{p}"
        if not ignore.ignored(full):
            out.append(full)
    return out


def fingerprint(context: Path, rels: Iterable[str]) -> str:
    """A hash of the names, types, modes and contents of these context paths."""
    h = hashlib.sha256()
    for rel in rels:
        path = context / rel if rel != "." else context
        st = os.lstat(path)
        h.update(f"{rel}\0{stat.S_IFMT(st.st_mode)}\0{stat.S_IMODE(st.st_mode)}\0".encode())
        if stat.S_ISLNK(st.st_mode):
            h.update(os.readlink(path).encode())
        elif stat.S_ISREG(st.st_mode):
            with open(path, "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        h.update(b"\1")
    return h.hexdigest()[:24]
