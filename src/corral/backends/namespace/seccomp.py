"""The seccomp filter every sandbox runs under (built with python3-seccomp, loaded by bwrap)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

# SECURITY: syscalls that reach kernel surfaces a sandbox never needs: modules, kexec, mounts,
# namespaces (a second line behind the missing capabilities), bpf, keyrings, perf, tracing.
# ptrace and process_vm_* are blocked outright (strace/gdb do not work inside); that is the
# accepted price for not exposing ptrace's long history of kernel bugs.
BLOCKED_SYSCALLS = (
    "init_module", "finit_module", "delete_module",
    "kexec_load", "kexec_file_load",
    "mount", "umount2", "pivot_root", "swapon", "swapoff", "reboot",
    "bpf", "keyctl", "add_key", "request_key",
    "ptrace", "process_vm_readv", "process_vm_writev",
    "perf_event_open", "userfaultfd",
    "unshare", "setns",
    "open_by_handle_at", "name_to_handle_at",
    "fsopen", "fsmount", "fsconfig", "move_mount", "open_tree", "mount_setattr",
    "lookup_dcookie", "acct", "quotactl", "iopl", "ioperm", "syslog", "kcmp",
)  # fmt: skip

CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NS_FLAGS = (
    CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET | CLONE_NEWCGROUP
)


def build_filter() -> Any:
    import seccomp  # python3-seccomp (Debian package); imported lazily

    f = seccomp.SyscallFilter(defaction=seccomp.ALLOW)
    eperm = seccomp.ERRNO(errno.EPERM)
    for name in BLOCKED_SYSCALLS:
        try:
            f.add_rule(eperm, name)
        except (RuntimeError, ValueError, OSError):
            pass  # unknown to this libseccomp/arch: nothing to block
    # SECURITY: no new namespaces through clone either (clone3 hides its flags in memory, so it
    # answers ENOSYS and glibc falls back to clone, whose flags we can inspect).
    for flag in (
        CLONE_NEWNS,
        CLONE_NEWUTS,
        CLONE_NEWIPC,
        CLONE_NEWUSER,
        CLONE_NEWPID,
        CLONE_NEWNET,
        CLONE_NEWCGROUP,
    ):
        f.add_rule(eperm, "clone", seccomp.Arg(0, seccomp.MASKED_EQ, flag, flag))
    try:
        f.add_rule(seccomp.ERRNO(errno.ENOSYS), "clone3")
    except (RuntimeError, ValueError, OSError):
        pass
    return f


def filter_bytes() -> bytes:
    """The BPF program (struct sock_filter[]) as bwrap --seccomp reads it."""
    fd = os.memfd_create("corral-seccomp-build", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as fh:
            build_filter().export_bpf(fh)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def filter_fd(program: bytes) -> int:
    """A fresh memfd holding the program, positioned at 0 (bwrap reads it, then closes it)."""
    from .bwrap import memfd_with

    return memfd_with("corral-seccomp", program)


def write_filter(path: Path) -> Path:
    """Export the BPF program to a file (for inspection; the backend uses filter_fd)."""
    path.write_bytes(filter_bytes())
    return path
