"""Directory watching: the ``watch`` op, built on inotify (through ctypes; standard library only).

The answer is ``J {"type":"start"}`` once every watch is in place, then one ``J`` event per
change, ``{"type": "create"|"write"|"remove"|"rename"|"chmod", "path": str, "time": str}``, until
the client closes the connection; then the inotify instance is closed (no fd is kept).
"""

import os
import sys
import time

from .files import iso_time
from .users import FsIdentity, _libc, f_path, get_user
from .wire import AgentError, invalid, log

IN_MODIFY = 0x00000002
IN_ATTRIB = 0x00000004
IN_CLOSE_WRITE = 0x00000008
IN_MOVED_FROM = 0x00000040
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_MOVE_SELF = 0x00000800
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
IN_DONT_FOLLOW = 0x02000000
IN_EXCL_UNLINK = 0x04000000
IN_ISDIR = 0x40000000
IN_NONBLOCK = os.O_NONBLOCK
IN_CLOEXEC = os.O_CLOEXEC

MASK = (
    IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
    | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_EXCL_UNLINK
)
WRITE_BURST = 0.5  # modifications of one file within this many seconds are one write event
HEADER = 16  # struct inotify_event: int wd; uint32 mask, cookie, len; then the name


def _oserror(path):
    import ctypes

    err = ctypes.get_errno()
    return OSError(err, os.strerror(err), path)


class Inotify:
    """One inotify instance: watch descriptors <-> directory paths."""

    def __init__(self):
        libc = _libc()
        fd = libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            raise _oserror(None)
        self.fd = fd
        self.paths = {}  # wd -> path
        self.wds = {}  # path -> wd

    def add(self, path, follow=True):
        import ctypes

        mask = MASK if follow else MASK | IN_DONT_FOLLOW
        wd = _libc().inotify_add_watch(self.fd, os.fsencode(path), ctypes.c_uint32(mask))
        if wd < 0:
            raise _oserror(path)
        old = self.paths.get(wd)
        if old is not None and old != path:
            self.wds.pop(old, None)
        self.paths[wd] = path
        self.wds[path] = wd
        return wd

    def add_tree(self, top, found=None):
        """Watch the directories under ``top`` (not ``top`` itself); unreadable ones are skipped.

        ``found`` (a list) collects the paths of every entry seen (to report what a new
        directory already held when its watch was placed)."""
        stack = [top]
        while stack:
            d = stack.pop()
            try:
                with os.scandir(d) as it:
                    entries = list(it)
            except OSError:
                continue
            for e in entries:
                if found is not None:
                    found.append(e.path)
                try:
                    is_dir = e.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if is_dir:
                    try:
                        self.add(e.path, follow=False)
                    except OSError:
                        continue
                    stack.append(e.path)

    def remove_tree(self, top):
        """Stop watching ``top`` and every directory under it."""
        prefix = top + "/"
        for path in [p for p in self.wds if p == top or p.startswith(prefix)]:
            wd = self.wds.pop(path)
            self.paths.pop(wd, None)
            _libc().inotify_rm_watch(self.fd, wd)  # EINVAL if the kernel dropped it already: fine

    def forget(self, wd):
        path = self.paths.pop(wd, None)
        if path is not None and self.wds.get(path) == wd:
            del self.wds[path]

    def read(self):
        """The pending events as (wd, mask, name) tuples; [] when there are none."""
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return []
        out = []
        off = 0
        order = sys.byteorder
        while off + HEADER <= len(data):
            wd = int.from_bytes(data[off : off + 4], order, signed=True)
            mask = int.from_bytes(data[off + 4 : off + 8], order)
            n = int.from_bytes(data[off + 12 : off + 16], order)
            name = data[off + HEADER : off + HEADER + n].rstrip(b"\0")
            out.append((wd, mask, os.fsdecode(name) if name else ""))
            off += HEADER + n
        return out

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Watch:
    """Turns inotify events into watch events for one ``watch`` request."""

    def __init__(self, ino, root, recursive, send):
        self.ino = ino
        self.root = root
        self.recursive = recursive
        self.send = send
        self.written = {}  # path -> monotonic time of its last write event (until it is closed)

    def emit(self, kind, path):
        self.send({"type": kind, "path": path, "time": iso_time(time.time_ns())})

    def handle(self, wd, mask, name):
        if mask & IN_Q_OVERFLOW:
            log("watch: the inotify queue overflowed; events were lost")
            return
        if mask & IN_IGNORED:
            self.ino.forget(wd)
            return
        base = self.ino.paths.get(wd)
        if base is None:
            return  # a watch removed meanwhile
        if not name:
            # An event on a watched directory itself: its parent's watch reports it, except
            # for the root (whose parent is not watched).
            if wd == self.ino.wds.get(self.root):
                if mask & IN_ATTRIB:
                    self.emit("chmod", base)
                elif mask & (IN_DELETE_SELF | IN_MOVE_SELF):
                    self.emit("remove" if mask & IN_DELETE_SELF else "rename", base)
            return
        path = base + "/" + name if base != "/" else "/" + name
        is_dir = bool(mask & IN_ISDIR)
        if mask & (IN_CREATE | IN_MOVED_TO):
            found = []
            if is_dir and self.recursive:
                # Watch it before reporting it: a client that saw the event can rely on the watch.
                try:
                    self.ino.add(path, follow=False)
                    self.ino.add_tree(path, found)
                except OSError:
                    pass
            self.emit("create", path)
            for p in found:  # created inside before its watch was placed
                self.emit("create", p)
        if mask & IN_MOVED_FROM:
            if is_dir and self.recursive:
                self.ino.remove_tree(path)
            self.written.pop(path, None)
            self.emit("rename", path)
        if mask & IN_DELETE:
            self.written.pop(path, None)
            self.emit("remove", path)
        if mask & IN_MODIFY:
            now = time.monotonic()
            last = self.written.get(path)
            if last is None or now - last > WRITE_BURST:
                self.written[path] = now
                self.emit("write", path)
        if mask & IN_CLOSE_WRITE and self.written.pop(path, None) is None:
            self.emit("write", path)  # opened for writing and closed: report it once
        if mask & IN_ATTRIB:
            self.emit("chmod", path)


def op_watch(conn, req):
    import select
    import stat

    pw = get_user(req)
    path = f_path(req, "path", pw)
    recursive = req.get("recursive", False)
    if not isinstance(recursive, bool):
        raise invalid("field recursive must be a boolean")
    # The whole watch runs with the user's filesystem identity (this thread serves only it):
    # inotify_add_watch needs read permission on each directory, checked as that user.
    with FsIdentity(pw):
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise AgentError("not_a_directory", "Not a directory: " + path)
        ino = Inotify()
        try:
            ino.add(path)
            if recursive:
                ino.add_tree(path)
            w = Watch(ino, path, recursive, conn.send_json)
            conn.send_json({"type": "start"})
            sock_fd = conn.sock.fileno()
            poller = select.poll()
            poller.register(ino.fd, select.POLLIN)
            poller.register(sock_fd, select.POLLIN | select.POLLHUP | select.POLLERR)
            while True:
                ready = poller.poll()
                for fd, ev in ready:
                    if fd == sock_fd:
                        # The client sends nothing after its request: readable means gone.
                        try:
                            data = conn.sock.recv(4096)
                        except OSError:
                            data = b""
                        if not data or ev & (select.POLLHUP | select.POLLERR):
                            return
                for wd, mask, name in ino.read():
                    w.handle(wd, mask, name)
        finally:
            ino.close()
