"""Safe extraction of the tar streams ``files.download_dir`` receives (shared by both SDKs).

Python before 3.11.4 has no ``tarfile`` extraction filters, so every member is checked here:
no absolute name, no ``..``, nothing written outside the destination (also not through a
symlink extracted earlier), symlinks kept only when they point inside it, no devices, no
set-uid bits, no ownership changes.
"""

from __future__ import annotations

import os
import posixpath
import shutil
import tarfile
from typing import IO

from corral.errors import CorralError

CHUNK = 1 << 20


def _safe_name(name: str) -> str:
    clean = posixpath.normpath(name)
    if (
        not name
        or "\0" in name
        or name.startswith("/")
        or ".." in name.split("/")
        or clean in (".", "")
        or clean.startswith("../")
    ):
        raise CorralError(f"unsafe member in the downloaded archive: {name[:200]!r}")
    return clean


def _inside(root: str, path: str) -> bool:
    return os.path.commonpath([root, path]) == root


def _clear(target: str) -> None:
    """Remove a file or symlink in the way of a new member (a directory stays)."""
    if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
        os.unlink(target)


def extract(fileobj: IO[bytes], dest: str) -> list[str]:
    """Extract the tar in ``fileobj`` under ``dest`` (created); the local paths written, in order.

    Symlinks pointing outside ``dest`` (absolute, or escaping with ``..``) are skipped, as are
    devices and fifos. An unsafe member name raises ``CorralError``.
    """
    os.makedirs(dest, exist_ok=True)
    root = os.path.realpath(dest)
    written: list[str] = []
    done: dict[str, str] = {}  # member name -> local path of the files extracted
    with tarfile.open(fileobj=fileobj, mode="r:") as tar:
        for member in tar:
            name = _safe_name(member.name)
            target = os.path.join(root, *name.split("/"))
            parent = os.path.dirname(target)
            if not _inside(root, os.path.realpath(parent)):
                raise CorralError(f"archive member {name!r} would be written outside {dest}")
            os.makedirs(parent, exist_ok=True)
            mode = member.mode & 0o777
            if member.isdir():
                if os.path.islink(target) or (os.path.lexists(target) and not os.path.isdir(target)):
                    os.unlink(target)
                os.makedirs(target, exist_ok=True)
                os.chmod(target, mode | 0o700)
            elif member.isreg():
                source = tar.extractfile(member)
                if source is None:
                    continue
                _clear(target)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
                    os.fchmod(out.fileno(), mode)
                done[name] = target
            elif member.issym():
                link = member.linkname
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), link))
                if not link or link.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    continue  # would point outside dest
                _clear(target)
                os.symlink(link, target)
            elif member.islnk():
                source_path = done.get(posixpath.normpath(member.linkname))
                if source_path is None:
                    continue
                _clear(target)
                shutil.copyfile(source_path, target, follow_symlinks=False)
            else:
                continue  # devices, fifos
            written.append(target)
    return written
