"""A preloaded library that lets coreutils' ``ls -l`` and ``stat`` work under Debian 12's runsc.

runsc 20221219 answers EINVAL to ``statx``/``newfstatat`` with AT_NO_AUTOMOUNT (newer gVisor
accepts it), and coreutils 9 asks for it on every ``ls -l``. The flag means nothing without
automount points (gVisor has none), so the library clears it and makes the system call itself.
It is compiled once per host (gcc) and bound read-only into each sandbox with an
``/etc/ld.so.preload`` naming it; without gcc sandboxes start without it (and ``ls -l`` fails).
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

log = logging.getLogger("corral.backends.gvisor")

SOURCE = r"""
#define _GNU_SOURCE
#include <sys/syscall.h>
#include <unistd.h>
#define AT_NO_AUTOMOUNT 0x800
int statx(int fd, const char *path, int flags, unsigned int mask, void *buf) {
    return syscall(SYS_statx, fd, path, flags & ~AT_NO_AUTOMOUNT, mask, buf);
}
int fstatat(int fd, const char *path, void *buf, int flags) {
    return syscall(SYS_newfstatat, fd, path, buf, flags & ~AT_NO_AUTOMOUNT);
}
int fstatat64(int fd, const char *path, void *buf, int flags) {
    return syscall(SYS_newfstatat, fd, path, buf, flags & ~AT_NO_AUTOMOUNT);
}
"""


def build(cache_dir: Path) -> Path | None:
    """The shim library in cache_dir (built on first use); None if it cannot be built here."""
    name = f"gvisor-compat-{hashlib.sha256(SOURCE.encode()).hexdigest()[:12]}.so"
    target = cache_dir / name
    if target.is_file():
        return target
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:
        log.warning("no C compiler: gVisor sandboxes start without the statx shim (ls -l fails in them)")
        return None
    cache_dir.mkdir(mode=0o755, parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache_dir) as tmp:
        src, out = Path(tmp) / "shim.c", Path(tmp) / name
        src.write_text(SOURCE)
        r = subprocess.run(
            [cc, "-shared", "-fPIC", "-O2", "-o", str(out), str(src)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        if r.returncode != 0:
            log.warning("cannot build the gVisor statx shim: %s", r.stderr.strip()[-300:])
            return None
        out.chmod(0o644)
        os.replace(out, target)
    return target


def preload_file(run_dir: Path, shim_inside: str) -> Path:
    """An ld.so.preload naming the shim (shared by the backend's sandboxes, bound read-only)."""
    path = run_dir / "ld.so.preload"
    if not path.is_file() or path.read_text() != shim_inside + "\n":
        tmp = path.with_suffix(".tmp")
        tmp.write_text(shim_inside + "\n")
        tmp.chmod(0o644)
        os.replace(tmp, path)
    return path
