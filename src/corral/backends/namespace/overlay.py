"""The sandbox's root filesystem: an overlay of the template over a size-limited tmpfs.

<run>/<id>/disk   tmpfs, size = disk quota, holds upper/, work/ and run/ (the agent's dir), so
                  everything a sandbox can write counts against its quota
<run>/<id>/root   overlay lowerdir=<layers...>:<template>, upperdir=disk/upper, workdir=disk/work

A template built from a Dockerfile is a stack of lower dirs (its base root filesystem and one dir
per step, each the upper dir a build step left); overlayfs stacks them natively (whiteouts and
opaque dirs of upper layers hide what is below). A build sandbox passes its own upper dir (on the
templates' disk) so that what its step wrote becomes the next layer.
"""

from __future__ import annotations

import ctypes
import errno
import os
import stat
import time
from collections.abc import Sequence
from pathlib import Path

from .userns import HOST_UID_BASE

MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_REMOUNT = 0x20
MNT_DETACH = 0x2
UMOUNT_NOFOLLOW = 0x8

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]


def mount(source: str, target: Path, fstype: str, flags: int, data: str) -> None:
    if _libc.mount(source.encode(), os.fsencode(target), fstype.encode(), flags, data.encode()) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"mount {fstype} on {target}: {os.strerror(e)}")


def umount(target: Path, lazy: bool = False) -> bool:
    """Unmount; True if something was unmounted, False if nothing was mounted there."""
    flags = UMOUNT_NOFOLLOW | (MNT_DETACH if lazy else 0)
    if _libc.umount2(os.fsencode(target), flags) != 0:
        e = ctypes.get_errno()
        if e in (errno.EINVAL, errno.ENOENT):  # not a mount point / gone
            return False
        raise OSError(e, f"umount {target}: {os.strerror(e)}")
    return True


def umount_retry(target: Path, timeout: float = 2.0) -> None:
    """Unmount every mount stacked on target; fall back to a lazy unmount if it stays busy."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if not umount(target):
                return
        except OSError as e:
            if e.errno != errno.EBUSY:
                raise
            if time.monotonic() > deadline:
                umount(target, lazy=True)
                return
            time.sleep(0.01)


MS_BIND = 0x1000


def pin_file(directory: Path, name: str, target: Path, want_mode: int) -> None:
    """Bind-mount directory/name (never following a symlink) onto target, a root-owned path.

    The sandbox can replace what is in its own dirs at any time; the bind keeps target on the
    inode that was there when pinned.
    """
    dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if stat.S_IFMT(st.st_mode) != want_mode:
            raise OSError(errno.EINVAL, f"{directory}/{name} is not the expected file type")
        fd_target = os.open(
            target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
        os.close(fd_target)
        # SECURITY: the mount source is the fd's exact inode (no path lookup the sandbox could race).
        mount(f"/proc/self/fd/{fd}", target, "", MS_BIND, "")
    finally:
        os.close(fd)


def read_tail(directory: Path, name: str, limit: int = 4096) -> str:
    """The last bytes of a regular file in a sandbox-writable dir, never following a symlink."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        # SECURITY: O_NOFOLLOW|O_NONBLOCK and a regular-file check: a planted symlink or fifo must not
        # make the server read (and report) a host file, or hang.
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dfd)
    except OSError:
        return ""
    finally:
        os.close(dfd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return ""
        os.lseek(fd, max(0, st.st_size - limit), os.SEEK_SET)
        return os.read(fd, limit).decode(errors="replace")
    finally:
        os.close(fd)


def tmpfs_options(size_mb: int) -> str:
    return f"size={int(size_mb)}m,mode=0755,uid={HOST_UID_BASE},gid={HOST_UID_BASE}"


# The mount options must fit in one page: this many lower dirs of ~70 characters do.
MAX_LOWER_DIRS = 48


def overlay_options(lower: Path | Sequence[Path], upper: Path | None, work: Path | None) -> str:
    """Options for lower dirs (topmost first) and, unless read-only, an upper and a work dir."""
    lowers = [lower] if isinstance(lower, Path) else list(lower)
    if not lowers or len(lowers) > MAX_LOWER_DIRS:
        raise ValueError(f"an overlay takes 1 to {MAX_LOWER_DIRS} lower dirs, not {len(lowers)}")
    for p in (*lowers, upper, work):
        # overlayfs splits its options on ',' and lower dirs on ':'; refuse rather than escape.
        if p is not None and any(c in str(p) for c in ",:\\"):
            raise ValueError(f"unsupported character in overlay path {p}")
    opts = "lowerdir=" + ":".join(str(p) for p in lowers)
    if upper is not None and work is not None:
        opts += f",upperdir={upper},workdir={work}"
    if len(opts) >= 4000:  # mount(2) copies one page of options
        raise ValueError(f"overlay options of {len(opts)} bytes: too many or too long lower dir paths")
    return opts


def mount_rootfs(
    template: Path | Sequence[Path], disk: Path, root: Path, disk_mb: int, upper_dir: Path | None = None
) -> Path:
    """Mount the disk tmpfs and the overlay; return the agent run dir (on the tmpfs).

    ``template`` is the lower dir, or the lower dirs topmost first. ``upper_dir``, when given, is
    an empty host dir that takes the writes (its sibling ``work`` is the overlay's work dir).
    """
    disk.mkdir(mode=0o700, exist_ok=True)
    root.mkdir(mode=0o755, exist_ok=True)
    # SECURITY: the tmpfs size is the sandbox's disk quota; nodev/nosuid keep device nodes and
    # setuid files written by the sandbox from meaning anything on the host.
    mount("corral-disk", disk, "tmpfs", MS_NOSUID | MS_NODEV, tmpfs_options(disk_mb))
    for name, mode in (("upper", 0o755), ("work", 0o755), ("run", 0o700)):
        p = disk / name
        p.mkdir(mode=mode)
        os.chmod(p, mode)
        # SECURITY: owned by the namespace's root (host uid 100000), never by host root.
        os.chown(p, HOST_UID_BASE, HOST_UID_BASE)
    upper, work = disk / "upper", disk / "work"
    if upper_dir is not None:
        upper, work = upper_dir, upper_dir.parent / "work"
        for p in (upper, work):
            p.mkdir(mode=0o755, exist_ok=True)
            # SECURITY: the namespace's root owns the root of what it may write, never host root.
            os.chown(p, HOST_UID_BASE, HOST_UID_BASE)
    # SECURITY: the template is only the read-only lower dirs; every write lands in upper/.
    mount("corral-root", root, "overlay", MS_NOSUID | MS_NODEV, overlay_options(template, upper, work))
    return disk / "run"


def resize_disk(disk: Path, disk_mb: int) -> None:
    # SECURITY: changes the disk quota of a running sandbox.
    mount("corral-disk", disk, "tmpfs", MS_REMOUNT | MS_NOSUID | MS_NODEV, f"size={int(disk_mb)}m")


def unmount_rootfs(disk: Path, root: Path) -> None:
    umount_retry(root)
    umount_retry(disk)


def mounts_under(prefix: Path) -> list[Path]:
    """Mount points at or below prefix, most recently mounted first (the order to unmount in)."""
    pre = str(prefix).rstrip("/")
    found: list[Path] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].encode().decode("unicode_escape")
            if mnt == pre or mnt.startswith(pre + "/"):
                found.append(Path(mnt))
    found.reverse()  # mountinfo lists mounts in the order they were made
    return list(dict.fromkeys(found))


def fs_type(path: Path) -> str:
    """The type of the filesystem that holds ``path`` (the longest mount point above it)."""
    target = str(path.resolve())
    best, best_type = "", ""
    with open("/proc/self/mountinfo") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            mnt = left.split()[4].encode().decode("unicode_escape")
            if (target == mnt or target.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, best_type = mnt, right.split()[0]
    return best_type


RUN_DIR_SOURCE = "corral-run"


def ensure_run_tmpfs(run_dir: Path) -> None:
    """Keep the run dir in RAM, as /run is on most hosts: every sandbox start makes dirs, mounts
    and small state files there, and on a disk filesystem each costs a journal write."""
    if fs_type(run_dir) == "tmpfs" or any(run_dir.iterdir()):
        return  # already in RAM, or holding sandboxes (never hide them under a new mount)
    # SECURITY: nosuid/nodev; mode 0711 lets bwrap (uid 100000) traverse to its sandbox's dir only.
    mount(RUN_DIR_SOURCE, run_dir, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0711,size=64m")


def release_run_tmpfs(run_dir: Path) -> None:
    """Undo ensure_run_tmpfs once no sandbox is left in the run dir."""
    if any(run_dir.iterdir()):
        return
    with open("/proc/self/mountinfo") as f:
        ours = any(
            line.split()[4] == str(run_dir) and line.partition(" - ")[2].split()[1] == RUN_DIR_SOURCE
            for line in f
        )
    if ours:
        umount(run_dir)
