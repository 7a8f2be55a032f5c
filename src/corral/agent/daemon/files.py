"""File operations: stat, list_dir, mkdir, remove, rename, read and write, each run with the
requested user's filesystem identity."""

import os
import time

from .users import FsIdentity, Names, f_path, get_user
from .wire import K_DATA, K_END, MAX_SEND, AgentError, f_int, frame, invalid, os_error


# --------------------------------------------------------------------------- EntryInfo
def iso_time(ns):
    secs, rem = divmod(ns, 1_000_000_000)
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(secs)) + f".{rem // 1000:06d}Z"


def entry_info(path, names, st=None):
    import stat

    if st is None:
        st = os.lstat(path)
    mode = st.st_mode
    target = None
    if stat.S_ISLNK(mode):
        kind = "symlink"
        try:
            target = os.readlink(path)
        except OSError:
            target = None
    elif stat.S_ISDIR(mode):
        kind = "dir"
    else:
        kind = "file"
    info = {
        "name": os.path.basename(path) or "/",
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": stat.S_IMODE(mode),
        "permissions": stat.filemode(mode)[1:],
        "owner": names.user(st.st_uid),
        "group": names.group(st.st_gid),
        "modified_time": iso_time(st.st_mtime_ns),
        "symlink_target": target,
    }
    metadata = read_metadata(path)
    if metadata:
        info["metadata"] = metadata
    return info


# --------------------------------------------------------------------------- file metadata
# Key/value metadata of a file lives in its extended attributes user.e2b.<key> (as E2B's envd
# keeps it), so tools inside the sandbox see and can set the same thing.
META_PREFIX = "user.e2b."
MAX_META_ENTRIES = 64
MAX_META_KEY = 200
MAX_META_VALUE = 4096


def read_metadata(path):
    try:
        names = [n for n in os.listxattr(path, follow_symlinks=False) if n.startswith(META_PREFIX)]
        return {
            n[len(META_PREFIX) :]: os.getxattr(path, n, follow_symlinks=False).decode("utf-8", "replace")
            for n in names
        }
    except OSError:  # no xattr support, gone meanwhile, not readable
        return {}


def f_metadata(req):
    value = req.get("metadata")
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_META_ENTRIES:
        raise invalid(f"field metadata must be an object of at most {MAX_META_ENTRIES} strings")
    for k, v in value.items():
        if not isinstance(v, str) or len(v.encode()) > MAX_META_VALUE:
            raise invalid(f"metadata values are strings of at most {MAX_META_VALUE} bytes")
        if not k or len(k) > MAX_META_KEY or not all(c.isalnum() or c in "._-" for c in k):
            raise invalid(f"invalid metadata key {k[:64]!r} (letters, digits, '.', '_', '-')")
    return value


def write_metadata(path, metadata):
    """Replace the file's metadata (run with the user's filesystem identity)."""
    for name in os.listxattr(path):
        if name.startswith(META_PREFIX):
            os.removexattr(path, name)
    for key, value in metadata.items():
        os.setxattr(path, META_PREFIX + key.lower(), value.encode())


# --------------------------------------------------------------------------- file ops
def op_stat(conn, req):
    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        info = entry_info(path, Names())
    conn.send_json(info)


def op_list_dir(conn, req):
    import stat

    pw = get_user(req)
    path = f_path(req, "path", pw)
    depth = f_int(req, "depth", default=1, minimum=1)
    names = Names()
    entries = []

    def walk(d, level):
        with os.scandir(d) as it:
            items = sorted(it, key=lambda e: e.name)
        for e in items:
            p = os.path.join(d, e.name)
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue  # vanished meanwhile
            entries.append(entry_info(p, names, st))
            if level < depth and stat.S_ISDIR(st.st_mode):
                try:
                    walk(p, level + 1)
                except OSError:
                    pass  # an unreadable subdirectory is listed but not entered

    with FsIdentity(pw):
        walk(path, 1)
    conn.send_json({"entries": entries})


def op_mkdir(conn, req):
    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        try:
            os.makedirs(path)
            created = True
        except FileExistsError:
            if not os.path.isdir(path):
                raise AgentError("file_exists", "a file exists at " + path) from None
            created = False
    conn.send_json({"created": created})


def _rm_contents(dfd):
    with os.scandir(dfd) as it:
        items = list(it)
    for e in items:
        if e.is_dir(follow_symlinks=False):
            fd = os.open(e.name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
            try:
                _rm_contents(fd)
            finally:
                os.close(fd)
            os.rmdir(e.name, dir_fd=dfd)
        else:
            os.unlink(e.name, dir_fd=dfd)


def remove_tree(path):
    """Remove a file, a symlink or a directory tree, never following symlinks."""
    import stat

    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode):
        os.unlink(path)
        return
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _rm_contents(fd)
    finally:
        os.close(fd)
    os.rmdir(path)


def op_remove(conn, req):
    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        remove_tree(path)
    conn.send_json({"ok": True})


def op_rename(conn, req):
    pw = get_user(req)
    src = f_path(req, "src", pw)
    dst = f_path(req, "dst", pw)
    with FsIdentity(pw):
        os.rename(src, dst)
        info = entry_info(dst, Names())
    conn.send_json(info)


def op_read(conn, req):
    import stat

    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise AgentError("is_a_directory", "Is a directory: " + path)
        conn.send_json({"ok": True, "size": st.st_size})
        while True:
            try:
                data = os.read(fd, MAX_SEND)
            except OSError as e:  # after the answer started: an error frame ends the stream
                err = os_error(e)
                conn.send_error(err.code, err.message)
                return
            if not data:
                break
            conn.send(frame(K_DATA, data))
        conn.send(frame(K_END))
    finally:
        os.close(fd)


def op_write(conn, req):
    pw = get_user(req)
    path = f_path(req, "path", pw)
    err = None
    with FsIdentity(pw):
        try:
            metadata = f_metadata(req)  # refused after the upload is drained, as any error here
            parent = os.path.dirname(path)
            if parent:
                try:
                    os.makedirs(parent, exist_ok=True)
                except FileExistsError:
                    raise AgentError("not_a_directory", "Not a directory: " + parent) from None
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
        except OSError as e:
            err = os_error(e)
        except AgentError as e:
            err = e
    if err is None:
        try:
            while True:
                fr = conn.read_frame()
                if fr is None:
                    return  # the client went away mid-upload: the file keeps what arrived
                kind, payload = fr
                if kind == K_END:
                    break
                if kind != K_DATA:
                    err = invalid("expected D or E frames in an upload")
                    break
                view = memoryview(payload)
                try:
                    while view:
                        view = view[os.write(fd, view) :]
                except OSError as e:
                    err = os_error(e)
                    break
        finally:
            os.close(fd)
    if err is not None:
        conn.send_error(err.code, err.message)
        conn.drain_upload()
        return
    with FsIdentity(pw):
        if metadata is not None:
            try:
                write_metadata(path, metadata)
            except OSError as e:
                err = os_error(e)
        if err is None:
            info = entry_info(path, Names())
    if err is not None:
        conn.send_error(err.code, err.message)
        return
    conn.send_json(info)


# --------------------------------------------------------------------------- tar download
class _FrameSink:
    """A write-only file object for tarfile's stream mode: every write goes out as D frames."""

    def __init__(self, conn):
        self.conn = conn

    def write(self, data):
        view = memoryview(data)
        for off in range(0, len(view), MAX_SEND):
            self.conn.send(frame(K_DATA, bytes(view[off : off + MAX_SEND])))
        return len(view)

    def flush(self):
        pass


def _tar_walk(root):
    """(full path, name relative to root, lstat) of everything under root, depth-first by name.
    Unreadable subdirectories are stored (empty) but not entered; vanished entries are skipped."""
    import stat

    stack = [(root, "")]
    while stack:
        d, rel = stack.pop()
        try:
            with os.scandir(d) as it:
                items = sorted(it, key=lambda e: e.name)
        except OSError:
            if d == root:
                raise
            continue
        subdirs = []
        for e in items:
            p = os.path.join(d, e.name)
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                subdirs.append((p, rel + e.name + "/"))
            yield p, rel + e.name, st
        stack.extend(reversed(subdirs))  # a directory's entries come after the directory


def op_read_tar(conn, req):
    """A directory as a POSIX (pax) tar stream: J {"ok": true}, then D frames, then E. Member
    names are relative to the directory; symlinks are stored, never followed; files, directories
    and symlinks only (devices, fifos and sockets are left out); unreadable files are skipped."""
    import stat
    import tarfile

    pw = get_user(req)
    path = f_path(req, "path", pw)
    with FsIdentity(pw):
        st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            raise AgentError("not_a_directory", "Not a directory: " + path)
        with os.scandir(path):  # readable? (errors go out before the first byte)
            pass
        conn.send_json({"ok": True})
        try:
            sink = _FrameSink(conn)
            with tarfile.open(fileobj=sink, mode="w|", format=tarfile.PAX_FORMAT, bufsize=MAX_SEND) as tar:
                for full, rel, st in _tar_walk(path):
                    mode = st.st_mode
                    if stat.S_ISREG(mode):
                        try:
                            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
                        except OSError:
                            continue  # unreadable or vanished
                        with os.fdopen(fd, "rb") as f:
                            info = tar.gettarinfo(full, arcname=rel, fileobj=f)
                            if info is not None and info.islnk():  # a hard link: stored as a file
                                info.type, info.linkname, info.size = tarfile.REGTYPE, "", st.st_size
                            if info is None or not info.isreg():
                                continue
                            tar.addfile(info, f)
                    elif stat.S_ISDIR(mode) or stat.S_ISLNK(mode):
                        try:
                            info = tar.gettarinfo(full, arcname=rel)
                        except OSError:
                            continue
                        if info is not None:
                            tar.addfile(info)
        except OSError as e:  # after the answer started: an error frame ends the stream
            err = os_error(e)
            conn.send_error(err.code, err.message)
            return
    conn.send(frame(K_END))
