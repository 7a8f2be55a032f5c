"""The one user namespace every sandbox of a backend shares.

uid/gid 0..65535 inside map to HOST_UID_BASE..HOST_UID_BASE+65535 on the host. The namespace is
owned by host uid HOST_UID_BASE (its creator), so bwrap, running as that uid, may join it with
``--userns FD`` without ever holding a host privilege.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

HOST_UID_BASE = 100000
ID_RANGE = 65536

# The helper runs as host uid/gid HOST_UID_BASE, unshares a user namespace, says so, and waits
# for its stdin to close. Being a separate program, nothing is forked from a threaded server.
_HELPER = (
    "import ctypes,os,sys\n"
    "libc=ctypes.CDLL(None,use_errno=True)\n"
    "if libc.unshare(0x10000000)!=0:\n"
    "    sys.stdout.write('error '+os.strerror(ctypes.get_errno())+'\\n'); sys.exit(1)\n"
    "sys.stdout.write('ok\\n'); sys.stdout.flush(); sys.stdin.read()\n"
)


class UserNamespaceError(RuntimeError):
    pass


def create_userns_fd() -> int:
    """Create the shared user namespace and return an O_RDONLY|O_CLOEXEC fd of it."""
    # SECURITY: the helper holds no privilege: it runs as the unprivileged host uid that becomes
    # the namespace's owner, with no supplementary groups.
    proc = subprocess.Popen(
        [sys.executable if os.path.exists(sys.executable) else "/usr/bin/python3", "-I", "-S", "-c", _HELPER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        user=HOST_UID_BASE,
        group=HOST_UID_BASE,
        extra_groups=[],
        close_fds=True,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
    )
    try:
        assert proc.stdout is not None and proc.stdin is not None
        line = proc.stdout.readline().decode(errors="replace").strip()
        if line != "ok":
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise UserNamespaceError(f"cannot create the user namespace: {line or err.strip()[-300:]}")
        mapping = f"0 {HOST_UID_BASE} {ID_RANGE}\n"
        # SECURITY: the maps give the namespace exactly the host range 100000..165535; setgroups
        # stays allowed (the sandbox's root may drop groups) since the maps hold no host group.
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{proc.pid}/{name}", "w") as f:
                f.write(mapping)
        fd = os.open(f"/proc/{proc.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
        return fd
    finally:
        try:
            if proc.stdin:
                proc.stdin.close()
        except OSError:
            pass
        proc.wait()
        for s in (proc.stdout, proc.stderr):
            if s:
                s.close()


class SharedUserNamespace:
    """Created lazily, once; the fd is kept open for the life of the process."""

    def __init__(self) -> None:
        self._fd: int | None = None
        self._lock = threading.Lock()

    def fd(self) -> int:
        with self._lock:
            if self._fd is None:
                self._fd = create_userns_fd()
            return self._fd

    def close(self) -> None:
        with self._lock:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None
